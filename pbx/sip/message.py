"""SIP requests and responses: parse from bytes, build, write back to bytes.

Theory of operation
-------------------
`parse_message` splits the start line and the header lines, unfolds
continuation lines, and stores each header line as (key, name, value, raw)
in received order. ``raw`` is the exact received line, so a header nobody
touched is written back byte for byte; editing a header drops its ``raw`` and
it is written as ``Name: value``. Typed views (Via, From, To, CSeq...) are
parsed from the stored text on first use and cached until the headers change
[sippy, h11].

The headers every transaction needs (top Via, From, To, Call-ID, CSeq,
Max-Forwards) are checked while parsing, so a malformed one is answered
with 400 at once, and ``SipParseError.answerable`` can tell the transport
whether a response could be routed at all: a request without a usable Via
cannot be answered and is dropped (RFC 3261 §18.2.1).

Content-Length is never trusted on output: `to_bytes` writes the body's real
length, in place of the received header when there was one. On input, a
second Content-Length (or ``l``) line is refused with 400 unless it repeats
the first, which is then taken as one (`_check_second_content_length`): two
lengths are two places the body may end, where a smuggled request hides.

Limits [h11]: `ParseLimits` bounds the message size and the number of
headers; every limit has a status to answer with (513 Message Too Large,
413 for a declared body over the limit).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from pbx.sip.errors import SipParseError
from pbx.sip.headers import (
    LIST_HEADERS,
    TOKEN,
    CSeq,
    Event,
    NameAddr,
    SubscriptionState,
    ValueWithParams,
    Via,
    canonical_name,
    header_key,
    parse_non_negative_int,
    parse_token_list,
    split_list,
)
from pbx.sip.status import reason_phrase
from pbx.sip.uri import SipUri, TelUri, is_simple_sip_uri, parse_request_uri

SIP_VERSION = "SIP/2.0"
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class ParseLimits:
    """Bounds on what one message may cost us.

    64 KiB is the largest UDP payload in practice and what RFC 3261 §18.1.1
    lets a TCP message grow to before we would have to buffer without end;
    100 headers is several times what any phone sends (a real INVITE has
    15-30), and stops a header flood from costing memory and CPU.
    """

    max_message_bytes: int = 65536
    max_headers: int = 100


DEFAULT_LIMITS = ParseLimits()

# A control character other than HTAB, or a CR left inside a line once the
# section is split into lines (a CR always ends one, or is stray): no
# SIP header may hold one (TEXT-UTF8char = %x21-7E / UTF8-NONASCII, plus LWS),
# except escaped in a quoted-pair ("\\" %x00-09 / %x0B-0C / %x0E-7F, RFC 3261
# §25.1), which the look-behind lets through (a backslash outside quotes
# slips by too: this is a cheap screen, not the grammar). A NUL let through
# would truncate the value in any C library down the line.
_CONTROL = re.compile(r"(?<!\\)[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r")
_PRINTABLE_ASCII = bytes(range(0x20, 0x7F))


_Line = tuple[str, str, str, str | None]
"""One header line: (lookup key, name as written, value, raw line or None once edited).

