"""Cutting a byte stream (TCP, TLS) into SIP messages (RFC 3261 §18.3).

Theory of operation
-------------------
A stream has no message boundaries, so the header section is read up to the
blank line and the body is exactly Content-Length bytes, which is therefore
mandatory. `StreamFramer.feed` takes whatever the socket delivered (half a
message, or three and a bit) and returns the events it completed:

- `FramedMessage`: the bytes of one whole message, for `parse_message`;
- `KeepAlivePing`: a double CRLF between messages (RFC 5626 §4.4.1), which
  the transport must answer with a single CRLF ("pong");
- `FramingFailed`: the stream is broken beyond repair (no Content-Length,
  one that is not a number, two that disagree, a header section or body
  over the limit); the shell answers if it can and closes the connection,
  since the next byte's place is unknown.

The header section is read for its Content-Length as `parse_message` will
read it (lines split at any LF, folds joined), so the two always agree on
where a message ends: bytes one took for a body the other would take for
the next request.

A lone CRLF between messages is a pong (or harmless padding) and is skipped.
Every buffer is bounded by `ParseLimits.max_message_bytes` [h11].
"""

from __future__ import annotations

from dataclasses import dataclass

from pbx.sip.errors import SipParseError
from pbx.sip.message import DEFAULT_LIMITS, ParseLimits


@dataclass(frozen=True, slots=True)
class FramedMessage:
    data: bytes


@dataclass(frozen=True, slots=True)
class KeepAlivePing:
    """A CRLFCRLF ping: answer with CRLF."""


@dataclass(frozen=True, slots=True)
class FramingFailed:
    error: SipParseError
    data: bytes
    """The failing message's header section (capped at the size limit plus one
    byte), to build an error response from; never bytes of the messages after it."""


FramingEvent = FramedMessage | KeepAlivePing | FramingFailed


class StreamFramer:
    """Sans-I/O framer for one connection."""

    __slots__ = ("_broken", "_buffer", "_limits")

    def __init__(self, limits: ParseLimits = DEFAULT_LIMITS) -> None:
        self._buffer = bytearray()
        self._limits = limits
        self._broken = False

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a whole message."""
        return len(self._buffer)

    @property
    def message_pending(self) -> bool:
        """Whether part of a message waits for the rest (its deadline runs in the shell).

        The CRs and LFs of a keep-alive that has not fully arrived do not
        count: a phone sending lone CRLFs between messages is idle, not
        slow. After `feed` the buffer holds either such a prefix (at most
        three bytes, all CR or LF) or the start of a message.
        """
        buffer = self._buffer
        return len(buffer) > 3 or (len(buffer) > 0 and buffer[0] not in b"\r\n")

    def feed(self, data: bytes) -> list[FramingEvent]:
        if self._broken:
            return []
        self._buffer += data
        events: list[FramingEvent] = []
        buffer = self._buffer
        while buffer:
            if buffer[0] in b"\r\n":
                if buffer.startswith(b"\r\n\r\n"):
                    events.append(KeepAlivePing())
                    del buffer[:4]
                    continue
                if bytes(buffer) in (b"\r", b"\r\n", b"\r\n\r"):
                    break  # maybe the start of a ping; wait for more
                del buffer[: 2 if buffer.startswith(b"\r\n") else 1]
                continue
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                limit = self._limits.max_message_bytes
                if len(buffer) > limit:
                    # Everything buffered is this header section; keep as much
                    # as any cut of the stream would have when the limit tripped.
                    events.append(self._fail("header section too large", 513, limit + 1))
                break
            body_start = end + 4
            try:
                length = _content_length(bytes(buffer[:end]))
            except SipParseError as error:
                events.append(self._fail(error.reason, error.status, body_start))
                break
            total = body_start + length
            if total > self._limits.max_message_bytes:
                events.append(self._fail(f"message of {total} bytes is too large", 513,
                                         body_start))
                break
            if len(buffer) < total:
                break
            events.append(FramedMessage(bytes(buffer[:total])))
            del buffer[:total]
        return events

    def _fail(self, reason: str, status: int, size: int) -> FramingFailed:
        """Broken: the first `size` bytes of the buffer are the failing message's.

        Only those go into the event (not what followed in the same read), so
        what the shell answers and logs does not depend on how the stream was cut.
        """
        self._broken = True
        data = bytes(self._buffer[:size])
        self._buffer.clear()
        return FramingFailed(SipParseError(reason, status), data)


def _content_length(head: bytes) -> int:
    """The Content-Length (or compact ``l``) of a raw header section; required on streams.

    Read as `parse_message` will read the framed message, so that the two
    agree on where it ends: lines split at any LF (a message with bare LFs
    among its CRLFs is read that way), a line starting with a blank folded
    into the one above. More than one Content-Length line is refused unless
    they all say the same (`pbx.sip.message._check_second_content_length`):
    framing by one of two lengths would hand the rest of the stream to
    whoever meant the other, a request smuggled inside another's body.
    """
    values: list[bytes] = []
    in_length = False  # the line being continued by a fold is a Content-Length
    for line in head.split(b"\n")[1:]:
        line = line.removesuffix(b"\r")
        if line[:1] in (b" ", b"\t"):
            if in_length:
                values[-1] += b" " + line.strip(b" \t")
            continue
        name, colon, value = line.partition(b":")
        name = name.rstrip(b" \t").lower()
        in_length = bool(colon) and (name == b"content-length" or name == b"l")
        if in_length:
            values.append(value)
    if not values:
        raise SipParseError("missing Content-Length on a stream transport")
    first = values[0].strip(b" \t")
    for value in values[1:]:
        other = value.strip(b" \t")
        if other != first:
            raise SipParseError(f"two different Content-Length values, {_shown(first)}"
                                f" and {_shown(other)}")
    if not first.isdigit() or len(first) > 10:
        raise SipParseError(f"bad Content-Length {_shown(first)}")
    return int(first)


def _shown(value: bytes) -> str:
    """A received value in an error reason, as `parse_message` quotes one."""
    return repr(value[:20].decode(errors="replace"))
