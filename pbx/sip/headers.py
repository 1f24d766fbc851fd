"""Header names and typed header values (RFC 3261 §7.3, §20, §25.1).

Via, NameAddr and CSeq are built for every message received, so they are
plain slotted dataclasses rather than frozen ones (a frozen dataclass costs
twice as much to construct). Treat them as values all the same: nothing
assigns to their fields, and the ``with_*`` methods return changed copies.

A message stores every header as the text it arrived with; the classes here
are *views* parsed from that text when somebody asks [sippy SipHeader], so a
header nobody reads costs nothing and goes back on the wire unchanged.

Names are case-insensitive and have compact forms (RFC 3261 §7.3.3 plus the
extension RFCs that assigned the rest); `header_key` maps any spelling to one
lowercase key, and `canonical_name` gives the spelling we write ourselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from pbx.sip.errors import SipParseError
from pbx.sip.uri import (
    Params,
    SipUri,
    TelUri,
    Uri,
    format_params,
    get_param,
    has_param,
    parse_uri,
)

# Compact forms: RFC 3261 §7.3.3 (i m e l c f s k t v), RFC 3265 (o u),
# RFC 3515 (r), RFC 3892 (b), RFC 4028 (x), RFC 4474 (y), RFC 3841 (a).
COMPACT_FORMS: dict[str, str] = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "u": "allow-events",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
    "y": "identity",
    "a": "accept-contact",
}

_CANONICAL = [
    "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Max-Forwards", "Route",
    "Record-Route", "Content-Length", "Content-Type", "Content-Encoding",
    "Content-Disposition", "Content-Language", "Expires", "Min-Expires", "Require",
    "Proxy-Require", "Supported", "Unsupported", "Allow", "Allow-Events", "Accept",
    "Accept-Encoding", "Accept-Language", "Event", "Subscription-State",
    "WWW-Authenticate", "Authorization", "Proxy-Authenticate", "Proxy-Authorization",
    "Authentication-Info", "User-Agent", "Server", "Subject", "Reply-To", "Refer-To",
    "Referred-By", "Session-Expires", "Min-SE", "RSeq", "RAck", "Timestamp", "Date",
    "Warning", "Retry-After", "Organization", "Priority", "In-Reply-To", "MIME-Version",
    "Alert-Info", "Call-Info", "Error-Info", "Identity", "Accept-Contact", "Path",
    "Service-Route", "P-Asserted-Identity", "Privacy", "Reason", "SIP-ETag", "SIP-If-Match",
]
_CANONICAL_NAMES: dict[str, str] = {name.lower(): name for name in _CANONICAL}
_CANONICAL_SPELLINGS = frozenset(_CANONICAL)

# Headers whose grammar is a comma-separated list (RFC 3261 §7.3.1): several
# values may share one line. Authorization-type headers are not in this set:
# their commas separate parameters of a single value.
LIST_HEADERS = frozenset({
    "via", "contact", "route", "record-route", "allow", "supported", "require",
    "proxy-require", "unsupported", "accept", "accept-encoding", "accept-language",
    "allow-events", "content-encoding", "alert-info", "call-info", "error-info",
    "in-reply-to", "warning", "path", "service-route", "p-asserted-identity",
    "content-language", "reason",
})

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_SENT_PROTOCOL = re.compile(
    r"([A-Za-z0-9\-.!%*_+`'~]+)\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)\s+"
)
_HOST = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?|\[[0-9A-Fa-f:.]+\]")
_TOKEN_CHARS = r"[A-Za-z0-9\-.!%*_+`'~]+"
# The Via almost every phone sends: canonical protocol, no blanks, token-only
# parameters (IPv6 `received` included). One C-level match validates it all;
# anything else takes the general path below.
_SIMPLE_VIA = re.compile(
    r"SIP/2\.0/([A-Za-z]+) ([A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?"
    r"((?:;" + _TOKEN_CHARS + r"(?:=(?:" + _TOKEN_CHARS + r"|\[[0-9A-Fa-f:.]+\]))?)*)"
)
# name-addr with an optional display name and token-only parameters:
#   [ "quoted" / token... ] LAQUOT URI RAQUOT *( ";" param )
_SIMPLE_NAME_ADDR = re.compile(
    r'(?:"((?:[^"\\]|\\.)*)" ?|([A-Za-z0-9\-.!%*_+`\'~ ]*?) ?)?<([^<>" ]+)>'
    r"((?:;" + _TOKEN_CHARS + r"(?:=" + _TOKEN_CHARS + r")?)*)"
)
# CSeq = 1*DIGIT LWS Method (RFC 3261 §20.16), in its usual one-space form.
_SIMPLE_CSEQ = re.compile(r"([0-9]{1,10}) (" + _TOKEN_CHARS + r")")
_MAX_CSEQ = 2**31 - 1  # RFC 3261 §8.1.1.5: "MUST be less than 2**31"

_HEAD_CACHE_SIZE = 4096
"""Bound of `_VIA_HEADS` and `_NAME_ADDR_HEADS` (cleared when full): a few per phone."""


_KEY_OF_KNOWN: dict[str, str] = {
    **{name: name.lower() for name in _CANONICAL},
    **{name.lower(): name.lower() for name in _CANONICAL},
    **COMPACT_FORMS,
    **{compact.upper(): key for compact, key in COMPACT_FORMS.items()},
}
"""Lookup keys of the names the PBX writes and phones send, spelt as they usually are.