Plain tuples: eleven or so are made for every message received, and a tuple
literal is several times cheaper than any object.
"""


class Headers:
    """An ordered, case-insensitive multi-map of header lines.

    One entry per header *line*; a list header with several comma-separated
    values on one line stays one entry until a typed view splits it.
    """

    __slots__ = ("_call_id", "_cseq", "_entries", "_first", "_from", "_to", "_typed", "_via")

    def __init__(self, entries: Iterable[tuple[str, str]] = ()) -> None:
        self._entries: list[_Line] = [
            (header_key(name), name, value, None) for name, value in entries
        ]
        self._typed: dict[str, Any] = {}  # typed views by key, see Message
        # The five views every message needs, each in a field of its own: a
        # transaction reads them a dozen times a request, and a field costs a
        # load where a `_typed` lookup cost a dictionary search.
        self._via: Via | None = None
        self._from: NameAddr | None = None
        self._to: NameAddr | None = None
        self._call_id: str | None = None
        self._cseq: CSeq | None = None
        # key -> first line with that key; rebuilt lazily after any change.
        self._first: dict[str, _Line] | None = None

    @staticmethod
    def _from_parsed(entries: list[_Line], first: dict[str, _Line] | None = None) -> Headers:
        headers = Headers()
        headers._entries = entries
        headers._first = first
        return headers

    def _changed(self, key: str, *, first_kept: bool = False) -> None:
        """Forget what was derived from header `key`; other typed views stay valid.

        ``first_kept``: the caller has brought the first-line index up to date
        itself (appending a line, replacing a first one), so it need not be
        rebuilt on the next lookup.
        """
        typed = self._typed
        if typed:
            typed.pop(key, None)
            typed.pop(key + "*", None)
        if key == "via":
            self._via = None
        elif key == "from":
            self._from = None
        elif key == "to":
            self._to = None
        elif key == "call-id":
            self._call_id = None
        elif key == "cseq":
            self._cseq = None
        if not first_kept:
            self._first = None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """(name as written, value) pairs in order."""
        for _, name, value, _ in self._entries:
            yield name, value

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = header_key(name)
        return any(entry[0] == key for entry in self._entries)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value of the first line of this header."""
        first = self._first
        if first is None:
            first = {}
            for entry in self._entries:
                first.setdefault(entry[0], entry)
            self._first = first
        found = first.get(name) or first.get(header_key(name))
        return default if found is None else found[2]

    def get_all(self, name: str) -> list[str]:
        """The value of every line of this header, in order (not comma-split)."""
        key = header_key(name)
        return [entry[2] for entry in self._entries if entry[0] == key]

    def values(self, name: str) -> list[str]:
        """Every value of this header: lines in order, list headers split on commas."""
        key = header_key(name)
        lines = [entry[2] for entry in self._entries if entry[0] == key]
        if key not in LIST_HEADERS:
            return lines
        values: list[str] = []
        for line in lines:
            values.extend(split_list(line))
        return values

    def add(self, name: str, value: str) -> None:
        """Append a header line at the end."""
        key = header_key(name)
        entry = (key, canonical_name(name), value, None)
        self._entries.append(entry)
        first = self._first
        if first is not None and key not in first:
            first[key] = entry
        self._changed(key, first_kept=True)

    def add_first(self, name: str, value: str) -> None:
        """Insert a header line before every other line (a new top Via or Record-Route)."""
        key = header_key(name)
        index = next((i for i, e in enumerate(self._entries) if e[0] == key), 0)
        self._entries.insert(index, (key, canonical_name(name), value, None))
        self._changed(key)

    def set(self, name: str, value: str) -> None:
        """Replace every line of this header by one, where the first one stood."""
        key = header_key(name)
        for index, entry in enumerate(self._entries):
            if entry[0] == key:
                self._entries[index] = (key, entry[1], value, None)
                self._entries[index + 1 :] = [e for e in self._entries[index + 1 :]
                                              if e[0] != key]
                break
        else:
            self._entries.append((key, canonical_name(name), value, None))
        self._changed(key)

    def set_first_value(self, name: str, value: str) -> None:
        """Replace the value of the first line of this header, leaving the others.

        For a line holding one value (most do), this is how a proxy or the
        transport edits the top Via without rebuilding the header list.
        """
        key = header_key(name)
        entries = self._entries
        for index, entry in enumerate(entries):
            if entry[0] == key:
                replaced = (key, entry[1], value, None)
                entries[index] = replaced
                first = self._first
                if first is not None:
                    first[key] = replaced
                self._changed(key, first_kept=True)
                return
        raise KeyError(name)

    def set_all(self, name: str, values: Iterable[str]) -> None:
        """Replace every line of this header by one line per value, in place."""
        key = header_key(name)
        new: list[_Line] = [(key, canonical_name(name), value, None) for value in values]
        index = next((i for i, e in enumerate(self._entries) if e[0] == key), None)
        rest = [e for e in self._entries if e[0] != key]
        if index is None:
            index = len(rest)
        self._entries = rest[:index] + new + rest[index:]
        self._changed(key)

    def remove(self, name: str) -> None:
        key = header_key(name)
        self._entries = [e for e in self._entries if e[0] != key]
        self._changed(key)

    def copy(self) -> Headers:
        return Headers._from_parsed(list(self._entries))

    def _typed_value(self, key: str, parse: Callable[[Headers], _T]) -> _T:
        try:
            return self._typed[key]  # type: ignore[no-any-return]  # stored by this method
        except KeyError:
            value = parse(self)
            self._typed[key] = value
            return value

    def _lines(self, content_length: int) -> list[str]:
        """Header lines for the wire; Content-Length, where it stood, says the real length."""
        lines: list[str] = []
        written = False
        for key, name, value, raw in self._entries:
            if key == "content-length":
                if not written:
                    # The received line itself when it already tells the truth,
                    # so that an untouched message goes back byte for byte.
                    if raw is not None and value == str(content_length):
                        lines.append(raw)
                    else:
                        lines.append(f"{name}: {content_length}")
                    written = True
            else:
                lines.append(raw if raw is not None else f"{name}: {value}")
        if not written:
            lines.append(f"Content-Length: {content_length}")
        return lines


def _top_via(headers: Headers) -> Via:
    line = headers.get("via")
    if line is None:
        raise SipParseError("missing Via", answerable=False)
    if "," not in line:
        first = line  # one value (nearly always): no list to split it into
    else:
        first = line.split(",", 1)[0] if '"' not in line else split_list(line)[0]
    try:
        return Via.parse(first)
    except SipParseError as error:
        raise SipParseError(error.reason, answerable=False) from None


_PARSED_CACHE_SIZE = 4096


