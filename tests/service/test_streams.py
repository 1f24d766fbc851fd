"""Streams (TCP, TLS) and WebSocket: framing, keep-alives, broken streams, timeouts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent

from pbx.sip.errors import SipParseError
from pbx.sip.peer import Peer
from pbx.transport.connections import Connections
from pbx.transport.stream import SipStreamFactory, StreamTimeouts
from tests.service.conftest import assert_nothing_left, ticks
from tests.service.sipclient import PONG, StreamLink, WebSocketRefused


@pytest.mark.parametrize("transport", ["tcp", "tls"])
@pytest_twisted.ensureDeferred
async def test_message_split_across_writes_is_answered(pbx_factory: Any, transport: str) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001", transport)
    request = phone.build("OPTIONS", body=b"v=0\r\n", content_type="application/sdp")

    for start in range(0, len(request), 40):
        phone.link.send(request[start:start + 40])
        await ticks(pbx.reactor, 0.01)  # each piece its own segment

    reply = await phone.link.response()
    assert reply.status == 200
    await phone.link.silence(0.05)


@pytest.mark.parametrize("transport", ["tcp", "tls"])
@pytest_twisted.ensureDeferred
async def test_two_messages_in_one_write_are_both_answered(
        pbx_factory: Any, transport: str) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001", transport)

    phone.link.send(phone.build("OPTIONS") + phone.build("FOO"))

    first = await phone.link.response()
    second = await phone.link.response()
    assert (first.status, first.get("cseq")) == (200, "1 OPTIONS")
    assert (second.status, second.get("cseq")) == (501, "2 FOO")


@pytest.mark.parametrize("transport", ["tcp", "tls", "ws"])
@pytest_twisted.ensureDeferred
async def test_crlf_ping_gets_a_crlf_pong(pbx_factory: Any, transport: str) -> None:
    pbx = await pbx_factory()
    link = await pbx.link(transport)

    link.send(b"\r\n\r\n")

    assert await link.next_frame() == PONG
    await link.silence(0.05)
    assert not link.is_closed


@pytest_twisted.ensureDeferred
async def test_stream_without_content_length_gets_400_and_is_closed(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001", "tcp")
    request = phone.build("OPTIONS").replace(b"Content-Length: 0\r\n", b"")

    phone.link.send(request + b"and then some garbage")

    reply = await phone.link.response()
    assert reply.status == 400
    assert "Content-Length" in reply.reason
    assert reply.get("call-id") == phone.call_id
    await phone.link.closed_within(1.0)


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls", "ws"])
@pytest_twisted.ensureDeferred
async def test_two_different_content_lengths_get_400_and_the_smuggled_request_is_never_run(
        pbx_factory: Any, transport: str) -> None:
    # One length frames an empty body, the other a second request as its
    # body: an element trusting either one is fooled. Neither is chosen.
    pbx = await pbx_factory()
    phone = await pbx.phone("1001", transport)
    smuggled = phone.build("FOO")  # answered 501 if ever taken for a request
    request = phone.build("OPTIONS", headers=[("l", str(len(smuggled)))])
    assert request.count(b"\r\nl: ") == 1 and b"\r\nContent-Length: 0\r\n" in request

    phone.link.send(request + smuggled)

    reply = await phone.link.response()
    assert reply.status == 400
    assert f"two different Content-Length values, '{len(smuggled)}' and '0'" in reply.reason
    assert (reply.call_id, reply.cseq) == (phone.call_id, (phone.cseq, "OPTIONS"))
    if transport in ("tcp", "tls"):
        # Where the next message starts is unknown: the stream is closed.
        await phone.link.closed_within(1.0)
        assert not phone.link.frames.pending, [bytes(f) for f in phone.link.frames.pending]
    else:
        # A datagram (or WebSocket message) ends where it ends: the rest of it
        # is dropped with it, and the phone's next request is answered.
        await phone.link.silence(0.2)
        assert (await phone.request("OPTIONS")).status == 200


@pytest.mark.parametrize("transport", ["udp", "tcp", "ws"])
@pytest_twisted.ensureDeferred
async def test_the_same_content_length_twice_is_taken_as_one(
        pbx_factory: Any, transport: str) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001", transport)
    body = b"v=0\r\n"
    request = phone.build("OPTIONS", headers=[("l", str(len(body)))], body=body,
                          content_type="application/sdp")

    phone.link.send(request + phone.build("FOO"))

    assert (await phone.link.response()).status == 200
    if transport == "tcp":
        assert (await phone.link.response()).status == 501  # the next message, framed right


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: pbx.test\r\n\r\nxx",
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bKx\r\n\r\nxx",
], ids=["http", "response"])
@pytest_twisted.ensureDeferred
async def test_unframeable_stream_that_cannot_be_answered_is_just_closed(
        pbx_factory: Any, garbage: bytes) -> None:
    pbx = await pbx_factory()
    link = await pbx.link("tcp")

    link.send(garbage)

    await link.closed_within(1.0)
    assert not link.frames.pending, [bytes(f) for f in link.frames.pending]


@pytest_twisted.ensureDeferred
async def test_message_on_a_closed_connection_is_not_lost_for_others(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    leaving = await pbx.phone("1001", "tcp")
    staying = await pbx.phone("1002", "tcp")
    await leaving.link.close()

    assert (await staying.request("OPTIONS")).status == 200


# ---------------------------------------------------------------- WebSocket


@pytest.mark.parametrize("subprotocols", [(), ("chat",)], ids=["none", "chat"])
@pytest_twisted.ensureDeferred
async def test_websocket_without_sip_subprotocol_is_refused(
        pbx_factory: Any, subprotocols: tuple[str, ...]) -> None:
    pbx = await pbx_factory()

    with pytest.raises(WebSocketRefused) as refused:
        await pbx.link("ws", subprotocols=subprotocols)

    assert "400" in str(refused.value)
    # A browser asking properly still gets in.
    link = await pbx.link("ws")
    assert link.protocol is not None
    assert link.protocol.websocket_protocol_in_use == "sip"


@pytest_twisted.ensureDeferred
async def test_websocket_frame_is_one_message(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001", "wss")
    request = phone.build("OPTIONS").replace(b"Content-Length: 0\r\n", b"")

    phone.link.send(request)

    assert (await phone.link.response()).status == 200


# ------------------------------------------------- idle and message deadlines


class RecordingSink:
    """A stand-in for the SIP core: records what the transport delivers."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.broken: list[SipParseError] = []
        self.closed: list[Peer] = []

    def receive_data(self, data: bytes, peer: Peer, *, datagram: bool) -> None:
        self.messages.append(data)

    def receive_broken_stream(self, error: SipParseError, data: bytes, peer: Peer) -> None:
        self.broken.append(error)

    def connection_closed(self, peer: Peer) -> None:
        self.closed.append(peer)