Every header added to a message built here goes through `header_key` and
`canonical_name`; found in this table, a name costs one lookup instead of a
lowered copy and two lookups.
"""


def header_key(name: str) -> str:
    """The lookup key of a header name: lowercase, compact forms expanded."""
    known = _KEY_OF_KNOWN.get(name)
    if known is not None:
        return known
    lowered = name.lower()
    return COMPACT_FORMS.get(lowered, lowered)


def canonical_name(name: str) -> str:
    """How we spell a header we write: ``call-id`` → ``Call-ID``, unknown ones title-cased."""
    if name in _CANONICAL_SPELLINGS:
        return name
    key = header_key(name)
    known = _CANONICAL_NAMES.get(key)
    if known is not None:
        return known
    return "-".join(part.capitalize() for part in key.split("-"))


def split_list(value: str) -> list[str]:
    """Split a list header on commas outside quotes and angle brackets; drop empties."""
    if "," not in value:
        # One value (nearly every Contact, Route, Via line): nothing to split.
        stripped = value.strip()
        return [stripped] if stripped else []
    if '"' not in value and "<" not in value:
        return [item.strip() for item in value.split(",") if item.strip()]
    items: list[str] = []
    start = 0
    in_quotes = False
    in_angle = False
    escaped = False
    for index, char in enumerate(value):
        if escaped:
            escaped = False
        elif in_quotes:
            if char == "\\":
                escaped = True
            elif char == '"':
                in_quotes = False
        elif char == '"':
            in_quotes = True
        elif char == "<":
            in_angle = True
        elif char == ">":
            in_angle = False
        elif char == "," and not in_angle:
            item = value[start:index].strip()
            if item:
                items.append(item)
            start = index + 1
    if in_quotes:
        raise SipParseError(f"unterminated quoted string in {value[:80]!r}")
    item = value[start:].strip()
    if item:
        items.append(item)
    return items


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    if '"' not in text:
        return text.split(separator)
    parts: list[str] = []
    start = 0
    in_quotes = False
    escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and in_quotes:
            escaped = True
        elif char == '"':
            in_quotes = not in_quotes
        elif char == separator and not in_quotes:
            parts.append(text[start:index])
            start = index + 1
    if in_quotes:
        raise SipParseError(f"unterminated quoted string in {text[:80]!r}")
    parts.append(text[start:])
    return parts


def _simple_params(text: str) -> Params:
    """Parameters already validated by a fast-path regex: split without checks."""
    params: list[tuple[str, str | None]] = []
    for item in text[1:].split(";"):
        name, eq, value = item.partition("=")
        params.append((name, value if eq else None))
    return tuple(params)


_TOKEN_TABLE: Final = "".join(
    "t" if chr(code) in "-.!%*_+`'~" or chr(code).isalnum() else " " for code in range(128))
"""``_TOKEN_TABLE[ord(c)] == "t"``: is the ASCII character `c` a token character (see TOKEN)."""
_HEX_TABLE: Final = "".join(
    "t" if chr(code) in "0123456789ABCDEFabcdef:." else " " for code in range(128))
"""The same for the inside of an IPv6 reference: ``[0-9A-Fa-f:.]``."""


def _scan(text: str, pos: int, end: int, table: str) -> int:
    """Where the run of characters `table` marks (``"t"``, ASCII only) from `pos` ends."""
    while pos < end:
        code = ord(text[pos])
        if code >= 128 or table[code] != "t":
            break
        pos += 1
    return pos


def _token_params(text: str, start: int, brackets: bool) -> Params | None:
    """``text[start:]`` as ``*(";" token ["=" token])``, split; None if it is anything else.

    ``brackets``: a value may also be an IPv6 reference (``received=[::1]``).
    Exactly the parameters `_SIMPLE_VIA` (with brackets) and `_SIMPLE_NAME_ADDR`
    accept, and split as `_simple_params` splits them, in one pass over the
    characters: compiled, that costs a Via's ``;branch=...;rport`` a fraction
    of what the regular expression and the split after it took
    (docs/benchmarks.md, "Why the hot path is written as it is").
    """
    params: list[tuple[str, str | None]] = []
    end = len(text)
    pos = start
    while pos < end:
        if text[pos] != ";":
            return None
        pos += 1
        name_start = pos
        pos = _scan(text, pos, end, _TOKEN_TABLE)
        if pos == name_start:
            return None
        name = text[name_start:pos]
        if pos == end or text[pos] == ";":
            params.append((name, None))
            continue
        if text[pos] != "=":
            return None
        pos += 1
        value_start = pos
        if brackets and pos < end and text[pos] == "[":
            pos = _scan(text, pos + 1, end, _HEX_TABLE)
            if pos == value_start + 1 or pos == end or text[pos] != "]":
                return None
            pos += 1
        else:
            pos = _scan(text, pos, end, _TOKEN_TABLE)
            if pos == value_start:
                return None
        params.append((name, text[value_start:pos]))
    return tuple(params)


def parse_params(text: str, what: str) -> Params:
    """Header parameters after the first ';': ``;name[=token|quoted-string]`` with LWS."""
    params: list[tuple[str, str | None]] = []
    for item in _split_outside_quotes(text, ";"):
        name, eq, value = item.partition("=")
        name = name.strip()
        if not name or not TOKEN.fullmatch(name):
            raise SipParseError(f"bad parameter {item.strip()[:40]!r} in {what}")
        if eq:
            value = value.strip()
            if not value or (value[0] != '"' and " " in value):
                raise SipParseError(f"bad value of parameter {name!r} in {what}")
            params.append((name, value))
        else:
            params.append((name, None))
    return tuple(params)


def unquote_string(text: str) -> str:
    """The content of a quoted-string, backslash escapes resolved (RFC 3261 §25.1)."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    inner = text[1:-1]
    if "\\" not in inner:
        return inner
    out: list[str] = []
    chars = iter(inner)
    for char in chars:
        out.append(next(chars, "") if char == "\\" else char)
    return "".join(out)


