"""Stream framing (RFC 3261 §18.3) and CRLF keep-alives (RFC 5626 §4.4.1)."""

from __future__ import annotations

import pytest

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