IDLE_S = 0.6
MESSAGE_S = 0.2


@pytest_twisted.async_yield_fixture
async def bare_stream(reactor: Any) -> AsyncIterator[Any]:
    """A SipStreamFactory with tiny deadlines on its own port, and a way to connect."""
    baseline = set(reactor.getDelayedCalls())
    sink = RecordingSink()
    factory = SipStreamFactory("tcp", sink, Connections(), reactor,
                               StreamTimeouts(idle_s=IDLE_S, message_s=MESSAGE_S))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    links: list[StreamLink] = []

    async def connect() -> StreamLink:
        link = StreamLink(reactor, "tcp")
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await connectProtocol(endpoint, link.protocol)
        links.append(link)
        return link

    try:
        yield sink, connect
    finally:
        for link in links:
            await link.close()
        await port.stopListening()
        await assert_nothing_left(reactor, baseline)


HALF = b"OPTIONS sip:pbx.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bKh\r\n"


@pytest_twisted.ensureDeferred
async def test_half_a_message_is_closed_at_its_deadline(
        bare_stream: Any, reactor: Any) -> None:
    sink, connect = bare_stream
    link = await connect()

    sent = reactor.seconds()
    link.send(HALF)
    await link.closed_within(IDLE_S)

    # Never before its time; that it is the message deadline and not the idle
    # one, to the millisecond, is tests/unit/test_stream_timeouts.py's.
    assert reactor.seconds() - sent >= MESSAGE_S - 0.01
    await ticks(reactor, 0)
    assert sink.messages == []
    assert len(sink.closed) == 1


@pytest_twisted.ensureDeferred
async def test_silent_connection_is_closed_after_the_idle_timeout(
        bare_stream: Any, reactor: Any) -> None:
    sink, connect = bare_stream
    opened = reactor.seconds()
    link = await connect()
    whole = HALF + b"Content-Length: 0\r\n\r\n"
    link.send(whole)

    await link.closed_within(IDLE_S + 0.5)

    assert reactor.seconds() - opened >= IDLE_S - 0.01  # idle, not the message deadline
    assert sink.messages == [whole]



async def trickle(reactor: Any, link: Any, write: Callable[[bytes], object],
                  data: bytes) -> float:
    """Write `data` a byte every 50 ms until `link` is closed; the seconds that took."""
    started = reactor.seconds()
    for byte in data:
        if link.is_closed:
            break
        write(bytes([byte]))
        await ticks(reactor, 0.05)
    return float(reactor.seconds() - started)