def quote_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parse_port(text: str, what: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or int(text) > 65535:
        raise SipParseError(f"bad port {text[:10]!r} in {what}")
    return int(text)


def _split_host_port(text: str, what: str) -> tuple[str, int | None]:
    """``sent-by = host [ COLON port ]``, where COLON = SWS ":" SWS (RFC 3261 §25.1)."""
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[: end + 1], text[end + 1 :].lstrip(" \t")
        if end < 0 or (rest and not rest.startswith(":")):
            raise SipParseError(f"bad IPv6 reference in {what}")
        port_text = rest[1:]
        has_port = bool(rest)
    else:
        host, colon, port_text = text.partition(":")
        host = host.rstrip(" \t")
        has_port = bool(colon)
    if not _HOST.fullmatch(host):
        raise SipParseError(f"bad host {host[:40]!r} in {what}")
    return host, (_parse_port(port_text.strip(), what) if has_port else None)


@dataclass(slots=True, init=False)
class Via:
    """One Via value (RFC 3261 §20.42; ``received``/``rport`` of RFC 3581)."""

    transport: str
    host: str
    port: int | None = None
    params: Params = ()
    protocol: str = "SIP/2.0"

    def __init__(self, transport: str, host: str, port: int | None = None,
                 params: Params = (), protocol: str = "SIP/2.0") -> None:
        # Written out, not generated: compiled (pbx.compiled), a dataclass's
        # generated __init__ stays interpreted, 20 times the cost of this.
        self.transport = transport
        self.host = host
        self.port = port
        self.params = params
        self.protocol = protocol

    @classmethod
    def parse(cls, value: str) -> Via:
        # A phone writes the same sent-protocol and sent-by in every Via it
        # sends, and only the branch changes: what stands before the first ";"
        # is looked up among those already read (`_VIA_HEADS`), and only the
        # parameters are read anew: most of a Via's parse is saved
        # (docs/benchmarks.md, "Why the hot path is written as it is").
        semi = value.find(";")
        head = value if semi < 0 else value[:semi]
        known = _VIA_HEADS.get(head)
        if known is not None:
            params = _token_params(value, semi, True) if semi >= 0 else ()
            if params is not None:
                return Via(known.transport, known.host, known.port, params)
        match = _SIMPLE_VIA.fullmatch(value)
        if match is not None:
            port = match[3]
            if port is not None and int(port) > 65535:
                raise SipParseError(f"bad port {port!r} in Via")
            via = Via(transport=match[1].upper(), host=match[2],
                      port=None if port is None else int(port),
                      params=_simple_params(match[4]) if match[4] else ())
            # Its head matched the head of `_SIMPLE_VIA`, which ends at the
            # first ";" (no host or port has one): a value with this head and
            # parameters `_token_params` accepts matches `_SIMPLE_VIA` as a whole.
            if len(_VIA_HEADS) >= _HEAD_CACHE_SIZE:
                _VIA_HEADS.clear()
            _VIA_HEADS[head] = Via(via.transport, via.host, via.port)
            return via
        return cls._parse_general(value)

    @classmethod
    def _parse_general(cls, value: str) -> Via:
        what = "Via"
        text = value.strip()
        if text[:8].upper() == "SIP/2.0/" and text[8:9] not in (" ", "\t"):
            space = text.find(" ", 8)
            if space < 0 or "\t" in text[8:space]:
                space = min((i for i in (text.find(" ", 8), text.find("\t", 8)) if i >= 0),
                            default=len(text))
            transport = text[8:space]
            rest = text[space:].lstrip()
            protocol = "SIP/2.0"
            if not transport or not TOKEN.fullmatch(transport) or not rest:
                raise SipParseError(f"bad sent-protocol in Via {text[:60]!r}")
        else:
            match = _SENT_PROTOCOL.match(text)
            if match is None:
                raise SipParseError(f"bad sent-protocol in Via {text[:60]!r}")
            protocol = f"{match[1]}/{match[2]}"
            transport = match[3]
            rest = text[match.end() :]
        sent_by, semi, param_text = rest.partition(";")
        host, port = _split_host_port(sent_by.strip(), what)
        params = parse_params(param_text, what) if semi else ()
        return Via(transport=transport.upper(), host=host, port=port, params=params,
                   protocol=protocol)

    @property
    def branch(self) -> str | None:
        return get_param(self.params, "branch")

    @property
    def received(self) -> str | None:
        return get_param(self.params, "received") or None

    @property
    def rport(self) -> int | None:
        """The filled-in rport value, or None (absent, or present but empty)."""
        value = get_param(self.params, "rport")
        return int(value) if value and value.isascii() and value.isdigit() else None

    @property
    def wants_rport(self) -> bool:
        """The client asked for RFC 3581 symmetric response routing."""
        return has_param(self.params, "rport")

    @property
    def maddr(self) -> str | None:
        return get_param(self.params, "maddr") or None

    @property
    def ttl(self) -> int | None:
        value = get_param(self.params, "ttl")
        return int(value) if value and value.isascii() and value.isdigit() else None

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def is_reliable(self) -> bool:
        """Over TCP, TLS, SCTP or WebSocket retransmissions are the transport's job."""
        return self.transport != "UDP"

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    def with_param(self, name: str, value: str | None) -> Via:
        """A copy with one parameter set (replacing it in place, or appended)."""
        lowered = name.lower()
        params = list(self.params)
        for index, (key, _) in enumerate(params):
            if key.lower() == lowered:
                params[index] = (key, value)
                break
        else:
            params.append((name, value))
        return Via(transport=self.transport, host=self.host, port=self.port,
                   params=tuple(params), protocol=self.protocol)

    def __str__(self) -> str:
        return f"{self.protocol}/{self.transport} {self.sent_by}{format_params(self.params)}"


def _escaped(text: str, index: int) -> bool:
    """Is the character at `index` escaped by an odd run of backslashes before it?"""
    run = 0
    while text[index - 1 - run] == "\\":
        run += 1
    return run % 2 == 1


@dataclass(slots=True, init=False)
class NameAddr:
    """From, To, Contact, Route, Record-Route, Reply-To, Refer-To (RFC 3261 §20.10).

    The URI is kept as text and parsed on first use: a B2BUA copies most of
    these without looking inside. ``is_star`` is the ``Contact: *`` of a
    REGISTER that removes every binding.
    """

    uri_text: str
    display_name: str | None = None
    params: Params = ()
    is_star: bool = False
    _uri: Uri | None = field(default=None, compare=False, repr=False)

    def __init__(self, uri_text: str, display_name: str | None = None, params: Params = (),
                 is_star: bool = False, _uri: Uri | None = None) -> None:  # see Via.__init__
        self.uri_text = uri_text
        self.display_name = display_name
        self.params = params
        self.is_star = is_star
        self._uri = _uri

    @classmethod
    def parse(cls, value: str, what: str = "address") -> NameAddr:
        # A From changes with its tag alone (a new one for each call or
        # registration): the display name and URI, up to the last ">", are
        # looked up among those already read (`_NAME_ADDR_HEADS`), and only the
        # parameters are read anew: most of the parse is saved
        # (docs/benchmarks.md, "Why the hot path is written as it is").
        close = value.rfind(">")
        head = value[: close + 1] if close >= 0 else value
        known = _NAME_ADDR_HEADS.get(head)
        if known is not None:
            params = _token_params(value, close + 1, False)
            if params is not None:
                return NameAddr(known.uri_text, known.display_name, params)
        match = _SIMPLE_NAME_ADDR.fullmatch(value)
        if match is not None and ":" in match[3]:
            quoted, token_name, uri_text, param_text = match.groups()
            if quoted is not None:
                display: str | None = unquote_string(f'"{quoted}"') if "\\" in quoted else quoted
            else:
                display = token_name or None
            # The parameters are all that follow the ">" closing the URI, the
            # last one (a token has none): this head matched the head of
            # `_SIMPLE_NAME_ADDR`, and with parameters `_token_params` accepts
            # the whole value does, the same way.
            if len(_NAME_ADDR_HEADS) >= _HEAD_CACHE_SIZE:
                _NAME_ADDR_HEADS.clear()
            _NAME_ADDR_HEADS[head] = NameAddr(uri_text, display)
            return NameAddr(uri_text=uri_text, display_name=display,
                       params=_simple_params(param_text) if param_text else ())
        return cls._parse_general(value, what)

    @classmethod
    def _parse_general(cls, value: str, what: str) -> NameAddr:
        text = value.strip()
        if text == "*":
            return NameAddr(uri_text="*", is_star=True)
        display: str | None = None
        if text.startswith('"'):
            index = text.find('"', 1)
            while index > 0 and _escaped(text, index):
                index = text.find('"', index + 1)
            if index < 0:
                raise SipParseError(f"unterminated display name in {what}")
            display = unquote_string(text[: index + 1])
            rest = text[index + 1 :].lstrip()
            if not rest.startswith("<"):
                raise SipParseError(f"display name without <URI> in {what}")
        else:
            angle = text.find("<")
            rest = text[angle:] if angle >= 0 else text
            if angle > 0:
                display = " ".join(text[:angle].split()) or None
        if rest.startswith("<"):
            end = rest.find(">")
            if end < 0:
                raise SipParseError(f"unterminated <URI> in {what}")
            uri_text = rest[1:end].strip()
            after = rest[end + 1 :].lstrip()
            if after and not after.startswith(";"):
                raise SipParseError(f"unexpected text after URI in {what}")
            param_text = after[1:]
            has_params = bool(after)
        else:
            # addr-spec: parameters after the URI belong to the header (§20.10).
            uri_text, semi, param_text = rest.partition(";")
            uri_text = uri_text.strip()
            has_params = bool(semi)
            if "?" in uri_text or "," in uri_text:
                raise SipParseError(f"URI with headers or commas must be in <> in {what}")
        if not uri_text or ":" not in uri_text or " " in uri_text:
            raise SipParseError(f"bad URI in {what}")
        params = parse_params(param_text, what) if has_params else ()
        return NameAddr(uri_text=uri_text, display_name=display, params=params)

    @property
    def uri(self) -> Uri:
        """The parsed URI (parsed once; raises SipParseError if malformed)."""
        if self._uri is None:
            self._uri = parse_uri(self.uri_text)
        return self._uri

    @property
    def sip_uri(self) -> SipUri | None:
        uri = self.uri
        return uri if isinstance(uri, SipUri) else None

    @property
    def sip_user(self) -> str | None:
        """The user part of a sip:/sips: URI ("1002"), else None; never raises.

        What `pbx.sip.uri.user_of` gives for ``uri_text``, from the URI this
        object parsed once: a phone's To and From repeat in every request,
        and these objects are shared between the requests that repeat them.
        """
        try:
            uri = self.uri
        except SipParseError:
            return None
        return uri.user if isinstance(uri, SipUri) else None

    @property
    def tel_uri(self) -> TelUri | None:
        uri = self.uri
        return uri if isinstance(uri, TelUri) else None

    @property
    def tag(self) -> str | None:
        return get_param(self.params, "tag") or None

    @property
    def expires(self) -> int | None:
        value = get_param(self.params, "expires")
        return int(value) if value and value.isascii() and value.isdigit() else None

    @property
    def q(self) -> float | None:
        """The preference of a Contact (RFC 3261 §20.10), 0 to 1, or None."""
        value = get_param(self.params, "q")
        if not value:
            return None
        try:
            q = float(value)
        except ValueError:
            raise SipParseError(f"bad q value {value[:10]!r}") from None
        if not 0.0 <= q <= 1.0:
            raise SipParseError(f"q value {value[:10]!r} out of range")
        return q

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    def with_param(self, name: str, value: str | None) -> NameAddr:
        lowered = name.lower()
        params = [p for p in self.params if p[0].lower() != lowered]
        params.append((name, value))
        return NameAddr(uri_text=self.uri_text, display_name=self.display_name,
                        params=tuple(params), _uri=self._uri)

    def with_tag(self, tag: str) -> NameAddr:
        return self.with_param("tag", tag)

    def __str__(self) -> str:
        if self.is_star:
            return "*"
        name = "" if self.display_name is None else quote_string(self.display_name) + " "
        return f"{name}<{self.uri_text}>{format_params(self.params)}"


_VIA_HEADS: Final[dict[str, Via]] = {}
"""What a simple Via says before its first ";" (``SIP/2.0/UDP 10.0.0.7:5060``), read
once: a Via without parameters, never handed out (so never changed)."""
_NAME_ADDR_HEADS: Final[dict[str, NameAddr]] = {}
"""What a simple name-addr says up to the ">" after its URI, read once: a
NameAddr without parameters and URI not parsed, never handed out."""


@dataclass(slots=True)
class CSeq:
    """``CSeq: 4711 INVITE`` (RFC 3261 §20.16)."""

    number: int
    method: str

    @classmethod
    def parse(cls, value: str) -> CSeq:
        match = _SIMPLE_CSEQ.fullmatch(value)
        if match is not None and len(match[1]) < 10:  # below 10**9: under 2**31 for sure
            return CSeq(number=int(match[1]), method=match[2])
        parts = value.split()
        if len(parts) != 2:
            raise SipParseError(f"bad CSeq {value[:40]!r}")
        number_text, method = parts
        if not (number_text.isascii() and number_text.isdigit()) or len(number_text) > 10:
            raise SipParseError(f"bad CSeq number {number_text[:12]!r}")
        number = int(number_text)
        if number > _MAX_CSEQ:
            raise SipParseError(f"CSeq number {number} is not below 2**31")
        if not TOKEN.fullmatch(method):
            raise SipParseError(f"bad CSeq method {method[:20]!r}")
        return CSeq(number=number, method=method)

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


@dataclass(frozen=True, slots=True)
class ValueWithParams:
    """``token *(; param)``: Event, Subscription-State, Content-Type, Content-Disposition."""

    value: str
    params: Params = ()

    @classmethod
    def parse(cls, text: str, what: str) -> ValueWithParams:
        value, semi, param_text = text.partition(";")
        value = value.strip()
        if not value:
            raise SipParseError(f"empty {what}")
        return ValueWithParams(value=value, params=parse_params(param_text, what) if semi else ())

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    def __str__(self) -> str:
        return f"{self.value}{format_params(self.params)}"


@dataclass(frozen=True, slots=True)
class Event:
    """``Event: presence;id=7`` (RFC 6665 §8.2.1)."""

    package: str
    id: str | None = None
    params: Params = ()

    @classmethod
    def parse(cls, text: str) -> Event:
        parsed = ValueWithParams.parse(text, "Event")
        if not TOKEN.fullmatch(parsed.value):
            raise SipParseError(f"bad event package {parsed.value[:30]!r}")
        return cls(package=parsed.value.lower(), id=parsed.param("id"), params=parsed.params)


@dataclass(frozen=True, slots=True)
class SubscriptionState:
    """``Subscription-State: active;expires=600`` (RFC 6665 §8.2.3)."""

    state: str
    expires: int | None = None
    reason: str | None = None
    retry_after: int | None = None

    @classmethod
    def parse(cls, text: str) -> SubscriptionState:
        parsed = ValueWithParams.parse(text, "Subscription-State")
        expires = parsed.param("expires")
        retry = parsed.param("retry-after")
        if (expires and not (expires.isascii() and expires.isdigit())) or (
                retry and not (retry.isascii() and retry.isdigit())):
            raise SipParseError("bad number in Subscription-State")
        return cls(
            state=parsed.value.lower(),
            expires=int(expires) if expires else None,
            reason=parsed.param("reason"),
            retry_after=int(retry) if retry else None,
        )


def parse_token_list(values: list[str], what: str) -> list[str]:
    """Require, Supported, Unsupported, Allow, Proxy-Require: tokens, compared as is."""
    tokens: list[str] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            if not TOKEN.fullmatch(item):
                raise SipParseError(f"bad token {item[:30]!r} in {what}")
            tokens.append(item)
    return tokens


def parse_non_negative_int(value: str, what: str, maximum: int = 2**32 - 1) -> int:
    """Content-Length, Max-Forwards, Expires, Min-Expires (delta-seconds)."""
    text = value.strip()
    # isascii: str.isdigit() is also true of superscripts (int() rejects them) and
    # of other scripts' digits (int() reads them): neither is SIP's DIGIT.
    if not (text.isascii() and text.isdigit()) or len(text) > 10 or int(text) > maximum:
        raise SipParseError(f"bad {what} {text[:20]!r}")
    return int(text)
