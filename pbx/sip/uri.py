"""SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966), parsed from text.

A URI keeps the text it was parsed from, so that a message we relay shows the
other side exactly what it was given; its fields are for the code that routes
on them. Equality follows RFC 3261 §19.1.4 (case rules, escapes, which
parameters count), which is *not* the same as comparing strings, and is not
transitive across parameters present on one side only, so there is no
normalised key: `__eq__` does the comparison and `__hash__` covers only the
parts that must always match.

Grammar (RFC 3261 §25.1), the parts we split on::

    SIP-URI   = "sip:" [ userinfo ] hostport uri-parameters [ headers ]
    userinfo  = ( user / telephone-subscriber ) [ ":" password ] "@"
    hostport  = host [ ":" port ]
    host      = hostname / IPv4address / IPv6reference
    uri-parameters = *( ";" uri-parameter )
    headers   = "?" header *( "&" header )
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Literal

from pbx.sip.errors import SipParseError

Params = tuple[tuple[str, str | None], ...]
"""Parameters in their received order: (name, value or None for a flag)."""

# hostname = *( domainlabel "." ) toplabel [ "." ]; IPv4address = 1*3DIGIT "." ...
# Lenient on label shape (underscores appear in the wild), strict on the alphabet.
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?")
# IPv6reference = "[" IPv6address "]": hex digits, colons, and a dotted IPv4 tail.
_IPV6_REFERENCE = re.compile(r"\[[0-9A-Fa-f:.]+\]")
# scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )   (RFC 3986 §3.1)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
# The characters a user part may hold, escapes included (RFC 3261 §25.1
# user = 1*( unreserved / escaped / user-unreserved )).
_USER = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+")
_PASSWORD = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,%]*")
# paramchar = param-unreserved / unreserved / escaped
_PARAM_TOKEN = re.compile(r"[A-Za-z0-9\-_.!~*'()\[\]/:&+$%]+")

# The SIP URI most requests carry: user@host[:port][;token params], nothing
# escaped, no password or headers. Validated in one match; the rest takes
# the general path.
_SIMPLE_SIP_URI = re.compile(
    r"(?:([A-Za-z0-9\-_.!~*'()&=+$,]+)@)?([A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?)"
    r"(?::([0-9]{1,5}))?((?:;[A-Za-z0-9\-_.!~*'()\[\]/:&+$]+(?:=[A-Za-z0-9\-_.!~*'()\[\]/:&+$]+)?)*)"
)

# RFC 3261 §19.1.4: these URI parameters must match when either side has them.
_PARAMS_THAT_MUST_MATCH = ("user", "ttl", "method", "maddr", "transport")


class _Unset(enum.Enum):
    """Sentinel for "leave this part as it is" where None is a meaningful value."""

    KEEP = enum.auto()


def get_param(params: Params, name: str) -> str | None:
    """The value of parameter `name` (case-insensitive), "" for a flag, None if absent.

    Names are nearly always written as asked for; a name of another length
    cannot match in any case (parameter names are ASCII tokens), so only one
    of the same length is lowered to compare.
    """
    size = len(name)
    for key, value in params:
        if key == name or (len(key) == size and key.lower() == name.lower()):
            return "" if value is None else value
    return None


def has_param(params: Params, name: str) -> bool:
    size = len(name)
    return any(key == name or (len(key) == size and key.lower() == name.lower())
               for key, _ in params)


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def _unescaped_lower(text: str) -> str:
    return _resolve_escapes(text).lower() if "%" in text else text.lower()


@dataclass(frozen=True, slots=True, eq=False)
class SipUri:
    """A ``sip:`` or ``sips:`` URI. ``host`` keeps IPv6 brackets, as on the wire."""

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()
    text: str = field(default="", repr=False)

    @property
    def transport(self) -> str | None:
        """The ``transport`` parameter, lowercased, or None."""
        value = get_param(self.params, "transport")
        return value.lower() if value else None

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    @property
    def host_port(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def replace(
        self,
        *,
        user: str | Literal[_Unset.KEEP] | None = _Unset.KEEP,
        host: str | None = None,
        port: int | Literal[_Unset.KEEP] | None = _Unset.KEEP,
        params: Params | None = None,
        headers: tuple[tuple[str, str], ...] | None = None,
    ) -> SipUri:
        """A copy with some parts changed (its text is rebuilt)."""
        return build_sip_uri(
            scheme=self.scheme,
            user=self.user if user is _Unset.KEEP else user,
            password=self.password,
            host=host if host is not None else self.host,
            port=self.port if port is _Unset.KEEP else port,
            params=params if params is not None else self.params,
            headers=headers if headers is not None else self.headers,
        )

    def without_params(self) -> SipUri:
        """The URI with parameters and headers removed: an address-of-record key."""
        return self.replace(params=(), headers=())

    def __str__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        """RFC 3261 §19.1.4 URI comparison."""
        if not isinstance(other, SipUri):
            return NotImplemented
        if self.scheme != other.scheme:
            return False
        # userinfo is case-sensitive, but escapes are compared unescaped.
        if _unescape(self.user) != _unescape(other.user):
            return False
        if _unescape(self.password) != _unescape(other.password):
            return False
        if _unescaped_lower(self.host) != _unescaped_lower(other.host) or self.port != other.port:
            return False
        mine = {k.lower(): _unescaped_lower(v or "") for k, v in self.params}
        theirs = {k.lower(): _unescaped_lower(v or "") for k, v in other.params}
        for name in _PARAMS_THAT_MUST_MATCH:
            if mine.get(name) != theirs.get(name):
                return False
        for name in mine.keys() & theirs.keys():
            if mine[name] != theirs[name]:
                return False
        my_headers = {k.lower(): _resolve_escapes(v) for k, v in self.headers}
        their_headers = {k.lower(): _resolve_escapes(v) for k, v in other.headers}
        return my_headers == their_headers

    def __hash__(self) -> int:
        return hash((self.scheme, _unescape(self.user), _unescaped_lower(self.host), self.port))


def _unescape(text: str | None) -> str | None:
    if text is None or "%" not in text:
        return text
    return _resolve_escapes(text)


# RFC 2396 reserved = ";" / "/" / "?" / ":" / "@" / "&" / "=" / "+" / "$" / ","
# ("%" itself stays escaped so that one pass can never make a new escape).
_RESERVED = frozenset(";/?:@&=+$,%")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def _resolve_escape(match: re.Match[str]) -> str:
    char = chr(int(match[1], 16))
    return f"%{match[1].upper()}" if char in _RESERVED else char


def _resolve_escapes(text: str) -> str:
    """Escapes as RFC 3261 §19.1.4 compares them.

    "Characters other than those in the reserved set are equivalent to their
    escaped encoding": those are decoded (byte by byte, so two different
    invalid UTF-8 escapes never become the same replacement character), while
    an escaped reserved character stays escaped, hex in upper case, and so
    differs from the bare character (``%3B`` is not ``;``).
    """
    return _ESCAPE.sub(_resolve_escape, text)


@dataclass(frozen=True, slots=True, eq=False)
class TelUri:
    """A ``tel:`` URI (RFC 3966): a global (+...) or local number with parameters."""

    number: str
    params: Params = ()
    text: str = field(default="", repr=False)

    scheme = "tel"

    @property
    def is_global(self) -> bool:
        return self.number.startswith("+")

    @property
    def digits(self) -> str:
        """The number without visual separators (RFC 3966 §5.1.1), as compared."""
        return self.number.translate(_VISUAL_SEPARATORS).lower()

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    def __str__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        """RFC 3966 §4: numbers equal without separators; same parameters, any order."""
        if not isinstance(other, TelUri):
            return NotImplemented
        if self.digits != other.digits:
            return False
        mine = {k.lower(): (v or "").lower() for k, v in self.params}
        theirs = {k.lower(): (v or "").lower() for k, v in other.params}
        return mine == theirs

    def __hash__(self) -> int:
        return hash(("tel", self.digits))


_VISUAL_SEPARATORS = str.maketrans("", "", "-.()")
_TEL_NUMBER = re.compile(r"\+?[0-9A-Fa-f*#().\-pPwW]+")


@dataclass(frozen=True, slots=True)
class AbsoluteUri:
    """Any other URI scheme (``mailto:``, ``urn:``, ``http:``): allowed in From/To/Contact."""

    scheme: str
    rest: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.rest}"


Uri = SipUri | TelUri | AbsoluteUri


def parse_uri(text: str) -> Uri:
    """Parse any URI; sip/sips/tel get their full structure."""
    scheme, colon, rest = text.partition(":")
    if not colon or not scheme:
        raise SipParseError(f"not a URI: {text[:80]!r}")
    lowered = scheme.lower()
    if lowered == "sip" or lowered == "sips":
        return _parse_sip_uri(lowered, rest, text)
    if lowered == "tel":
        return _parse_tel_uri(rest, text)
    if not _SCHEME.fullmatch(scheme) or not rest or " " in rest:
        raise SipParseError(f"not a URI: {text[:80]!r}")
    return AbsoluteUri(scheme=lowered, rest=rest)


def user_of(text: str) -> str | None:
    """The user part of a sip:/sips: URI ("1002"), or None; never raises."""
    try:
        uri = parse_uri(text)
    except SipParseError:
        return None
    return uri.user if isinstance(uri, SipUri) else None


def parse_request_uri(text: str) -> SipUri | TelUri:
    """Parse a Request-URI: another scheme is 416 Unsupported URI Scheme (RFC 3261 §8.2.2.1)."""
    uri = parse_uri(text)
    if isinstance(uri, AbsoluteUri):
        raise SipParseError(f"unsupported URI scheme {uri.scheme!r}", 416)
    return uri


def parse_sip_uri(text: str) -> SipUri:
    """Parse text that must be a sip: or sips: URI."""
    uri = parse_uri(text)
    if not isinstance(uri, SipUri):
        raise SipParseError(f"not a SIP URI: {text[:80]!r}", 416)
    return uri


def _split_params(text: str, what: str) -> Params:
    if not text:
        return ()
    params: list[tuple[str, str | None]] = []
    for item in text.split(";"):
        name, eq, value = item.partition("=")
        if not name or not _PARAM_TOKEN.fullmatch(name):
            raise SipParseError(f"bad parameter {item!r} in {what}")
        if eq:
            if not _PARAM_TOKEN.fullmatch(value):
                raise SipParseError(f"bad value of parameter {name!r} in {what}")
            params.append((name, value))
        else:
            params.append((name, None))
    return tuple(params)


def is_simple_sip_uri(text: str) -> bool:
    """True for a valid ``sip:``/``sips:`` URI of the common shape, checked without parsing."""
    if text[:4].lower() == "sip:":
        rest = text[4:]
    elif text[:5].lower() == "sips:":
        rest = text[5:]
    else:
        return False
    match = _SIMPLE_SIP_URI.fullmatch(rest)
    return match is not None and (match[3] is None or int(match[3]) <= 65535)


def _parse_sip_uri(scheme: str, rest: str, text: str) -> SipUri:
    match = _SIMPLE_SIP_URI.fullmatch(rest)
    if match is not None and (match[3] is None or int(match[3]) <= 65535):
        user, host, port, param_text = match.groups()
        params: Params = ()
        if param_text:
            params = tuple(
                (name, value if eq else None)
                for name, eq, value in (p.partition("=") for p in param_text[1:].split(";"))
            )
        return SipUri(scheme=scheme, user=user, host=host,
                      port=None if port is None else int(port), params=params, text=text)
    return _parse_sip_uri_general(scheme, rest, text)


def _parse_sip_uri_general(scheme: str, rest: str, text: str) -> SipUri:
    # "@" may appear unescaped only after the userinfo, while "?" is legal in
    # the user part (user-unreserved): split at the "@" first, then the
    # headers start at the first "?" after it.
    userinfo, at, host_part = rest.partition("@")
    if not at:
        userinfo, host_part = "", rest
    host_part, question, header_text = host_part.partition("?")
    user: str | None = None
    password: str | None = None
    if at:
        user, colon, pw = userinfo.partition(":")
        if not user or not _USER.fullmatch(user):
            raise SipParseError(f"bad user part in {text[:80]!r}")
        if colon:
            if not _PASSWORD.fullmatch(pw):
                raise SipParseError(f"bad password in {text[:80]!r}")
            password = pw
    if host_part.startswith("["):
        end = host_part.find("]")
        if end < 0:
            raise SipParseError(f"unterminated IPv6 reference in {text[:80]!r}")
        host = host_part[: end + 1]
        after = host_part[end + 1 :]
        port_text, semi, param_text = after.partition(";")
        if port_text and not port_text.startswith(":"):
            raise SipParseError(f"bad host in {text[:80]!r}")
        port_text = port_text[1:]
        if not _IPV6_REFERENCE.fullmatch(host):
            raise SipParseError(f"bad IPv6 reference in {text[:80]!r}")
    else:
        host_port, semi, param_text = host_part.partition(";")
        host, colon, port_text = host_port.partition(":")
        if not _HOSTNAME.fullmatch(host):
            raise SipParseError(f"bad host in {text[:80]!r}")
        if colon and not port_text:
            raise SipParseError(f"empty port in {text[:80]!r}")
    port: int | None = None
    if port_text:
        if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5 or int(
                port_text) > 65535:
            raise SipParseError(f"bad port in {text[:80]!r}")
        port = int(port_text)
    params = _split_params(param_text, text[:80]) if semi else ()
    headers: tuple[tuple[str, str], ...] = ()
    if question:
        pairs = []
        for item in header_text.split("&"):
            name, eq, value = item.partition("=")
            if not name or not eq:
                raise SipParseError(f"bad URI header {item!r} in {text[:80]!r}")
            pairs.append((name, value))
        headers = tuple(pairs)
    return SipUri(
        scheme=scheme,
        user=user,
        password=password,
        host=host,
        port=port,
        params=params,
        headers=headers,
        text=text,
    )


def _parse_tel_uri(rest: str, text: str) -> TelUri:
    number, semi, param_text = rest.partition(";")
    if not _TEL_NUMBER.fullmatch(number):
        raise SipParseError(f"bad telephone number in {text[:80]!r}")
    params = _split_params(param_text, text[:80]) if semi else ()
    if not number.startswith("+") and get_param(params, "phone-context") is None:
        # RFC 3966 §5.1.5: a local number must say where it is local to.
        raise SipParseError(f"local tel number without phone-context in {text[:80]!r}")
    return TelUri(number=number, params=params, text=text)


def build_sip_uri(
    *,
    scheme: str = "sip",
    user: str | None = None,
    password: str | None = None,
    host: str,
    port: int | None = None,
    params: Params = (),
    headers: tuple[tuple[str, str], ...] = (),
) -> SipUri:
    """A SIP URI from parts (values already escaped where they need to be)."""
    parts = [scheme, ":"]
    if user is not None:
        parts.append(user)
        if password is not None:
            parts.append(":" + password)
        parts.append("@")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    parts.append(host)
    if port is not None:
        parts.append(f":{port}")
    parts.append(format_params(params))
    if headers:
        parts.append("?" + "&".join(f"{k}={v}" for k, v in headers))
    return SipUri(
        scheme=scheme,
        user=user,
        password=password,
        host=host,
        port=port,
        params=params,
        headers=headers,
        text="".join(parts),
    )