@pytest.mark.parametrize("transport", ["tcp", "tls"])
@pytest_twisted.ensureDeferred
async def test_a_sender_trickling_bytes_is_closed_at_its_message_deadline(
        pbx_factory: Any, reactor: Any, transport: str) -> None:
    # A byte every 50 ms kept the connection (and its buffer) for ever: each
    # byte pushed the deadline back. Others are served meanwhile.
    pbx = await pbx_factory({"sip": {"message_timeout_s": 0.5}})
    slow = await pbx.phone("1001", transport)
    other = await pbx.phone("1002", transport)
    request = slow.build("OPTIONS")

    closed_after_s = await trickle(reactor, slow.link, slow.link.send, request[:-1])

    assert slow.link.is_closed
    assert closed_after_s >= 0.5
    assert not slow.link.frames.pending  # nothing was answered: the message never came whole
    assert (await other.request("OPTIONS")).status == 200


@pytest.mark.parametrize("transport", ["ws", "wss"])
@pytest_twisted.ensureDeferred
async def test_a_websocket_frame_trickled_in_is_closed_at_its_message_deadline(
        pbx_factory: Any, reactor: Any, transport: str,
        log_events: EventLoggingObserver) -> None:
    # autobahn assembles frames without a deadline: a byte every 50 ms held
    # the connection and its buffer until the 30 s ping timeout at best.
    pbx = await pbx_factory({"sip": {"message_timeout_s": 0.5}})
    slow = await pbx.phone("1001", transport)
    other = await pbx.phone("1002", transport)
    payload = slow.build("OPTIONS")
    mask = b"\x01\x02\x03\x04"
    assert len(payload) < 65536
    header = b"\x81\xfe" + len(payload).to_bytes(2, "big") + mask  # FIN, text, masked
    frame = header + bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    protocol = slow.link.protocol
    assert protocol is not None

    closed_after_s = await trickle(reactor, slow.link, protocol.transport.write, frame[:-1])

    assert slow.link.is_closed
    assert closed_after_s >= 0.5
    assert any("WebSocket message not complete 0.5 s after its first byte" in formatEvent(event)
               for event in log_events)
    assert (await other.request("OPTIONS")).status == 200


@pytest.mark.parametrize("transport", ["tls", "wss"])
@pytest_twisted.ensureDeferred
async def test_a_tls_record_trickled_in_is_closed_at_the_message_deadline(
        pbx_factory: Any, reactor: Any, transport: str) -> None:
    # OpenSSL hands nothing on until a record is whole: a sender trickling one
    # never started the message deadline and was held until the idle timeout.
    pbx = await pbx_factory({"sip": {"message_timeout_s": 0.5}})
    slow = await pbx.phone("1001", transport)
    other = await pbx.phone("1002", transport)
    assert (await slow.request("OPTIONS")).status == 200  # the handshake is over
    protocol = slow.link.protocol
    assert protocol is not None
    tcp = protocol.transport.transport  # under the client's TLS: raw bytes on the wire
    record = b"\x17\x03\x03\x00\x40" + bytes(63)  # application data, one byte short

    closed_after_s = await trickle(reactor, slow.link, tcp.write, record)

    assert slow.link.is_closed
    assert closed_after_s >= 0.5
    assert (await other.request("OPTIONS")).status == 200


@pytest.mark.parametrize("transport", ["ws"])
@pytest_twisted.ensureDeferred
async def test_websocket_messages_in_good_time_are_not_cut(
        pbx_factory: Any, reactor: Any, transport: str) -> None:
    # The deadline runs from a message's first byte, not from the connection's.
    pbx = await pbx_factory({"sip": {"message_timeout_s": 0.3}})
    phone = await pbx.phone("1001", transport)
    for _ in range(4):
        assert (await phone.request("OPTIONS")).status == 200
        await ticks(reactor, 0.2)
    assert not phone.link.is_closed


@pytest.mark.parametrize("transport", ["tls", "wss", "ws"])
@pytest_twisted.ensureDeferred
async def test_a_silent_handshake_is_closed_at_its_deadline(
        pbx_factory: Any, reactor: Any, transport: str) -> None:
    # A client that connects to the TLS port and never starts the handshake
    # was held 600 s; a WebSocket that never asks to upgrade, 5 s.
    pbx = await pbx_factory({"sip": {"handshake_timeout_s": 0.3}})
    silent = await StreamLink.open(reactor, "tcp", pbx.address(transport))
    pbx.links.append(silent)
    opened = reactor.seconds()

    await silent.closed_within(3.0)

    assert reactor.seconds() - opened >= 0.3 - 0.01
    # A phone that does shake hands is served.
    assert (await (await pbx.phone("1001", transport)).request("OPTIONS")).status == 200
