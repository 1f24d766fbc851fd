"""When a TCP/TLS connection is closed for saying nothing, or for stopping mid-message.

The stream protocol takes its clock from its factory: on a `Clock`, "closed
after stall_s" means exactly that in the PBX's own time, whatever the
machine's speed. The same over real sockets is tests/service/test_streams.py.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher

from pbx.sip.errors import SipParseError
from pbx.sip.peer import Peer
from pbx.transport.connections import Connections
from pbx.transport.stream import SipStreamFactory, SipStreamProtocol, StreamTimeouts

IDLE_S = 600.0
STALL_S = 30.0
HALF = b"OPTIONS sip:pbx.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bKh\r\n"
WHOLE = HALF + b"Content-Length: 0\r\n\r\n"
PHONE = IPv4Address("TCP", "127.0.0.1", 5070)


class RecordingSink:
    """Stands in for the SIP core: what the transport delivered."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.closed: list[Peer] = []

    def receive_data(self, data: bytes, peer: Peer, *, datagram: bool) -> None:
        self.messages.append(data)

    def receive_broken_stream(self, error: SipParseError, data: bytes, peer: Peer) -> None:
        raise AssertionError(f"broken stream: {error}")

    def connection_closed(self, peer: Peer) -> None:
        self.closed.append(peer)


def connect(clock: Clock, sink: RecordingSink) -> tuple[SipStreamProtocol, StringTransport]:
    factory = SipStreamFactory("tcp", sink, Connections(), clock,
                               StreamTimeouts(idle_s=IDLE_S, stall_s=STALL_S))
    protocol = factory.buildProtocol(PHONE)
    transport = StringTransport(peerAddress=PHONE)
    protocol.makeConnection(transport)
    return protocol, transport


def closing_reasons(observer: EventLoggingObserver) -> list[str]:
    return [str(event["why"]) for event in observer if "why" in event]


def test_half_a_message_is_closed_after_the_stall_timeout() -> None:
    clock, sink = Clock(), RecordingSink()
    logged = EventLoggingObserver()
    globalLogPublisher.addObserver(logged)
    try:
        protocol, transport = connect(clock, sink)
        clock.advance(1.0)
        protocol.dataReceived(HALF)

        clock.advance(STALL_S - 0.001)
        assert not transport.disconnecting
        clock.advance(0.001)
        assert transport.disconnecting
    finally:
        globalLogPublisher.removeObserver(logged)
    assert sink.messages == []
    assert closing_reasons(logged) == ["stalled mid-message"]


def test_a_silent_connection_is_closed_after_the_idle_timeout() -> None:
    clock, sink = Clock(), RecordingSink()
    logged = EventLoggingObserver()
    globalLogPublisher.addObserver(logged)
    try:
        protocol, transport = connect(clock, sink)
        protocol.dataReceived(WHOLE)

        clock.advance(STALL_S)  # a whole message: the stall timeout does not apply
        assert not transport.disconnecting
        clock.advance(IDLE_S - STALL_S - 0.001)
        assert not transport.disconnecting
        clock.advance(0.001)
        assert transport.disconnecting
    finally:
        globalLogPublisher.removeObserver(logged)
    assert sink.messages == [WHOLE]
    assert closing_reasons(logged) == ["idle"]