class _Generations:
    """Parsed values by the text they were parsed from, shared between messages.

    A phone repeats the same To and Contact in every REGISTER and the same
    From in both requests of a challenge round (and a call's requests repeat
    theirs): parsing each text once saves a good part of a registration's
    parse. Shared values are never changed in place (tuples; a NameAddr
    parses its URI lazily, which gives the same result for the same text,
    and everything else builds new objects: `NameAddr.with_param`).

    Bounded, in two generations: when the new one holds `_PARSED_CACHE_SIZE`
    values it becomes the old one and a new one starts; a value found in the
    old one moves to the new. Every From of a REGISTER is new (its tag
    changes with each Call-ID), and clearing a single table every 4,096 of
    those also threw away the To and Contact that each phone repeats; what is
    used again within a generation stays. A flood of distinct values costs
    what it would have without the cache. Values are held as Any: compiled,
    a tuple found here stays boxed instead of being unpacked and rebuilt.
    """

    __slots__ = ("new", "old")

    def __init__(self) -> None:
        self.new: dict[str, Any] = {}
        self.old: dict[str, Any] = {}

    def get(self, text: str) -> Any:
        found = self.new.get(text)
        if found is None:
            found = self.old.get(text)
            if found is not None:
                self.put(text, found)
        return found

    def put(self, text: str, value: Any) -> None:
        if len(self.new) >= _PARSED_CACHE_SIZE:
            self.old = self.new
            self.new = {}
        self.new[text] = value

    def __contains__(self, text: object) -> bool:
        return text in self.new or text in self.old

    def clear(self) -> None:
        self.new.clear()
        self.old.clear()


_NAME_ADDRS: Final = _Generations()
_CSEQS: dict[str, CSeq] = {}
"""CSeq values by their text, as `_Generations` (one table, cleared when full: a
REGISTER's CSeq is one of a handful of texts)."""


def _name_addr(value: str, what: str) -> NameAddr:
    found: NameAddr | None = _NAME_ADDRS.get(value)
    if found is None:
        found = NameAddr.parse(value, what)
        _NAME_ADDRS.put(value, found)
    return found


def _required(headers: Headers, name: str) -> str:
    value = headers.get(name)
    if value is None or not value.strip():
        raise SipParseError(f"missing {canonical_name(name)}")
    return value


_NO_HEADERS_YET = Headers()
"""Stands in while a received message's start line is read; its real headers
replace it straight after (`_parse`). Never mutated."""


class Message:
    """What requests and responses share: headers, body, typed views."""

    __slots__ = ("body", "headers")

    def __init__(self, headers: Headers | None = None, body: bytes = b"") -> None:
        self.headers = headers if headers is not None else Headers()
        self.body = body

    # Typed views, parsed on first use. Each raises SipParseError if malformed.

    @property
    def vias(self) -> list[Via]:
        return self.headers._typed_value(
            "via*", lambda h: [Via.parse(v) for v in h.values("via")])

    # The five views every message needs are kept in fields of `Headers`
    # (no closure, no dictionary): they are on the hot path of every transaction.

    @property
    def top_via(self) -> Via:
        headers = self.headers
        via = headers._via
        if via is None:
            via = headers._via = _top_via(headers)
        return via

    def set_top_via(self, via: Via, text: str | None = None) -> None:
        """Replace the top Via value by `via`, which becomes its parsed view.

        For what a receiver or a proxy writes into the top Via (RFC 3581
        ``received``/``rport``, `pbx.sip.via`): the value is not parsed again.
        ``text`` is the new first Via line, for a caller that knows that line
        held the top Via alone and has the wire form cheaper than
        ``str(via)``. Other Via values stay as they are; several values on
        the first line are split onto lines of their own.
        """
        headers = self.headers
        if text is not None:
            headers.set_first_value("via", text)
        else:
            line = headers.get("via") or ""
            if "," not in line:
                headers.set_first_value("via", str(via))
            else:
                values = headers.values("via")
                values[0] = str(via)
                headers.set_all("via", values)
        headers._via = via

    @property
    def from_addr(self) -> NameAddr:
        headers = self.headers
        addr = headers._from
        if addr is None:
            addr = headers._from = _name_addr(_required(headers, "from"), "From")
        return addr

    @property
    def to_addr(self) -> NameAddr:
        headers = self.headers
        addr = headers._to
        if addr is None:
            addr = headers._to = _name_addr(_required(headers, "to"), "To")
        return addr

    @property
    def call_id(self) -> str:
        headers = self.headers
        call_id = headers._call_id
        if call_id is None:
            call_id = headers._call_id = _required(headers, "call-id").strip()
        return call_id

    @property
    def cseq(self) -> CSeq:
        headers = self.headers
        cseq = headers._cseq
        if cseq is None:
            value = _required(headers, "cseq")
            cseq = _CSEQS.get(value)
            if cseq is None:
                cseq = CSeq.parse(value)
                if len(_CSEQS) >= _PARSED_CACHE_SIZE:
                    _CSEQS.clear()
                _CSEQS[value] = cseq
            headers._cseq = cseq
        return cseq

    @property
    def contacts(self) -> list[NameAddr]:
        typed = self.headers._typed
        contacts: list[NameAddr] | None = typed.get("contact")
        if contacts is None:  # every REGISTER reads them: no closure, as for the five above
            contacts = typed["contact"] = [
                _name_addr(value, "Contact") for value in self.headers.values("contact")]
        return contacts

    @property
    def routes(self) -> list[NameAddr]:
        return self._address_list("route", "Route")

    @property
    def record_routes(self) -> list[NameAddr]:
        return self._address_list("record-route", "Record-Route")

    @property
    def reply_to(self) -> NameAddr | None:
        value = self.headers.get("reply-to")
        return None if value is None else NameAddr.parse(value, "Reply-To")

    def _address_list(self, key: str, what: str) -> list[NameAddr]:
        return self.headers._typed_value(
            key,
            lambda h: [_name_addr(v, what) for v in h.values(key)],
        )

    @property
    def max_forwards(self) -> int | None:
        value = self.headers.get("max-forwards")
        return None if value is None else parse_non_negative_int(value, "Max-Forwards", 255)

    @property
    def content_length(self) -> int | None:
        """The *declared* Content-Length (the body's real length is ``len(body)``)."""
        value = self.headers.get("content-length")
        return None if value is None else parse_non_negative_int(value, "Content-Length")

    @property
    def content_type(self) -> ValueWithParams | None:
        value = self.headers.get("content-type")
        if value is None:
            return None
        parsed = ValueWithParams.parse(value, "Content-Type")
        if "/" not in parsed.value:
            raise SipParseError(f"bad Content-Type {value[:40]!r}")
        return ValueWithParams(value=parsed.value.lower(), params=parsed.params)

    @property
    def expires(self) -> int | None:
        value = self.headers.get("expires")
        return None if value is None else parse_non_negative_int(value, "Expires")

    @property
    def require(self) -> list[str]:
        return parse_token_list(self.headers.values("require"), "Require")

    @property
    def proxy_require(self) -> list[str]:
        return parse_token_list(self.headers.values("proxy-require"), "Proxy-Require")

    @property
    def supported(self) -> list[str]:
        return parse_token_list(self.headers.values("supported"), "Supported")

    @property
    def unsupported(self) -> list[str]:
        return parse_token_list(self.headers.values("unsupported"), "Unsupported")

    @property
    def allow(self) -> list[str]:
        return parse_token_list(self.headers.values("allow"), "Allow")

    @property
    def event(self) -> Event | None:
        value = self.headers.get("event")
        return None if value is None else Event.parse(value)

    @property
    def subscription_state(self) -> SubscriptionState | None:
        value = self.headers.get("subscription-state")
        return None if value is None else SubscriptionState.parse(value)

    def _start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The message as sent on the wire; Content-Length is the body's real length."""
        lines = self.headers._lines(len(self.body))
        text = "\r\n".join([self._start_line(), *lines, "", ""])
        return text.encode() + self.body if self.body else text.encode()

    def __bytes__(self) -> bytes:
        return self.to_bytes()


