"""Stream framing (RFC 3261 §18.3) and CRLF keep-alives (RFC 5626 §4.4.1)."""

from __future__ import annotations

import pytest

from pbx.sip.errors import SipParseError
from pbx.sip.framing import FramedMessage, FramingFailed, KeepAlivePing, StreamFramer
from pbx.sip.message import ParseLimits, parse_message


def options(call_id: str, body: bytes = b"") -> bytes:
    head = (
        "OPTIONS sip:pbx.test SIP/2.0\r\n"
        "Via: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK" + call_id + "\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:1001@pbx.test>;tag=a\r\n"
        "To: <sip:pbx.test>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


STREAM = options("one") + b"\r\n\r\n" + options("two", b"hello body") + options("three")


def test_messages_split_across_reads_and_several_in_one_read() -> None:
    whole = StreamFramer().feed(STREAM)
    framer = StreamFramer()
    bytewise = [event for i in range(len(STREAM)) for event in framer.feed(STREAM[i : i + 1])]
    assert whole == bytewise
    assert [type(e) for e in whole] == [FramedMessage, KeepAlivePing, FramedMessage, FramedMessage]
    messages = [
        parse_message(e.data, datagram=False) for e in whole if isinstance(e, FramedMessage)
    ]
    assert [m.call_id for m in messages] == ["one", "two", "three"]
    assert messages[1].body == b"hello body"


def test_partial_message_waits_and_reports_buffered_bytes() -> None:
    framer = StreamFramer()
    assert framer.feed(STREAM[:50]) == []
    assert framer.buffered == 50


def test_lone_crlf_between_messages_is_skipped() -> None:
    events = StreamFramer().feed(b"\r\n" + options("x"))
    assert [type(e) for e in events] == [FramedMessage]


def test_missing_content_length_on_a_stream_breaks_it() -> None:
    data = options("x").replace(b"Content-Length: 0\r\n", b"")
    framer = StreamFramer()
    events = framer.feed(data)
    assert len(events) == 1 and isinstance(events[0], FramingFailed)
    assert events[0].error.status == 400
    assert "Content-Length" in events[0].error.reason
    assert framer.feed(options("y")) == []  # nothing more is read from a broken stream


def test_compact_content_length_is_understood() -> None:
    data = options("x", b"abc").replace(b"Content-Length: 3", b"l: 3")
    (event,) = StreamFramer().feed(data)
    assert isinstance(event, FramedMessage) and event.data.endswith(b"abc")


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"INVITE sip:x SIP/2.0\r\n" + b"X-Junk: " + b"a" * 2000, 513),  # no end of headers
        (options("x").replace(b"Content-Length: 0", b"Content-Length: 99999"), 513),
        (options("x").replace(b"Content-Length: 0", b"Content-Length: -1"), 400),
    ],
)
def test_oversized_or_bad_length_fails_with_status(data: bytes, status: int) -> None:
    framer = StreamFramer(ParseLimits(max_message_bytes=1024))
    events = framer.feed(data)
    assert len(events) == 1 and isinstance(events[0], FramingFailed)
    assert events[0].error.status == status


SMUGGLED = options("smuggled")


def with_lengths(*lines: bytes, body: bytes = b"") -> bytes:
    """`options` with its Content-Length line replaced by `lines`, then `body`."""
    return options("x").replace(b"Content-Length: 0\r\n", b"".join(
        line + b"\r\n" for line in lines)) + body


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        # The first length frames an empty body, the second the smuggled
        # request as this one's body: either way one element is fooled.
        (with_lengths(b"Content-Length: 0", b"Content-Length: %d" % len(SMUGGLED)),
         f"two different Content-Length values, '0' and '{len(SMUGGLED)}'"),
        (with_lengths(b"l: %d" % len(SMUGGLED), b"Content-Length: 0"),
         f"two different Content-Length values, '{len(SMUGGLED)}' and '0'"),
        (with_lengths(b"Content-Length: 0, %d" % len(SMUGGLED)),
         f"bad Content-Length '0, {len(SMUGGLED)}'"),
        # A second length folded onto the first, or hidden behind a bare LF
        # that makes the parser read the section line by line at every LF.
        (with_lengths(b"Content-Length: 0", b" %d" % len(SMUGGLED)),
         f"bad Content-Length '0 {len(SMUGGLED)}'"),
        (with_lengths(b"X-A: b\nContent-Length: %d" % len(SMUGGLED), b"Content-Length: 0"),
         f"two different Content-Length values, '{len(SMUGGLED)}' and '0'"),
        (with_lengths(b"Content-Length: -0"), "bad Content-Length '-0'"),
        (with_lengths(b"Content-Length: ten"), "bad Content-Length 'ten'"),
    ],
    ids=["twice", "compact-and-full", "list", "folded", "bare-lf", "negative", "non-digit"],
)
def test_ambiguous_content_length_breaks_the_stream_before_the_next_request(
        data: bytes, reason: str) -> None:
    framer = StreamFramer()

    events = framer.feed(data + SMUGGLED)

    assert len(events) == 1 and isinstance(events[0], FramingFailed)
    assert (events[0].error.status, events[0].error.reason) == (400, reason)
    assert b"smuggled" not in events[0].data  # what the shell answers and logs
    assert framer.feed(options("y")) == []  # nothing more is read from a broken stream
    # The parser refuses the same bytes (over UDP and WebSocket, where it frames).
    with pytest.raises(SipParseError) as refused:
        parse_message(data + SMUGGLED)
    assert refused.value.status == 400 and "Content-Length" in refused.value.reason


def test_the_same_content_length_twice_frames_one_message() -> None:
    data = with_lengths(b"Content-Length: 3", b"l:3", body=b"abc")

    (event, after) = StreamFramer().feed(data + options("next"))

    assert isinstance(event, FramedMessage) and event.data == data
    message = parse_message(event.data, datagram=False)
    assert (message.content_length, message.body) == (3, b"abc")
    assert message.to_bytes().count(b"Content-Length") + message.to_bytes().count(b"\nl:") == 1
    assert isinstance(after, FramedMessage) and parse_message(after.data).call_id == "next"
