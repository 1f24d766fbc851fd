"""SIP digest authentication: header values, digest maths and a client.

RFC 3261 §22 borrows HTTP digest (RFC 2617); RFC 8760 brings SIP up to
RFC 7616 with SHA-256. This module is sans-I/O like the rest of `pbx.sip`:
no clock is read (time arrives as ``now``), no randomness is drawn except
through an injected ``random_bytes``, nothing is logged.

The server side, issuing nonces and checking credentials against them, is
`pbx.sip.digest_server`.

Limits and their sources: a header value of at most `MAX_AUTH_VALUE_CHARS`
and `MAX_AUTH_PARAMS` parameters. Neither RFC sets one; the largest genuine
credentials (RFC 7616 §3.9.1) are about 400 characters and 10 parameters, so
both bounds leave an order of magnitude of room while capping the work one
header can cause.

Text is hashed as UTF-8 (RFC 7616 §3.4 ``charset``; SIP is UTF-8 throughout,
RFC 3261 §7.3.1), encoded with ``surrogateescape`` so that bytes the message
layer could not decode hash as the very bytes the client sent.

Not supported, and refused with UNSUPPORTED or `UnsupportedDigestError`:
``qop=auth-int`` (the body would have to reach this layer, and no deployed
phone needs it), SHA-512-256, and ``userhash`` / ``username*``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from pbx.sip.errors import LocalProtocolError, SipError, SipParseError

__all__ = [
    "MAX_AUTH_PARAMS",
    "MAX_AUTH_VALUE_CHARS",
    "Challenge",
    "Credentials",
    "UnsupportedDigestError",
    "authorization_for",
    "compute_ha1",
    "compute_response",
    "ha1_for",
    "parse_auth_params",
    "select_challenge",
]

MAX_AUTH_VALUE_CHARS = 4096
MAX_AUTH_PARAMS = 32


class UnsupportedDigestError(SipError):
    """A digest computation was asked for an algorithm or qop we do not do.

    Raised by the pure functions and the client side. The server side never
    raises it: it answers `digest_server.AuthResult.UNSUPPORTED` instead.
    """


# --------------------------------------------------------------------------
# Algorithms (RFC 7616 §3.2 table; RFC 8760 §2.1)
# --------------------------------------------------------------------------


def _hashers() -> tuple[Callable[[bytes], Any], Callable[[bytes], Any]]:
    """MD5 and SHA-256 constructors, CPython's own where it has them.

    A digest hashes a few dozen bytes at a time, and for so little the cost
    is in setting up the hash: CPython's built-in `_md5` and `_sha256` set
    up faster than OpenSSL's (through `hashlib`) (docs/benchmarks.md, "Why
    the hot path is written as it is").
    The results are the same; `hashlib`'s are the fallback on a Python
    built without them.
    """
    try:
        from _md5 import md5  # type: ignore[import-not-found]
        from _sha256 import sha256  # type: ignore[import-not-found]
    except ImportError:
        return hashlib.md5, hashlib.sha256
    return md5, sha256


_MD5, _SHA256 = _hashers()


def _md5_hex(data: bytes) -> str:
    return str(_MD5(data).hexdigest())


def _sha256_hex(data: bytes) -> str:
    return str(_SHA256(data).hexdigest())


@dataclass(frozen=True, slots=True, kw_only=True)
class _Algorithm:
    name: str
    hexdigest: Callable[[bytes], str]
    session: bool
    sha256: bool
    """Hashed with SHA-256 (else MD5): `_h` calls the hash directly, not
    through `hexdigest`, an object call that every hash would pay for
    (docs/benchmarks.md, "Why the hot path is written as it is")."""


# Keyed by upper case: algorithm tokens compare case-insensitively, and
# phones have been seen sending "md5".
_ALGORITHMS: dict[str, _Algorithm] = {
    a.name.upper(): a
    for a in (
        _Algorithm(name="MD5", hexdigest=_md5_hex, session=False, sha256=False),
        _Algorithm(name="MD5-sess", hexdigest=_md5_hex, session=True, sha256=False),
        _Algorithm(name="SHA-256", hexdigest=_sha256_hex, session=False, sha256=True),
        _Algorithm(name="SHA-256-sess", hexdigest=_sha256_hex, session=True, sha256=True),
    )
}
_ALGORITHMS_AS_NAMED: dict[str, _Algorithm] = {a.name: a for a in _ALGORITHMS.values()}
"""The same by registry spelling, as nearly every caller writes them: no upper() needed."""


def algorithm_named(name: str) -> _Algorithm:
    """The algorithm a challenge or credentials name, in any case; also used
    by `pbx.sip.digest_server` (not part of the public API, hence not in __all__)."""
    alg = _ALGORITHMS_AS_NAMED.get(name)
    if alg is None:
        alg = _ALGORITHMS.get(name.upper())
    if alg is None:
        raise UnsupportedDigestError(f"digest algorithm {name!r} is not supported")
    return alg


def _canonical_algorithm(name: str) -> str:
    """The registry spelling of a known algorithm, else the name as given."""
    alg = _ALGORITHMS.get(name.upper())
    return name if alg is None else alg.name


def _h(alg: _Algorithm, text: str) -> str:
    data = text.encode("utf-8", "surrogateescape")
    return _sha256_hex(data) if alg.sha256 else _md5_hex(data)


# --------------------------------------------------------------------------
# Digest computation (RFC 7616 §3.4.1-§3.4.3, RFC 2617 §3.2.2, RFC 2069 §2.1.2)
# --------------------------------------------------------------------------


def compute_ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """H(username ":" realm ":" password), what a password store keeps.

    For the ``-sess`` variants this is still the stored part: the session key
    H(HA1 ":" nonce ":" cnonce) needs both nonces and is derived by
    `compute_response`, so one stored HA1 per hash serves both variants
    (RFC 7616 §3.4.2).
    """
    return _h(algorithm_named(algorithm), f"{username}:{realm}:{password}")


def ha1_for(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """The HA1 to hand to `digest_server.DigestAuthenticator.verify`; same as `compute_ha1`."""
    return compute_ha1(username, realm, password, algorithm)


_HA2S: dict[tuple[str, str, str], str] = {}
"""H(method ":" uri) by (algorithm, method, uri): every REGISTER of an office
hashes the same "REGISTER:sip:domain". Bounded: cleared when full."""


def _ha2(alg: _Algorithm, method: str, uri: str) -> str:
    key = (alg.name, method, uri)
    ha2 = _HA2S.get(key)
    if ha2 is None:
        ha2 = _h(alg, f"{method}:{uri}")
        if len(_HA2S) >= 1024:
            _HA2S.clear()
        _HA2S[key] = ha2
    return ha2


def compute_response(
    *,
    ha1: str,
    nonce: str,
    method: str,
    uri: str,
    algorithm: str = "MD5",
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """The request-digest, lowercase hex (RFC 7616 §3.4.1).

    With ``qop`` absent this is the RFC 2069 form KD(HA1, nonce:HA2) that old
    phones still send. ``qop`` and ``nc`` are hashed exactly as sent: the
    client hashed its own spelling. The ``-sess`` session key uses the hex
    HA1, as RFC 7616 §3.4.2 settles (RFC 2617's sample code hashed raw bytes).
    """
    alg = algorithm_named(algorithm)
    if alg.session and cnonce is None:
        raise UnsupportedDigestError(f"{alg.name} needs a cnonce, hence qop")
    if qop is not None:
        if qop.lower() != "auth":
            raise UnsupportedDigestError(f"qop={qop} is not supported, only qop=auth")
        if nc is None or cnonce is None:
            raise UnsupportedDigestError("qop=auth needs nc and cnonce")
    return digest_response(alg, ha1, nonce, method, uri, qop, nc, cnonce)


def digest_response(alg: _Algorithm, ha1: str, nonce: str, method: str, uri: str,
                    qop: str | None, nc: str | None, cnonce: str | None) -> str:
    """`compute_response` once its checks are made: ``-sess`` has a cnonce,
    a qop is ``auth`` with nc and cnonce. The server side verifies with it."""
    if alg.session:
        ha1 = _h(alg, f"{ha1}:{nonce}:{cnonce}")
    ha2 = _ha2(alg, method, uri)
    if qop is None:
        return _h(alg, f"{ha1}:{nonce}:{ha2}")
    return _h(alg, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


# --------------------------------------------------------------------------
# Header values (RFC 3261 §25.1, §20.7, §20.27, §20.28, §20.44)
# --------------------------------------------------------------------------

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN_RE = re.compile(_TOKEN)

# challenge / credentials = auth-scheme LWS auth-param *(COMMA auth-param)
_SCHEME_RE = re.compile(rf"[ \t]*({_TOKEN})(?:[ \t]+|\Z)")

# auth-param    = auth-param-name EQUAL ( token / quoted-string )
# EQUAL         = SWS "=" SWS
# quoted-string = SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE
# qdtext        = LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII
# quoted-pair   = "\" (%x00-09 / %x0B-0C / %x0E-7F)
# The unquoted value is more lenient than token (any VCHAR but DQUOTE, ","
# and "\"), because phones send base64 nonces and URIs bare. Lone surrogates
# other than surrogateescape's U+DC80-DCFF are refused so that every value
# returned can be encoded for hashing.
_PARAM_RE = re.compile(
    rf"({_TOKEN})[ \t]*=[ \t]*"
    r'(?:"((?:[^"\\\x00-\x08\x0a-\x1f\x7f\ud800-\udc7f\udd00-\udfff]'
    r'|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*)"'
    r"|([\x21\x23-\x2b\x2d-\x5b\x5d-\x7e]+))[ \t]*"
)
# LWS = [*WSP CRLF] 1*WSP: a folded line becomes one space (RFC 3261 §7.3.1).
_FOLD_RE = re.compile(r"[ \t]*\r?\n[ \t]+")
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)
# What must be escaped inside a quoted-string we write.
_NEEDS_ESCAPE_RE = re.compile(r'[\\"\x00-\x08\x0b-\x1f\x7f]')
_HEX = frozenset("0123456789abcdefABCDEF")


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """Split a challenge or credentials value into its scheme and parameters.

    Parameter names are lowercased (RFC 3261 §7.3.1: they compare
    case-insensitively); values come back unquoted, with quoted-pairs
    resolved. The scheme is returned as written; compare it case-insensitively
    (RFC 7235 §2.1). A parameter given twice is refused rather than resolved,
    so no two components can read different values (RFC 3261 §7.3.1).
    """
    if len(value) > MAX_AUTH_VALUE_CHARS:
        raise SipParseError(f"authentication header longer than {MAX_AUTH_VALUE_CHARS} chars")
    if "\n" in value:
        value = _FOLD_RE.sub(" ", value)
    if value.startswith("Digest ") and value[7:8] != " " and value[7:8] != "\t":
        scheme, pos = "Digest", 7  # as every phone writes it: no regex needed
    else:
        m = _SCHEME_RE.match(value)
        if m is None:
            raise SipParseError("authentication header does not start with 'scheme '")
        scheme = m.group(1)
        pos = m.end()
    rest = value[pos:]
    if rest.isascii() and rest.isprintable() and "\\" not in rest:
        # The common case, plain printable ASCII without escapes (no tab, no
        # quoted-pair): what phones send. Anything else, or anything this
        # scan is unsure of, takes the exact path below.
        fast = _auth_params_plain(rest)
        if fast is not None:
            return scheme, fast
    return scheme, _auth_params_exact(value, pos)


_PARAM_NAMES = {name: name for name in (
    "username", "realm", "nonce", "uri", "response", "algorithm", "cnonce", "nc", "qop",
    "opaque", "stale", "domain", "userhash")}
"""Auth-param names as phones write them: found here, they need no token check or lowering."""


def _auth_params_plain(rest: str) -> dict[str, str] | None:
    """The auth-params of printable ASCII without backslashes, or None to ask the grammar.

    A quoted value is then any run of non-quotes, a bare one anything but
    quote, comma and space, and the list is found with a few ``str.find``
    calls per parameter: a registrar reads one of these lists for every
    authenticated request, and this is several times cheaper than a regular
    expression over the whole list. Duplicates and too many parameters are
    left to `_auth_params_exact`, which refuses them with a reason.
    """
    params: dict[str, str] = {}
    end = len(rest)
    pos = 0
    while True:
        while pos < end and (rest[pos] == "," or rest[pos] == " "):
            pos += 1
        if pos == end:
            return params
        equals = rest.find("=", pos)
        if equals < 0:
            return None
        written = rest[pos:equals].rstrip(" ")
        name = _PARAM_NAMES.get(written)
        if name is None:
            if _TOKEN_RE.fullmatch(written) is None:
                return None
            name = written.lower()
        pos = equals + 1
        while pos < end and rest[pos] == " ":
            pos += 1
        if pos < end and rest[pos] == '"':
            close = rest.find('"', pos + 1)
            if close < 0:
                return None
            param = rest[pos + 1 : close]
            pos = close + 1
            while pos < end and rest[pos] == " ":
                pos += 1
            if pos < end and rest[pos] != ",":
                return None
        else:
            comma = rest.find(",", pos)
            stop = end if comma < 0 else comma
            param = rest[pos:stop].rstrip(" ")
            if not param or " " in param or '"' in param:
                return None
            pos = stop
        if name in params or len(params) == MAX_AUTH_PARAMS:
            return None
        params[name] = param


def _auth_params_exact(value: str, pos: int) -> dict[str, str]:
    """The auth-params of `value` from `pos` on, by the full grammar, one at a time."""
    end = len(value)
    params: dict[str, str] = {}
    match = _PARAM_RE.match
    while True:
        # COMMA = SWS "," SWS; empty list elements are skipped, as RFC 7230 §7
        # asks of recipients.
        while pos < end and value[pos] in " \t,":
            pos += 1
        if pos == end:
            return params
        m = match(value, pos)
        if m is None:
            raise SipParseError(f"malformed auth-param at offset {pos}")
        raw_name, quoted, token = m.groups()
        name = raw_name.lower()
        if name in params:
            raise SipParseError(f"auth-param {name!r} appears twice")
        if len(params) == MAX_AUTH_PARAMS:
            raise SipParseError(f"more than {MAX_AUTH_PARAMS} auth-params")
        if quoted is None:
            params[name] = token
        elif "\\" in quoted:
            params[name] = _QUOTED_PAIR_RE.sub(r"\1", quoted)
        else:
            params[name] = quoted
        pos = m.end()
        if pos != end and value[pos] != ",":
            raise SipParseError(f"expected ',' between auth-params at offset {pos}")


def quoted_string(value: str) -> str:
    """A quoted-string for `value`; CR and LF cannot be quoted (RFC 3261 §25.1)."""
    if "\r" in value or "\n" in value:
        raise LocalProtocolError("CR or LF in an authentication parameter")
    if _NEEDS_ESCAPE_RE.search(value) is not None:
        value = _NEEDS_ESCAPE_RE.sub(lambda m: "\\" + m.group(0), value)
    return f'"{value}"'


def _token_or_quoted(value: str) -> str:
    """Token-valued parameters go bare when they are tokens, quoted otherwise."""
    return value if _TOKEN_RE.fullmatch(value) else quoted_string(value)


def _require_digest(scheme: str) -> None:
    if scheme.lower() != "digest":
        raise SipParseError(f"authentication scheme {scheme!r} is not Digest")


def _required(params: dict[str, str], name: str) -> str:
    value = params.get(name)
    if value is None:
        raise SipParseError(f"Digest {name} is missing")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    """One Digest challenge of a WWW-Authenticate / Proxy-Authenticate header.

    ``algorithm`` defaults to MD5, as an absent parameter means
    (RFC 7616 §3.3). ``qop`` holds the offered qop-options; empty means none
    were offered (RFC 2069 style). ``domain`` is the space-separated URI list
    as written.
    """

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    domain: str | None = None

    @classmethod
    def parse(cls, value: str) -> Challenge:
        """Parse a challenge (RFC 3261 §25.1 ``challenge``, RFC 7616 §3.3)."""
        scheme, params = parse_auth_params(value)
        _require_digest(scheme)
        qop = params.get("qop")
        return Challenge(
            realm=_required(params, "realm"),
            nonce=_required(params, "nonce"),
            algorithm=_canonical_algorithm(params.get("algorithm", "MD5")),
            qop=() if qop is None else tuple(q for q in map(str.strip, qop.split(",")) if q),
            opaque=params.get("opaque"),
            stale=params.get("stale", "").lower() == "true",
            domain=params.get("domain"),
        )

    def to_header_value(self) -> str:
        """The header value, parameters spelled as RFC 7616 §3.3 spells them."""
        parts = [f"Digest realm={quoted_string(self.realm)}"]
        if self.domain is not None:
            parts.append(f"domain={quoted_string(self.domain)}")
        parts.append(f"nonce={quoted_string(self.nonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={quoted_string(self.opaque)}")
        if self.stale:
            parts.append("stale=TRUE")
        parts.append(f"algorithm={_token_or_quoted(self.algorithm)}")
        if self.qop:
            parts.append(f"qop={quoted_string(','.join(self.qop))}")
        return ", ".join(parts)


@dataclass(slots=True, kw_only=True, init=False, unsafe_hash=True)
class Credentials:
    """Digest credentials of an Authorization / Proxy-Authorization header.

    The invariants of a well-formed value are checked on construction, so a
    `Credentials` in hand is always well formed: ``nc`` is eight hex digits
    (RFC 7616 §3.4 ``nc-value``) and a ``qop`` comes with ``cnonce`` and
    ``nc`` (RFC 2617 §3.2.2). ``nc`` stays a string because it is hashed as
    sent.
    """

    username: Final[str]
    realm: Final[str]
    nonce: Final[str]
    uri: Final[str]
    response: Final[str]
    algorithm: Final[str]
    cnonce: Final[str | None]
    nc: Final[str | None]
    qop: Final[str | None]
    opaque: Final[str | None]

    # Written out, not generated (see pbx.compiled), and immutable by type
    # (Final, held by mypy) rather than frozen, which would write each field
    # through object.__setattr__: one of these is parsed for every request
    # that carries credentials.
    def __init__(
        self, *, username: str, realm: str, nonce: str, uri: str, response: str,
        algorithm: str = "MD5", cnonce: str | None = None, nc: str | None = None,
        qop: str | None = None, opaque: str | None = None,
    ) -> None:
        if nc is not None and (len(nc) != 8 or not _HEX.issuperset(nc)):
            raise SipParseError(f"Digest nc {nc!r} is not 8 hex digits")
        if qop is not None and (cnonce is None or nc is None):
            raise SipParseError(f"Digest qop={qop} without cnonce and nc")
        self.username = username
        self.realm = realm
        self.nonce = nonce
        self.uri = uri
        self.response = response
        self.algorithm = algorithm
        self.cnonce = cnonce
        self.nc = nc
        self.qop = qop
        self.opaque = opaque

    @classmethod
    def parse(cls, value: str) -> Credentials:
        """Parse credentials (RFC 3261 §25.1 ``credentials``, RFC 7616 §3.4).

        Unknown parameters are ignored, as auth-param extensions must be.
        """
        plain = _credentials_plain(value)
        if plain is not None:
            return plain
        return _credentials_exact(value)

    def to_header_value(self) -> str:
        """The header value; qop, nc and algorithm bare (RFC 7616 §3.4)."""
        parts = [
            f"Digest username={quoted_string(self.username)}",
            f"realm={quoted_string(self.realm)}",
            f"nonce={quoted_string(self.nonce)}",
            f"uri={quoted_string(self.uri)}",
            f"response={quoted_string(self.response)}",
            f"algorithm={_token_or_quoted(self.algorithm)}",
        ]
        if self.cnonce is not None:
            parts.append(f"cnonce={quoted_string(self.cnonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={quoted_string(self.opaque)}")
        if self.qop is not None:
            parts.append(f"qop={_token_or_quoted(self.qop)}")
        if self.nc is not None:
            parts.append(f"nc={self.nc}")
        return ", ".join(parts)


def _credentials_exact(value: str) -> Credentials:
    """`Credentials.parse` by way of `parse_auth_params`: any value, or SipParseError."""
    scheme, params = parse_auth_params(value)
    _require_digest(scheme)
    return Credentials(
        username=_required(params, "username"),
        realm=_required(params, "realm"),
        nonce=_required(params, "nonce"),
        uri=_required(params, "uri"),
        response=_required(params, "response"),
        algorithm=_canonical_algorithm(params.get("algorithm", "MD5")),
        cnonce=params.get("cnonce"),
        nc=params.get("nc"),
        qop=params.get("qop"),
        opaque=params.get("opaque"),
    )


_PLAIN_TABLE: Final = bytes(
    c if 0x20 <= c < 0x7F and c != 0x5C else (1 if c == 0 else 0) for c in range(256))
"""bytes.translate table that keeps printable ASCII but the backslash (what
`_credentials_plain` reads) and changes every other byte."""


def _credentials_plain(value: str) -> Credentials | None:
    """`Credentials.parse` of credentials as phones write them, else None.

    Every REGISTER a registrar accepts carries one of these, and parsing it
    through `parse_auth_params` was costly (docs/benchmarks.md, "Why the hot
    path is written as it is"):
    a dict of parameters, each name hashed and looked up, two ``str`` methods
    called by name over the whole value, then the dict read back into a
    `Credentials`. This reads the same text in one pass of ``str.find`` into
    locals, for ``Digest`` followed by printable ASCII without backslashes
    (no quoted-pairs, tabs or folds), each of the ten credentials parameters
    in lower case at most once, and nothing else. Whatever it does not
    recognise (an unknown or repeated parameter, spaces before ``=`` or
    after a bare value, a missing one) it leaves to `_credentials_exact` by
    answering None, so every answer, and every error, is the exact path's
    (a test holds the two equal). It follows `_auth_params_plain`, the
    grammar's own plain-text scan.
    """
    end = len(value)
    if end > MAX_AUTH_VALUE_CHARS or not value.startswith("Digest "):
        return None
    # One pass in C, a fraction of the cost of str.isascii() and
    # str.isprintable() called by name (docs/benchmarks.md, "Why the hot path
    # is written as it is"): the table leaves the value
    # unchanged only if it is all plain. A non-ASCII character is written
    # as backslashes, which the table changes.
    encoded = value.encode("ascii", "backslashreplace")
    if encoded.translate(_PLAIN_TABLE) != encoded:
        return None
    username: str | None = None
    realm: str | None = None
    nonce: str | None = None
    uri: str | None = None
    response: str | None = None
    algorithm: str | None = None
    cnonce: str | None = None
    nc: str | None = None
    qop: str | None = None
    opaque: str | None = None
    pos = 7
    while True:
        while pos < end and (value[pos] == "," or value[pos] == " "):
            pos += 1
        if pos == end:
            break
        equals = value.find("=", pos)
        if equals <= pos or value[equals - 1] == " ":
            return None
        name_at = pos
        name = value[pos:equals]
        pos = equals + 1
        while pos < end and value[pos] == " ":
            pos += 1
        if pos < end and value[pos] == '"':
            close = value.find('"', pos + 1)
            if close < 0:
                return None
            param = value[pos + 1 : close]
            pos = close + 1
            while pos < end and value[pos] == " ":
                pos += 1
            if pos < end and value[pos] != ",":
                return None
        else:
            stop = value.find(",", pos)
            if stop < 0:
                stop = end
            param = value[pos:stop]
            if not param or " " in param or '"' in param:
                return None
            pos = stop
        # By length first: a chain of ten string comparisons costs more, in
        # every header (docs/benchmarks.md, "Why the hot path is written as it
        # is"). A name given twice is the exact path's to refuse.
        length = equals - name_at
        if length == 5:
            if name == "nonce" and nonce is None:
                nonce = param
            elif name == "realm" and realm is None:
                realm = param
            else:
                return None
        elif length == 8:
            if name == "response" and response is None:
                response = param
            elif name == "username" and username is None:
                username = param
            else:
                return None
        elif length == 3:
            if name == "uri" and uri is None:
                uri = param
            elif name == "qop" and qop is None:
                qop = param
            else:
                return None
        elif length == 6:
            if name == "cnonce" and cnonce is None:
                cnonce = param
            elif name == "opaque" and opaque is None:
                opaque = param
            else:
                return None
        elif length == 2 and name == "nc" and nc is None:
            nc = param
        elif length == 9 and name == "algorithm" and algorithm is None:
            algorithm = param
        else:
            return None
    if username is None or realm is None or nonce is None or uri is None or response is None:
        return None
    return Credentials(
        username=username,
        realm=realm,
        nonce=nonce,
        uri=uri,
        response=response,
        algorithm=("MD5" if algorithm is None or algorithm == "MD5"
                   else _canonical_algorithm(algorithm)),
        cnonce=cnonce,
        nc=nc,
        qop=qop,
        opaque=opaque,
    )


# --------------------------------------------------------------------------
# Client side (the B2BUA authenticating upstream)
# --------------------------------------------------------------------------


def _usable_qop(challenge: Challenge) -> str | None:
    """``auth`` if offered, None if no qop was offered; else unsupported."""
    if not challenge.qop:
        return None
    for q in challenge.qop:
        if q.lower() == "auth":
            return q
    raise UnsupportedDigestError(f"qop {','.join(challenge.qop)} offered, only auth is supported")


def select_challenge(challenges: Iterable[Challenge]) -> Challenge | None:
    """The topmost challenge we can answer (RFC 8760 §2.4), or None."""
    for challenge in challenges:
        alg = _ALGORITHMS.get(challenge.algorithm.upper())
        try:
            qop = _usable_qop(challenge)
        except UnsupportedDigestError:
            continue
        if alg is not None and (qop is not None or not alg.session):
            return challenge
    return None


def authorization_for(
    challenge: Challenge,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    cnonce: str,
    nc: int = 1,
) -> Credentials:
    """Credentials answering `challenge` for one request (RFC 3261 §22.2).

    ``cnonce`` comes from the caller (sans-I/O: no randomness here); make it
    base64url or hex of random bytes. ``nc`` counts requests sent with this
    nonce, starting at 1. Without a qop offer the RFC 2069 form is used and
    cnonce is not sent.
    """
    if not 1 <= nc <= 0xFFFFFFFF:
        raise ValueError(f"nc {nc} is outside 1..0xFFFFFFFF")
    alg = algorithm_named(challenge.algorithm)
    qop = _usable_qop(challenge)
    nc_value = None if qop is None else f"{nc:08x}"
    used_cnonce = None if qop is None else cnonce
    ha1 = compute_ha1(username, challenge.realm, password, alg.name)
    response = compute_response(
        ha1=ha1,
        nonce=challenge.nonce,
        method=method,
        uri=uri,
        algorithm=alg.name,
        qop=qop,
        nc=nc_value,
        cnonce=used_cnonce,
    )
    return Credentials(
        username=username,
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response=response,
        algorithm=alg.name,
        cnonce=used_cnonce,
        nc=nc_value,
        qop=qop,
        opaque=challenge.opaque,
    )
