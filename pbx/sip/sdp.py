"""SDP session descriptions (RFC 4566) and the offer/answer rules of RFC 3264.

Theory of operation
-------------------
A B2BUA parses each SDP body, points it at its media relay, and writes it out
on the other leg, once for the offer and once for the answer. So:

* Parsing is one pass of ``str.split``/``partition`` over the lines, no regex.
* **Mutation:** every value is a frozen, slotted dataclass and every repeated
  field a tuple. A rewrite is ``dataclasses.replace`` on the few objects that
  change, sharing the rest (a relay swaps each stream's port and ``c=`` but
  reuses its attribute tuple). Legs and dialogs share values without copies.
* What we do not interpret is kept as text, in order: unknown attributes,
  ``r=``, ``z=``, ``k=``, and type letters RFC 4566 lacks (``extra``, written
  after the section's attributes). §5 says to refuse the latter, but gateways
  (GB28181 ``y=``/``f=``) send them. So input in §5 order goes back byte for
  byte; other orders are accepted and written in §5 order.
* Typed views (rtpmap, fmtp, ptime, direction) are computed from the attribute
  tuple on access, one source of truth. rtpmap, fmtp, ptime and maxptime are
  checked while parsing, so a bad one is a 400 at the door, not a surprise
  in the middle of a call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from pbx.sip.errors import SipParseError

__all__ = [
    "ADDRESS_ATTRIBUTES", "PCMA", "PCMU", "STATIC_PAYLOAD_TYPES", "TELEPHONE_EVENT",
    "Attribute", "Bandwidth", "Codec", "Connection", "Direction", "MediaDescription", "Origin",
    "RtpMap", "SessionDescription", "Timing", "answer", "is_hold", "with_connection",
]

#: Caps the text shown in an error reason, so a hostile body cannot inflate
#: the log line or the reason phrase of the 400 response.
_MAX_SHOWN: Final = 60


class Direction(StrEnum):
    """The direction attributes of RFC 4566 §6 (RFC 3264 §5.1): which way media flows."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    @property
    def sends(self) -> bool:
        return self is Direction.SENDRECV or self is Direction.SENDONLY

    @property
    def receives(self) -> bool:
        return self is Direction.SENDRECV or self is Direction.RECVONLY

    @classmethod
    def from_flags(cls, *, send: bool, receive: bool) -> Direction:
        if send:
            return cls.SENDRECV if receive else cls.SENDONLY
        return cls.RECVONLY if receive else cls.INACTIVE

    def reversed(self) -> Direction:
        """The same stream seen from the other end; the answer rule of RFC 3264 §6.1."""
        return Direction.from_flags(send=self.receives, receive=self.sends)


_DIRECTIONS: Final = frozenset(d.value for d in Direction)