class Request(Message):
    """A SIP request (RFC 3261 §7.1).

    A received Request-URI is validated while parsing but only turned into a
    `SipUri` when somebody reads ``uri``: relaying and matching mostly don't.
    """

    __slots__ = ("_uri", "_uri_text", "method")

    def __init__(
        self,
        method: str,
        uri: SipUri | TelUri | str,
        headers: Headers | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        # A Request-URI given as text is kept as text and parsed on first use.
        self._uri: SipUri | TelUri | None = None if isinstance(uri, str) else uri
        self._uri_text = uri if isinstance(uri, str) else uri.text

    @classmethod
    def _received(cls, method: str, uri_text: str) -> Request:
        """A request whose Request-URI text is already known to be valid."""
        return Request(method, uri_text, _NO_HEADERS_YET)

    @property
    def uri(self) -> SipUri | TelUri:
        if self._uri is None:
            self._uri = parse_request_uri(self._uri_text)
        return self._uri

    @uri.setter
    def uri(self, uri: SipUri | TelUri) -> None:
        self._uri = uri
        self._uri_text = uri.text

    def _start_line(self) -> str:
        return f"{self.method} {self._uri_text} {SIP_VERSION}"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    """A SIP response (RFC 3261 §7.2)."""

    __slots__ = ("reason", "status")

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Headers | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = reason_phrase(status) if reason is None else reason

    def _start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


# ---------------------------------------------------------------- parsing


def _parse(
    data: bytes,
    *,
    datagram: bool = True,
    limits: ParseLimits = DEFAULT_LIMITS,
) -> Request | Response:
    """Parse one whole SIP message.

    ``datagram`` selects the framing rule of RFC 3261 §18.3: in a datagram
    a missing Content-Length means "the rest of the datagram"; a stream
    framer (`pbx.sip.framing`) hands over exactly one message whose
    Content-Length it has already honoured. Raises only `SipParseError`.
    """
    if len(data) > limits.max_message_bytes:
        raise SipParseError("Message Too Large", 513, answerable=False)
    end = data.find(b"\r\n\r\n")
    lines: list[str] | None = None
    if end >= 0:
        # The common case, checked in two C calls: a header section of
        # printable ASCII and CRLF line ends. What is left of it once the
        # printable characters are taken out must be just the line ends the
        # split found: a control character, a tab, a stray CR or LF, or any
        # UTF-8 would be more, and takes the long way below. (Screening only
        # the lines not in `_LINES`, by str.isprintable, cost as much: it
        # costs more a character than this does a byte, and a REGISTER's
        # Via and Authorization are half its header section; the figures:
        # docs/benchmarks.md, "Why the hot path is written as it is".)
        head_bytes, rest = data[:end], data[end + 4 :]
        unusual = head_bytes.translate(None, _PRINTABLE_ASCII)
        if unusual.isascii():
            lines = head_bytes.decode("ascii").split("\r\n")
            if len(unusual) != 2 * (len(lines) - 1):
                lines = None
    # Lines of printable ASCII, split at CRLFs: these may be remembered.
    printable = lines is not None
    if lines is None:
        lines, rest = _screened_lines(data, end)
    start_line = lines[0]
    known = _REQUEST_LINES.get(start_line) if printable else None
    message: Request | Response
    if known is not None:
        message = Request._received(known[0], known[1])
    else:
        message = _parse_start_line(
            start_line.strip(" \t") if start_line[:1] != " " else start_line)
        if (printable and isinstance(message, Request)
                and len(start_line) <= _LONGEST_REMEMBERED_LINE):
            # Only a request line that parsed without a word of complaint gets
            # here: the same text needs no second parse (docs/benchmarks.md,
            # "Why the hot path is written as it is").
            if len(_REQUEST_LINES) >= _PARSED_CACHE_SIZE:
                _REQUEST_LINES.clear()
            _REQUEST_LINES[start_line] = (message.method, message._uri_text)
    entries, first = _parse_header_lines(lines, limits, printable)
    message.headers = Headers._from_parsed(entries, first)
    try:
        _check_and_frame(message, rest, datagram)
    except SipParseError as error:
        if isinstance(message, Response):
            error.answerable = False
        raise
    return message


def _screened_lines(data: bytes, end: int) -> tuple[list[str], bytes]:
    """Header lines and what follows them, by the exact rules: any line ends, UTF-8, tabs.

    ``end`` is where ``data.find(b"\\r\\n\\r\\n")`` found the blank line (-1: none).
    Raises `SipParseError` for text that is not UTF-8 or holds a control character.
    """
    if end >= 0:
        head_bytes, rest = data[:end], data[end + 4 :]
        separator = "\r\n"
    else:
        end = data.find(b"\n\n")  # bare-LF messages: lenient, as many stacks are
        if end < 0:
            head_bytes, rest = data.rstrip(b"\r\n"), b""
        else:
            head_bytes, rest = data[:end], data[end + 2 :]
        # No blank line at all: CRLF lines stay CRLF lines (a stray CR must
        # not end up in every value); the mixed-ends rule below still applies.
        separator = "\r\n" if end < 0 and b"\r\n" in head_bytes else "\n"
    try:
        head = head_bytes.decode()
    except UnicodeDecodeError:
        # A syntax error like any other (TEXT-UTF8, RFC 3261 §25.1): answered
        # when the Via is usable, which `parse_message` decides.
        raise SipParseError("header section is not UTF-8") from None
    if separator == "\r\n" and head.count("\n") != head.count("\r\n"):
        head = head.replace("\r\n", "\n")  # mixed line ends: treat all as bare LF
        separator = "\n"
    lines = head.split(separator)
    # The screen: a line with nothing unprintable (no control character, no
    # CR left after the split, no tab) needs no closer look; the rare one
    # that has any gets the exact rule above, line by line: a CR still in a
    # line after the split is a stray one, even where it stands before an LF
    # ("\r\r\n" in a header section with mixed line ends). One C call a line.
    if not all(map(str.isprintable, lines)) and any(
            _CONTROL.search(line) is not None for line in lines):
        raise SipParseError("control character in header section")
    return lines, rest


_METHODS = frozenset({"INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "PRACK",
                      "SUBSCRIBE", "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE"})
"""Methods of the RFCs the PBX knows: tokens without a regex to say so."""

_SIMPLE_REQUEST_URIS: set[str] = set()
"""Request-URIs already found valid (`is_simple_sip_uri`): every REGISTER of an
office names the same one, and a call the same few. Bounded like the caches above."""


def _parse_start_line(line: str) -> Request | Response:
    if line.startswith("SIP/") or line[:4].upper() == "SIP/":
        parts = line.split(" ", 2)
        if len(parts) < 2:
            raise SipParseError(f"bad status line {line[:60]!r}", answerable=False)
        version, code = parts[0], parts[1]
        if version != SIP_VERSION and version.upper() != SIP_VERSION:
            raise SipParseError(f"unsupported version {version[:20]!r}", 505, answerable=False)
        if len(code) != 3 or not (code.isascii() and code.isdigit()) or code[0] == "0":
            raise SipParseError(f"bad status code {code[:10]!r}", answerable=False)
        return Response(int(code), parts[2] if len(parts) == 3 else "", _NO_HEADERS_YET)
    parts = line.split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise SipParseError(f"bad request line {line[:80]!r}", answerable=False)
    method, uri_text, version = parts
    if method not in _METHODS and not TOKEN.fullmatch(method):
        raise SipParseError(f"bad method {method[:20]!r}", answerable=False)
    uri_error: SipParseError | None = None
    if uri_text not in _SIMPLE_REQUEST_URIS:
        if is_simple_sip_uri(uri_text):
            if len(_SIMPLE_REQUEST_URIS) >= _PARSED_CACHE_SIZE:
                _SIMPLE_REQUEST_URIS.clear()
            _SIMPLE_REQUEST_URIS.add(uri_text)
        else:
            try:
                parse_request_uri(uri_text)
            except SipParseError as error:
                uri_error = error
    if version != SIP_VERSION and version.upper() != SIP_VERSION:
        if not version.upper().startswith("SIP/"):
            raise SipParseError(f"bad request line {line[:80]!r}", answerable=False)
        raise _WithLine(SipParseError(f"unsupported version {version[:20]!r}", 505), method)
    if uri_error is not None:
        raise _WithLine(uri_error, method)
    return Request._received(method, uri_text)


class _WithLine(Exception):
    """Carries a start-line error until the headers are read, to know if it is answerable."""

    def __init__(self, error: SipParseError, method: str) -> None:
        self.error = error
        self.method = method


# Header name as received -> lookup key. Names phones send are few; caching
# them skips validation and lowering on the hot path. Bounded: past the cap,
# unknown spellings are still parsed, just not remembered.
_KEY_OF_NAME: Final[dict[str, tuple[str, str]]] = {}
_KEY_CACHE_LIMIT: Final = 2000


def _key_of(name: str) -> tuple[str, str]:
    """(lookup key, name without trailing blanks) of a received header name."""
    known = _KEY_OF_NAME.get(name)
    if known is None:
        stripped = name.rstrip(" \t")
        if not TOKEN.fullmatch(stripped):
            raise SipParseError(f"bad header name {stripped[:40]!r}")
        known = (header_key(stripped), stripped)
        if len(_KEY_OF_NAME) < _KEY_CACHE_LIMIT:
            _KEY_OF_NAME[name] = known
    return known


_LINES: Final = _Generations()
"""Header lines by their text, as `_parse_header_lines` stored them, shared between messages.

A phone sends the same Max-Forwards, To, Contact, Expires, User-Agent,
Content-Length... in every REGISTER, and a call's requests repeat theirs:
one dictionary lookup stands for splitting the line, finding its key,
stripping its value and building its entry, for 9 lines of the 11 of a
REGISTER (docs/benchmarks.md, "Why the hot path is written as it is").
Only lines of the exact fast path go in (printable ASCII, no fold), and
never the headers that differ in every request (`_UNSHARED_KEYS`). The
entries are tuples: immutable, as a shared value must be.
"""
_REQUEST_LINES: Final[dict[str, tuple[str, str]]] = {}
"""(method, Request-URI) by the request line they were found valid in."""
_UNSHARED_KEYS: Final = frozenset({"via", "authorization", "proxy-authorization", "from",
                                   "call-id"})
"""Headers not worth remembering: new in every request (a branch, a digest
response) or in every call (the From tag, the Call-ID). The last two repeat
once in a challenge round, but remembering them filled the table with lines
used twice: it turned over every ~2,000 registrations, and its lookups missed
the CPU caches: a registration is faster without them (docs/benchmarks.md,
"Why the hot path is written as it is")."""
_LONGEST_REMEMBERED_LINE: Final = 256
"""Longer lines are not kept: the caches are bounded in bytes, not only in lines."""


def _parse_header_lines(
    lines: list[str], limits: ParseLimits, printable: bool
) -> tuple[list[_Line], dict[str, _Line]]:
    """The header lines after the start line: (entries in order, first entry by key).

    ``printable``: the lines passed the fast screen of `_parse` (printable
    ASCII, split at CRLFs); those seen before are taken from `_LINES`, and
    those that parse may be kept there for the next message.
    """
    # Entries are handled as Any here: compiled, a `_Line` in a variable of
    # its own type is unpacked into a C struct, and a tuple found in `_LINES`
    # would be rebuilt twice (for `entries` and `first`) on its way through.
    entries: list[Any] = []
    first: dict[str, Any] = {}
    folded = False
    if len(lines) > limits.max_headers + 1 and sum(
        1 for line in lines if line[:1] not in (" ", "\t")
    ) > limits.max_headers + 1:
        raise SipParseError(f"more than {limits.max_headers} headers", 513)
    for index in range(1, len(lines)):
        line = lines[index]
        # Lines of `_UNSHARED_KEYS`, as phones spell them, are never kept:
        # looking for one would be two dictionary misses (mostly cache misses
        # on the keys probed) for nothing (docs/benchmarks.md, "Why the hot
        # path is written as it is").
        entry: Any = (_LINES.get(line) if printable and not (
            line.startswith("Via:") or line.startswith("Authorization:")
            or line.startswith("From:") or line.startswith("Call-ID:")) else None)
        if entry is None:
            entry = _parse_header_line(line, entries, printable)
            if entry is None:  # a fold, joined to the line above
                folded = True
                continue
        entries.append(entry)
        # A header seen before: only then can it be a second Content-Length.
        # (`is`, not ==: the entries are boxed objects here, see above; two
        # lines of the same text may share one entry from `_LINES`: equal anyway.)
        earlier = first.setdefault(entry[0], entry)
        if earlier is not entry and entry[0] == "content-length":
            _check_second_content_length(earlier[2], entry[2])
    if folded:
        # Rare: a fold replaced a line that `first` may point to. Built again
        # rather than patched (compiled, a tuple has no identity to compare),
        # and the Content-Lengths compared again as unfolded.
        first = {}
        for kept in entries:
            earlier = first.setdefault(kept[0], kept)
            if earlier is not kept and kept[0] == "content-length":
                _check_second_content_length(earlier[2], kept[2])
    return entries, first


def _check_second_content_length(first_value: str, value: str) -> None:
    """Refuse a second Content-Length (or ``l``) line unless it repeats the first.

    Two lengths are two places where the body might end: one element in a
    chain framing by the first and another by the last is how a request is
    smuggled inside another's body. The same value twice is no ambiguity,
    and is taken as one line (as RFC 7230 §3.3.2 lets an HTTP recipient do;
    RFC 3261 says nothing); `Headers._lines` writes a single one back. The
    stream framer (`pbx.sip.framing`) applies the same rule.
    """
    if value != first_value:
        raise SipParseError(
            f"two different Content-Length values, {first_value[:20]!r} and {value[:20]!r}")


def _parse_header_line(line: str, entries: list[Any], remember: bool) -> Any:
    """The `_Line` of one header line, or None for a fold, joined to the last of `entries`."""
    if line[:1] in (" ", "\t"):
        # A folded continuation line (RFC 3261 §7.3.1): part of the line above.
        if not entries:
            raise SipParseError("continuation line before any header")
        key, name, value, raw = entries[-1]
        # The raw line is written back with CRLF (`Message.to_bytes`), so a
        # fold received with a bare LF is kept with CRLF too.
        entries[-1] = (key, name, f"{value} {line.strip()}".strip(), f"{raw}\r\n{line}")
        return None
    # "Name: value" is how nearly every line is written: split there, the
    # value needs no copy to strip it. Any other spelling splits at the colon.
    colon = line.find(":")
    if colon < 0:
        raise SipParseError(f"header line without colon {line[:40]!r}")
    name = line[:colon]
    value = line[colon + 2 :] if line[colon + 1 : colon + 2] == " " else line[colon + 1 :]
    known = _KEY_OF_NAME.get(name)
    key, name = known if known is not None else _key_of(name)
    entry: Any = (key, name, value.strip(" \t"), line)  # boxed once, see above
    if remember and key not in _UNSHARED_KEYS and len(line) <= _LONGEST_REMEMBERED_LINE:
        _LINES.put(line, entry)
    return entry


def _check_and_frame(message: Request | Response, rest: bytes, datagram: bool) -> None:
    message.top_via  # noqa: B018 - parsing it is the check; it raises unanswerable
    message.from_addr  # noqa: B018
    message.to_addr  # noqa: B018
    message.call_id  # noqa: B018
    message.cseq  # noqa: B018
    # Max-Forwards 0-255 (RFC 3261 §20.22) and Content-Length, checked here on
    # the stored (already stripped) values: every message pays for these two.
    first = message.headers._first or {}
    # The values nearly every message has ("70", "0") are known good without
    # a conversion (int() from text is not cheap: docs/benchmarks.md,
    # "Why the hot path is written as it is").
    entry = first.get("max-forwards")
    if entry is not None:
        value = entry[2]
        if value != "70" and not (value.isdigit() and value.isascii() and len(value) <= 10
                                  and int(value) <= 255):
            raise SipParseError(f"bad Max-Forwards {value[:20]!r}")
    entry = first.get("content-length")
    declared: int | None = None
    if entry is not None:
        value = entry[2]
        if value == "0":
            declared = 0
        elif not (value.isdigit() and value.isascii() and len(value) <= 10):
            raise SipParseError(f"bad Content-Length {value[:20]!r}")
        else:
            declared = int(value)
    if isinstance(message, Request) and message.cseq.method != message.method:
        raise SipParseError(f"CSeq method {message.cseq.method} does not match {message.method}")
    if declared is None:
        if not datagram and rest:
            raise SipParseError("missing Content-Length on a stream")
        message.body = rest
    elif declared > len(rest):
        raise SipParseError(f"Content-Length {declared} larger than the {len(rest)} bytes received")
    else:
        message.body = rest[:declared] if declared < len(rest) else rest


def parse_message(
    data: bytes,
    *,
    datagram: bool = True,
    limits: ParseLimits = DEFAULT_LIMITS,
) -> Request | Response:
    """Parse one whole SIP message.

    ``datagram`` selects the framing rule of RFC 3261 §18.3: in a datagram
    a missing Content-Length means "the rest of the datagram"; a stream
    framer (`pbx.sip.framing`) hands over exactly one message whose
    Content-Length it has already honoured.

    Raises only `SipParseError`; its ``answerable`` says whether a response
    could be routed (a request with a usable top Via).
    """
    try:
        return _parse(data, datagram=datagram, limits=limits)
    except _WithLine as start_error:
        error = start_error.error
        error.answerable = _has_usable_via(data)
        raise error from None
    except SipParseError as error:
        if error.answerable and not _has_usable_via(data):
            error.answerable = False
        raise


def _raw_header_lines(data: bytes) -> tuple[str, list[tuple[str, str, str]]]:
    """Start line and (key, raw lines, unfolded value) of each header of a
    message that may be broken; never raises.

    A folded header (RFC 3261 §7.3.1) keeps its continuation lines: a Via
    whose branch sits on the second line must not lose it in an answer.
    """
    end = data.find(b"\r\n\r\n")
    head_bytes = data[:end] if end >= 0 else data.split(b"\n\n", 1)[0]
    lines = head_bytes.decode(errors="replace").replace("\r\n", "\n").split("\n")
    pairs: list[tuple[str, str, str]] = []
    current: tuple[str, str, str] | None = None
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if current is not None:
                key, raw, value = current
                current = (key, f"{raw}\r\n{line}", f"{value} {line.strip()}".strip())
                pairs[-1] = current
            continue
        name, colon, value = line.partition(":")
        current = (header_key(name.strip()), line, value.strip()) if colon else None
        if current is not None:
            pairs.append(current)
    return lines[0], pairs


def _has_usable_via(data: bytes) -> bool:
    """May and can a response to this (broken) message be sent? Best effort, never raises.

    Never to a response, nor to an ACK (RFC 3261 §17: an ACK is not
    answered); otherwise only along a top Via that parses.
    """
    start_line, pairs = _raw_header_lines(data)
    if start_line[:4].upper() == "SIP/" or start_line.split(" ", 1)[0] == "ACK":
        return False
    for key, line, value in pairs:
        if key == "via":
            entries: list[_Line] = [(key, "Via", value, line)]
            try:
                _top_via(Headers._from_parsed(entries))
            except SipParseError:
                return False
            return True
    return False


def make_error_response(data: bytes, error: SipParseError, *, to_tag: str) -> bytes | None:
    """The stateless answer to a request that failed to parse, or None to drop it.

    Copies the raw Via, From, To, Call-ID and CSeq lines that are there
    (§8.2.6.2 as far as the broken request allows) and names the problem in
    the reason phrase, so a developer looking at a trace sees what was wrong.
    """
    # The Via check again: errors from the stream framer (pbx.sip.framing)
    # never went through `parse_message`, so their `answerable` is a guess.
    if not error.answerable or not _has_usable_via(data):
        return None
    _, pairs = _raw_header_lines(data)
    lines = [f"SIP/2.0 {error.status} {_reason_for(error)}"]
    for key, line, value in pairs:
        if key in ("via", "from", "call-id", "cseq"):
            lines.append(line)
        elif key == "to":
            lines.append(line if _has_tag(value) else f"{line};tag={to_tag}")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _has_tag(to_value: str) -> bool:
    """Does this To value carry a tag (a header parameter, not one inside the URI)?"""
    try:
        return NameAddr.parse(to_value, "To").tag is not None
    except SipParseError:
        return "tag=" in to_value


def _reason_for(error: SipParseError) -> str:
    """A reason phrase: the standard one, then what was wrong, on one safe line."""
    detail = "".join(c if c.isprintable() else "?" for c in error.reason)[:120]
    standard = reason_phrase(error.status)
    return standard if detail == standard else f"{standard} ({detail})"


# ---------------------------------------------------------------- building


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """A response to `request` per RFC 3261 §8.2.6.2.

    Via (every value, in order), From, Call-ID and CSeq are copied; To is
    copied and, when it has no tag and the status is not 100, gets
    ``to_tag`` (which the UAS must supply for dialog-creating answers). A
    100 Trying also copies Timestamp (§8.2.6.1).
    """
    source = request.headers
    entries: list[_Line] = []
    for entry in source._entries:
        key = entry[0]
        if key in ("via", "from", "call-id", "cseq") or (key == "timestamp" and status == 100):
            entries.append(entry)
        elif key == "to":
            if to_tag is not None and status != 100 and request.to_addr.tag is None:
                # Whatever follows a To's address is its header parameters
                # (RFC 3261 §20: a URI with parameters must be in angle
                # brackets), so the tag goes at the end of the text as sent.
                entries.append((key, entry[1], f"{entry[2]};tag={to_tag}", None))
            else:
                entries.append(entry)
    response = Response(status, reason, Headers._from_parsed(entries), body)
    for name, value in headers:
        response.headers.add(name, value)
    return response


def build_request(
    method: str,
    uri: SipUri | TelUri,
    *,
    via: Via | str,
    from_addr: NameAddr | str,
    to_addr: NameAddr | str,
    call_id: str,
    cseq: int,
    max_forwards: int = 70,
    contact: NameAddr | str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Request:
    """A request from scratch with the headers of RFC 3261 §8.1.1 in the usual order."""
    entries: list[tuple[str, str]] = [
        ("Via", str(via)),
        ("Max-Forwards", str(max_forwards)),
        ("From", str(from_addr)),
        ("To", str(to_addr)),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method}"),
    ]
    if contact is not None:
        entries.append(("Contact", str(contact)))
    entries.extend(headers)
    return Request(method, uri, Headers(entries), body)