@dataclass(frozen=True, slots=True, kw_only=True)
class Origin:
    """``o=`` (RFC 4566 §5.2). ``sess_version`` is an int because RFC 3264 §8
    makes us increase it for each changed description. ``sess_id`` is kept as
    text because only its identity matters."""

    username: str = "-"
    sess_id: str
    sess_version: int
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str

    def __str__(self) -> str:
        return (
            f"{self.username} {self.sess_id} {self.sess_version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Connection:
    """``c=`` (RFC 4566 §5.7). ``ttl`` exists only for IP4 multicast.
    ``count`` is the ``/<number of addresses>`` suffix."""

    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str
    ttl: int | None = None
    count: int | None = None

    @classmethod
    def for_address(cls, address: str) -> Connection:
        """A unicast connection whose address type comes from the address: only IPv6 has ':'."""
        return cls(addrtype="IP6" if ":" in address else "IP4", address=address)

    def __str__(self) -> str:
        suffix = "" if self.ttl is None else f"/{self.ttl}"
        if self.count is not None:
            suffix += f"/{self.count}"
        return f"{self.nettype} {self.addrtype} {self.address}{suffix}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Bandwidth:
    """``b=<bwtype>:<bandwidth>`` (RFC 4566 §5.8). The unit depends on the type:
    kb/s for AS and CT, b/s for TIAS (RFC 3890)."""

    bwtype: str
    bandwidth: int

    def __str__(self) -> str:
        return f"{self.bwtype}:{self.bandwidth}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    """One ``t=`` line and the ``r=`` lines under it (RFC 4566 §5.9-5.10).
    The repeats are kept verbatim because a telephone call never uses them."""

    start: int = 0
    stop: int = 0
    repeats: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Attribute:
    """``a=<name>`` (``value`` None) or ``a=<name>:<value>`` (RFC 4566 §5.13)."""

    name: str
    value: str | None = None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RtpMap:
    """``a=rtpmap:<pt> <name>/<clock rate>[/<channels>]`` (RFC 4566 §6).
    ``channels`` is None when the line omits it, so the line is written back
    the same way. For matching, an omitted value counts as one channel."""

    payload_type: int
    encoding_name: str
    clock_rate: int
    channels: int | None = None

    def __str__(self) -> str:
        tail = "" if self.channels is None else f"/{self.channels}"
        return f"{self.payload_type} {self.encoding_name}/{self.clock_rate}{tail}"


#: Static payload types of RFC 3551 §6 (tables 4 and 5). Phones often send
#: these formats without an rtpmap line.
STATIC_PAYLOAD_TYPES: Final = MappingProxyType(
    {
        pt: RtpMap(payload_type=pt, encoding_name=name, clock_rate=rate)
        for pt, name, rate in (
            (0, "PCMU", 8000), (3, "GSM", 8000), (4, "G723", 8000), (8, "PCMA", 8000),
            (9, "G722", 8000), (13, "CN", 8000), (18, "G729", 8000),
            (26, "JPEG", 90000), (31, "H261", 90000), (34, "H263", 90000),
        )
    }
)


def _digits(text: str) -> bool:
    """ASCII digits only, because ``str.isdigit`` also accepts '²' and Arabic-Indic digits."""
    return text.isascii() and text.isdigit()


def _int_or_real(text: str) -> bool:
    """RFC 8866 §9 ``non-zero-int-or-real`` (zero let through): ``20``, ``0.125``, ``22.5``."""
    whole, dot, fraction = text.partition(".")
    return _digits(whole) and (not dot or _digits(fraction))


def _milliseconds(value: str | None) -> float | None:
    if not value:
        return None
    return float(value) if "." in value else int(value)


def _encoding(fmt: str, rtpmaps: dict[str, RtpMap]) -> RtpMap | None:
    rtpmap = rtpmaps.get(fmt)
    if rtpmap is None and _digits(fmt):
        return STATIC_PAYLOAD_TYPES.get(int(fmt))
    return rtpmap


def _parse_rtpmap(value: str) -> RtpMap | None:
    pt, _, encoding = value.partition(" ")
    parts = encoding.split("/")
    if not (_digits(pt) and int(pt) <= 127 and 2 <= len(parts) <= 3 and parts[0]):
        return None
    if not all(_digits(p) for p in parts[1:]):
        return None
    channels = int(parts[2]) if len(parts) == 3 else None
    return RtpMap(payload_type=int(pt), encoding_name=parts[0], clock_rate=int(parts[1]),
                  channels=channels)


class _Attributed:
    """Attribute lookups that session and media descriptions share (RFC 4566 §5.13)."""

    __slots__ = ()
    attributes: tuple[Attribute, ...]

    def get(self, name: str) -> str | None:
        """Value of the first ``a=name``: '' for a flag attribute, None when absent."""
        for a in self.attributes:
            if a.name == name:
                return "" if a.value is None else a.value
        return None

    def get_all(self, name: str) -> list[str]:
        """Values of every ``a=name`` in order (``candidate``, ``ssrc``, ``rtcp-fb`` ...)."""
        return ["" if a.value is None else a.value for a in self.attributes if a.name == name]

    @property
    def direction(self) -> Direction | None:
        """The direction attribute written at this level, or None when there is none."""
        for a in self.attributes:
            if a.name in _DIRECTIONS:
                return Direction(a.name)
        return None


def _set_direction(attrs: tuple[Attribute, ...], direction: Direction) -> tuple[Attribute, ...]:
    """Rewrite the direction attribute where it stands, so the rest of the order is kept."""
    new = Attribute(name=direction.value)
    if not any(a.name in _DIRECTIONS for a in attrs):
        return (*attrs, new)
    return tuple(new if a.name in _DIRECTIONS else a for a in attrs)


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaDescription(_Attributed):
    """One ``m=`` section (RFC 4566 §5.14) with its ``i=``, ``c=``, ``b=``,
    ``k=`` and ``a=`` lines. The formats are strings because they are RTP
    payload numbers only for the RTP protocols. A ``port`` of 0 marks a
    rejected or disabled stream (RFC 3264 §6, §8.2)."""

    media: str
    port: int
    port_count: int | None = None
    proto: str
    formats: tuple[str, ...]
    information: str | None = None
    connections: tuple[Connection, ...] = ()
    bandwidths: tuple[Bandwidth, ...] = ()
    key: str | None = None
    attributes: tuple[Attribute, ...] = ()
    extra: tuple[str, ...] = ()

    @property
    def connection(self) -> Connection | None:
        """The first media-level ``c=``. Several are allowed only for layered multicast."""
        return self.connections[0] if self.connections else None

    @property
    def rtpmaps(self) -> dict[str, RtpMap]:
        """Explicit ``a=rtpmap`` lines keyed by format, as in ``formats``."""
        maps = (_parse_rtpmap(a.value) for a in self.attributes if a.name == "rtpmap" and a.value)
        return {str(m.payload_type): m for m in maps if m is not None}

    @property
    def fmtps(self) -> dict[str, str]:
        """``a=fmtp:<format> <params>`` keyed by format. The params are kept as
        text because their syntax depends on the codec (RFC 4566 §6)."""
        pairs = (a.value.partition(" ") for a in self.attributes if a.name == "fmtp" and a.value)
        return {fmt: params for fmt, _, params in pairs}

    @property
    def ptime_ms(self) -> float | None:
        """The packet time; an int when written as one ("20"), as phones do."""
        return _milliseconds(self.get("ptime"))

    @property
    def maxptime_ms(self) -> float | None:
        return _milliseconds(self.get("maxptime"))

    def rtpmap_for(self, fmt: str) -> RtpMap | None:
        """The encoding of a format: its rtpmap line, else the static type of RFC 3551 §6."""
        return _encoding(fmt, self.rtpmaps)

    def with_direction(self, direction: Direction) -> MediaDescription:
        return dataclasses.replace(self, attributes=_set_direction(self.attributes, direction))

    def _write(self, out: list[str]) -> None:
        port = str(self.port) if self.port_count is None else f"{self.port}/{self.port_count}"
        out.append(" ".join(("m=" + self.media, port, self.proto, *self.formats)))
        if self.information is not None:
            out.append("i=" + self.information)
        out.extend(f"c={c}" for c in self.connections)
        out.extend(f"b={b}" for b in self.bandwidths)
        if self.key is not None:
            out.append("k=" + self.key)
        out.extend(f"a={a}" for a in self.attributes)
        out.extend(self.extra)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionDescription(_Attributed):
    """A whole SDP body (RFC 4566 §5). Session-level ``c=`` and direction apply
    to every stream that does not set its own (§5.7, §6)."""

    version: int = 0
    origin: Origin
    session_name: str = "-"
    information: str | None = None
    uri: str | None = None
    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    connection: Connection | None = None
    bandwidths: tuple[Bandwidth, ...] = ()
    timings: tuple[Timing, ...] = (Timing(),)
    zone: str | None = None
    key: str | None = None
    attributes: tuple[Attribute, ...] = ()
    extra: tuple[str, ...] = ()
    media: tuple[MediaDescription, ...] = ()

    @classmethod
    def parse(cls, data: bytes | str) -> SessionDescription:
        """Parse a body with CRLF or bare LF line ends. Raises `SipParseError`
        (400) naming the first bad line. The caller then answers the request
        with that error (RFC 3261 §21.4.1)."""
        return _parse(data)

    def to_bytes(self) -> bytes:
        """Write the description in RFC 4566 §5 line order with CRLF line ends."""
        out = [f"v={self.version}", f"o={self.origin}", "s=" + self.session_name]
        if self.information is not None:
            out.append("i=" + self.information)
        if self.uri is not None:
            out.append("u=" + self.uri)
        out.extend("e=" + e for e in self.emails)
        out.extend("p=" + p for p in self.phones)
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out.extend(f"b={b}" for b in self.bandwidths)
        for t in self.timings:
            out.append(f"t={t.start} {t.stop}")
            out.extend("r=" + r for r in t.repeats)
        if self.zone is not None:
            out.append("z=" + self.zone)
        if self.key is not None:
            out.append("k=" + self.key)
        out.extend(f"a={a}" for a in self.attributes)
        out.extend(self.extra)
        for m in self.media:
            m._write(out)
        out.append("")
        return "\r\n".join(out).encode("utf-8")

    def direction_of(self, media: MediaDescription) -> Direction:
        """The stream's direction: its own, else the session's, else sendrecv (RFC 3264 §5.1)."""
        return media.direction or self.direction or Direction.SENDRECV

    def connection_of(self, media: MediaDescription) -> Connection | None:
        """Where the stream's media goes: its own ``c=``, else the session's (RFC 4566 §5.7)."""
        return media.connection or self.connection

    def with_direction(self, direction: Direction) -> SessionDescription:
        """Set the direction of every active stream and remove the session-level
        one. A B2BUA uses this to re-offer hold or resume (RFC 3264 §8.4)."""
        session_attrs = tuple(a for a in self.attributes if a.name not in _DIRECTIONS)
        media = tuple(m if m.port == 0 else m.with_direction(direction) for m in self.media)
        return dataclasses.replace(self, attributes=session_attrs, media=media)


# --- parsing ---------------------------------------------------------------------------------

_KNOWN: Final = frozenset("vosiuepcbtrzkam")


def _bad(n: int, line: str, why: str) -> SipParseError:
    shown = line if len(line) <= _MAX_SHOWN else line[:_MAX_SHOWN] + "..."
    return SipParseError(f"bad SDP line {n} {shown!r}: {why}", 400)


def _parse_connection(value: str, n: int, line: str) -> Connection:
    fields = value.split(" ")
    if len(fields) != 3 or not all(fields):
        raise _bad(n, line, "c= needs nettype, addrtype and address")
    nettype, addrtype, spec = fields
    if nettype != "IN":
        raise _bad(n, line, "network type must be IN")
    if addrtype not in ("IP4", "IP6"):
        raise _bad(n, line, "address type must be IP4 or IP6")
    address, _, rest = spec.partition("/")
    ttl = count = None
    if rest:
        parts = rest.split("/")
        if len(parts) > (2 if addrtype == "IP4" else 1) or not all(_digits(p) for p in parts):
            raise _bad(n, line, "bad multicast TTL or address count")
        if addrtype == "IP4":
            ttl = int(parts[0])
            count = int(parts[1]) if len(parts) == 2 else None
        else:
            count = int(parts[0])
    if not address:
        raise _bad(n, line, "empty address")
    return Connection(nettype=nettype, addrtype=addrtype, address=address, ttl=ttl, count=count)


def _parse_bandwidth(value: str, n: int, line: str) -> Bandwidth:
    bwtype, sep, amount = value.partition(":")
    if not (bwtype and sep and _digits(amount)):
        raise _bad(n, line, "b= must be <bwtype>:<number>")
    return Bandwidth(bwtype=bwtype, bandwidth=int(amount))


def _check_attribute(name: str, value: str | None, n: int, line: str) -> None:
    """Refuse malformed typed attributes now, so the typed views never fail later."""
    if name == "rtpmap":
        if value is None or _parse_rtpmap(value) is None:
            raise _bad(n, line, "rtpmap must be <pt> <name>/<rate>[/<channels>]")
    elif name == "fmtp":
        if not value or value[0] == " ":
            raise _bad(n, line, "fmtp must start with a format")
    elif value is None or not _int_or_real(value):  # ptime, maxptime (RFC 8866 §6.4, §6.5)
        raise _bad(n, line, f"{name} must be a number of milliseconds")


_CHECKED: Final = frozenset(("rtpmap", "fmtp", "ptime", "maxptime"))


@dataclass(slots=True)
class _Section:
    """Lines shared by the session and media levels, collected while parsing."""

    information: str | None = None
    connections: list[Connection] = field(default_factory=list)
    bandwidths: list[Bandwidth] = field(default_factory=list)
    key: str | None = None
    attributes: list[Attribute] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)


_Head = tuple[str, int, int | None, str, tuple[str, ...]]  # the fields of an m= line


def _media(head: _Head, s: _Section) -> MediaDescription:
    media, port, port_count, proto, formats = head
    return MediaDescription(
        media=media, port=port, port_count=port_count, proto=proto, formats=formats,
        information=s.information, connections=tuple(s.connections),
        bandwidths=tuple(s.bandwidths), key=s.key, attributes=tuple(s.attributes),
        extra=tuple(s.extra),
    )


def _parse(data: bytes | str) -> SessionDescription:
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SipParseError(f"SDP is not UTF-8 (byte {exc.start})", 400) from None
    else:
        text = data
    lines = text.split("\n")
    while lines and lines[-1] in ("", "\r"):
        lines.pop()
    if not lines or not lines[0].startswith("v="):
        raise SipParseError("SDP must start with a v= line", 400)

    session = _Section()
    section = session
    single: dict[str, str] = {}  # session-level v o s u z, which may appear once
    emails: list[str] = []
    phones: list[str] = []
    timings: list[Timing] = []
    media: list[MediaDescription] = []
    head: _Head | None = None
    origin: Origin | None = None

    for n, raw in enumerate(lines, 1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if len(line) < 2 or line[1] != "=" or not ("a" <= line[0] <= "z"):
            raise _bad(n, line, "not of the form x=value")
        kind = line[0]
        value = line[2:]
        if kind == "a":
            name, sep, attr_value = value.partition(":")
            if not name:
                raise _bad(n, line, "attribute without a name")
            val = attr_value if sep else None
            if name in _CHECKED:
                _check_attribute(name, val, n, line)
            section.attributes.append(Attribute(name=name, value=val))
        elif kind == "m":
            fields = value.split(" ")
            if len(fields) < 3 or not all(fields):
                raise _bad(n, line, "m= needs media, port, proto and formats")
            port, slash, count = fields[1].partition("/")
            if not _digits(port) or int(port) > 65535:
                raise _bad(n, line, "port is not a number from 0 to 65535")
            if slash and not _digits(count):
                raise _bad(n, line, "port count is not a number")
            if head is not None:
                media.append(_media(head, section))
            count_n = int(count) if slash else None
            head = (fields[0], int(port), count_n, fields[2], tuple(fields[3:]))
            section = _Section()
        elif kind == "c":
            if section is session and section.connections:
                raise _bad(n, line, "second session-level c= line")
            section.connections.append(_parse_connection(value, n, line))
        elif kind == "b":
            section.bandwidths.append(_parse_bandwidth(value, n, line))
        elif kind in ("i", "k"):
            if (section.information if kind == "i" else section.key) is not None:
                raise _bad(n, line, f"second {kind}= line in one section")
            if kind == "i":
                section.information = value
            else:
                section.key = value
        elif kind not in _KNOWN:
            section.extra.append(line)
        elif head is not None:
            raise _bad(n, line, f"{kind}= is not allowed after the first m= line")
        elif kind == "e":
            emails.append(value)
        elif kind == "p":
            phones.append(value)
        elif kind == "t":
            start, _, stop = value.partition(" ")
            if not (_digits(start) and _digits(stop)):
                raise _bad(n, line, "t= must be <start> <stop>, both numbers")
            timings.append(Timing(start=int(start), stop=int(stop)))
        elif kind == "r":
            if not timings:
                raise _bad(n, line, "r= before any t= line")
            last = timings[-1]
            timings[-1] = dataclasses.replace(last, repeats=(*last.repeats, value))
        else:  # v o s u z
            if kind in single:
                raise _bad(n, line, f"second {kind}= line")
            single[kind] = value
            if kind == "v" and not _digits(value):
                raise _bad(n, line, "version is not a number")
            if kind == "o":
                fields = value.split(" ")
                if len(fields) != 6 or not all(fields):
                    raise _bad(n, line, "o= needs 6 fields: username sess-id sess-version "
                               "nettype addrtype address")
                if not _digits(fields[2]):
                    raise _bad(n, line, "sess-version is not a number")
                origin = Origin(username=fields[0], sess_id=fields[1], sess_version=int(fields[2]),
                                nettype=fields[3], addrtype=fields[4], address=fields[5])
    if head is not None:
        media.append(_media(head, section))
    if origin is None:
        raise SipParseError("SDP has no o= line", 400)
    if "s" not in single:
        raise SipParseError("SDP has no s= line", 400)
    return SessionDescription(
        version=int(single["v"]), origin=origin, session_name=single["s"],
        information=session.information, uri=single.get("u"), emails=tuple(emails),
        phones=tuple(phones),
        connection=session.connections[0] if session.connections else None,
        bandwidths=tuple(session.bandwidths), timings=tuple(timings), zone=single.get("z"),
        key=session.key, attributes=tuple(session.attributes), extra=tuple(session.extra),
        media=tuple(media),
    )


# --- offer / answer (RFC 3264) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Codec:
    """A codec we can send and receive. ``payload_type`` is its static type
    (RFC 3551 §6), or None for a dynamic one. ``fmtp`` is the parameters we
    would offer it with. Matching against an offer uses name
    (case-insensitive), clock rate and channels, never the number, since
    dynamic numbers are the offerer's choice (RFC 3264 §6.1)."""

    name: str
    clock_rate: int
    channels: int = 1
    payload_type: int | None = None
    fmtp: str | None = None

    def matches(self, rtpmap: RtpMap) -> bool:
        return (
            rtpmap.clock_rate == self.clock_rate
            and (rtpmap.channels or 1) == self.channels
            and rtpmap.encoding_name.lower() == self.name.lower()
        )


PCMU: Final = Codec(name="PCMU", clock_rate=8000, payload_type=0)
PCMA: Final = Codec(name="PCMA", clock_rate=8000, payload_type=8)
#: RFC 4733 DTMF events. Events 0-15 are the keypad and 16 is hook-flash (§3.2).
TELEPHONE_EVENT: Final = Codec(name="telephone-event", clock_rate=8000, fmtp="0-16")

#: Attributes that carry transport addresses of the original endpoint: RTCP
#: (RFC 3605) and ICE (RFC 8839). A relay that rewrites c=/m= without being an
#: ICE agent must drop them. Otherwise the far end sends RTCP, or runs
#: connectivity checks, to the endpoint directly and bypasses the relay.
ADDRESS_ATTRIBUTES: Final = frozenset(
    ("rtcp", "candidate", "remote-candidates", "end-of-candidates",
     "ice-ufrag", "ice-pwd", "ice-options", "ice-lite", "ice-mismatch")
)


def _answer_audio(
    offered: MediaDescription, supported: Sequence[Codec], port: int, direction: Direction
) -> MediaDescription | None:
    """The accepted form of one audio stream, or None when no voice codec is shared."""
    rtpmaps = offered.rtpmaps
    fmtps = offered.fmtps
    formats: list[str] = []
    attrs: list[Attribute] = []
    has_voice = False
    for fmt in offered.formats:
        rtpmap = _encoding(fmt, rtpmaps)
        if rtpmap is None or not any(c.matches(rtpmap) for c in supported):
            continue
        formats.append(fmt)
        attrs.append(Attribute(name="rtpmap", value=str(rtpmap)))
        if fmt in fmtps:
            attrs.append(Attribute(name="fmtp", value=f"{fmt} {fmtps[fmt]}"))
        has_voice = has_voice or rtpmap.encoding_name.lower() != "telephone-event"
    if not has_voice:  # DTMF alone is no call
        return None
    ptime = offered.get("ptime")
    if ptime is not None:
        attrs.append(Attribute(name="ptime", value=ptime))
    attrs.append(Attribute(name=direction.value))
    return MediaDescription(media="audio", port=port, proto=offered.proto,
                            formats=tuple(formats), attributes=tuple(attrs))


def answer(
    offer: SessionDescription, supported: Sequence[Codec], *, origin: Origin, address: str,
    port: int, direction: Direction = Direction.SENDRECV,
    protos: Collection[str] = ("RTP/AVP",), session_name: str = "-",
) -> SessionDescription:
    """Answer an offer as RFC 3264 §6 requires.

    The answer has one m= line per offered one, in the same order (§6). We
    have one RTP port, so we accept the first audio stream that uses one of
    ``protos`` and shares a codec with us. We answer it with the offered
    formats we support, in the offerer's order and under the offerer's
    numbers, together with their fmtp and the offered ptime. Every other
    stream is rejected with port 0 and its first format (§6). Telephone-event
    is kept like any other codec, but it is not enough on its own.

    The answer's direction is the reverse of the offered one (§6.1), limited
    by ``direction``. Pass ``Direction.SENDONLY`` to put the peer on hold in
    the answer itself. The t= line is copied, as §5 requires.
    """
    out: list[MediaDescription] = []
    port_used = False
    for m in offer.media:
        accepted = None
        if not port_used and m.media == "audio" and m.port != 0 and m.proto in protos:
            mirrored = offer.direction_of(m).reversed()
            answered = Direction.from_flags(send=mirrored.sends and direction.sends,
                                            receive=mirrored.receives and direction.receives)
            accepted = _answer_audio(m, supported, port, answered)
        if accepted is None:
            out.append(MediaDescription(media=m.media, port=0, proto=m.proto,
                                        formats=m.formats[:1]))
        else:
            port_used = True
            out.append(accepted)
    return SessionDescription(
        origin=origin, session_name=session_name, connection=Connection.for_address(address),
        timings=offer.timings or (Timing(),), media=tuple(out),
    )


def _drop(attrs: tuple[Attribute, ...], names: Collection[str]) -> tuple[Attribute, ...]:
    return tuple(a for a in attrs if a.name not in names) if names else attrs


def with_connection(
    sdp: SessionDescription, address: str,
    ports: Sequence[int] | Callable[[int, MediaDescription], int], *,
    bump_version: bool = False, drop_attributes: Collection[str] = ADDRESS_ATTRIBUTES,
) -> SessionDescription:
    """Return a copy pointing at a media relay. The copy has ``address`` in
    every c= line, with IP4 or IP6 taken from the address. Each stream's port
    comes from ``ports``, which is either one port per m= line or a function
    of (index, stream).

    Rejected streams (port 0) stay rejected (RFC 3264 §8.2). Their entry in
    ``ports`` is ignored and the function is not called for them. Attributes
    in ``drop_attributes`` are removed at both levels, because they would
    still point at the original endpoint. ``bump_version`` increments the
    o= version, which RFC 3264 §8 requires whenever a changed description is
    sent within a session.
    """
    if isinstance(ports, Sequence) and len(ports) != len(sdp.media):
        raise ValueError(f"{len(ports)} ports for {len(sdp.media)} media descriptions")
    conn = Connection.for_address(address)
    media: list[MediaDescription] = []
    for i, m in enumerate(sdp.media):
        if m.port == 0:
            media.append(m)
            continue
        port = ports[i] if isinstance(ports, Sequence) else ports(i, m)
        attrs = _drop(m.attributes, drop_attributes)
        connections = (conn,) if m.connections else ()
        media.append(dataclasses.replace(m, port=port, connections=connections, attributes=attrs))
    needs_session = sdp.connection is not None or any(m.port and not m.connections for m in media)
    session_attrs = _drop(sdp.attributes, drop_attributes)
    origin = sdp.origin
    if bump_version:
        origin = dataclasses.replace(origin, sess_version=origin.sess_version + 1)
    return dataclasses.replace(
        sdp, origin=origin, connection=conn if needs_session else None,
        attributes=session_attrs, media=tuple(media),
    )


def is_hold(sdp: SessionDescription) -> bool:
    """Whether a re-offer puts the call on hold (RFC 3264 §8.4): every active
    stream is sendonly or inactive, or has the RFC 2543 hold address c=0.0.0.0.
    A description with no active stream is a rejection, not a hold."""
    active = [m for m in sdp.media if m.port != 0]
    for m in active:
        conn = sdp.connection_of(m)
        held_address = conn is not None and conn.address == "0.0.0.0"
        if not held_address and sdp.direction_of(m) not in (Direction.SENDONLY,
                                                            Direction.INACTIVE):
            return False
    return bool(active)
