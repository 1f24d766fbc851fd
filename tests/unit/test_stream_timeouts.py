"""When a TCP/TLS connection is closed: a message too slow, a handshake too slow, or silence.

The stream protocol takes its clock from its factory: on a `Clock`, "closed
after message_s" means exactly that in the PBX's own time, whatever the
machine's speed. The same over real sockets is tests/service/test_streams.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher

from pbx.sip.errors import SipParseError
from pbx.sip.peer import Peer
from pbx.transport.connections import Connections
from pbx.transport.stream import SipStreamFactory, SipStreamProtocol, StreamTimeouts

IDLE_S = 600.0
MESSAGE_S = 30.0
HANDSHAKE_S = 10.0
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


def connect(clock: Clock, sink: RecordingSink, transport_name: str = "tcp",
            connections: Connections | None = None,
            ) -> tuple[SipStreamProtocol, StringTransport]:
    factory = SipStreamFactory(transport_name, sink,
                               Connections() if connections is None else connections, clock,
                               StreamTimeouts(idle_s=IDLE_S, message_s=MESSAGE_S,
                                              handshake_s=HANDSHAKE_S))
    protocol = factory.buildProtocol(PHONE)
    transport = StringTransport(peerAddress=PHONE)
    protocol.makeConnection(transport)
    return protocol, transport


@pytest.fixture
def logged() -> Iterator[EventLoggingObserver]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    try:
        yield observer
    finally:
        globalLogPublisher.removeObserver(observer)


def closing_reasons(observer: EventLoggingObserver) -> list[str]:
    return [str(event["why"]) for event in observer if "why" in event]


def test_half_a_message_is_closed_at_its_deadline(logged: EventLoggingObserver) -> None:
    clock, sink = Clock(), RecordingSink()
    protocol, transport = connect(clock, sink)
    clock.advance(1.0)
    protocol.dataReceived(HALF)

    clock.advance(MESSAGE_S - 0.25)
    assert not transport.disconnecting
    clock.advance(0.25)
    assert transport.disconnecting
    assert sink.messages == []
    assert closing_reasons(logged) == ["message not complete 30 s after its first byte"]


def test_a_message_trickling_in_a_byte_a_second_is_closed_at_its_deadline(
        logged: EventLoggingObserver) -> None:
    # The deadline runs from the first byte: more bytes do not push it back
    # (a timer reset by every byte held such a sender for ever).
    clock, sink = Clock(), RecordingSink()
    protocol, transport = connect(clock, sink)
    clock.advance(5.0)
    started = clock.seconds()

    for byte in WHOLE[:-1]:
        if transport.disconnecting:
            break
        protocol.dataReceived(bytes([byte]))
        clock.advance(1.0)

    assert transport.disconnecting
    assert clock.seconds() == started + MESSAGE_S
    assert sink.messages == []
    assert closing_reasons(logged) == ["message not complete 30 s after its first byte"]


def test_each_message_has_its_own_deadline_from_its_first_byte(
        logged: EventLoggingObserver) -> None:
    clock, sink = Clock(), RecordingSink()
    protocol, transport = connect(clock, sink)
    protocol.dataReceived(HALF)
    clock.advance(20.0)
    protocol.dataReceived(WHOLE[len(HALF):] + HALF)  # the first ends, the second begins

    clock.advance(MESSAGE_S - 0.25)  # past the first message's deadline
    assert not transport.disconnecting
    clock.advance(0.25)
    assert transport.disconnecting
    assert sink.messages == [WHOLE]


def test_a_message_completed_in_time_lets_the_connection_idle(
        logged: EventLoggingObserver) -> None:
    clock, sink = Clock(), RecordingSink()
    protocol, transport = connect(clock, sink)
    protocol.dataReceived(HALF)
    clock.advance(MESSAGE_S - 1.0)
    protocol.dataReceived(WHOLE[len(HALF):])

    clock.advance(MESSAGE_S)  # a whole message: its deadline no longer applies
    assert not transport.disconnecting
    assert sink.messages == [WHOLE]


def test_a_silent_connection_is_closed_after_the_idle_timeout(
        logged: EventLoggingObserver) -> None:
    clock, sink = Clock(), RecordingSink()
    protocol, transport = connect(clock, sink)
    clock.advance(100.0)
    protocol.dataReceived(WHOLE)

    clock.advance(IDLE_S - 0.25)
    assert not transport.disconnecting
    clock.advance(0.25)
    assert transport.disconnecting
    assert sink.messages == [WHOLE]
    assert closing_reasons(logged) == ["idle for 600 s"]


@pytest.mark.parametrize("keep_alive", [b"\r\n\r\n", b"\r\n"], ids=["ping", "crlf"])
def test_keep_alives_keep_a_connection_open(keep_alive: bytes,
                                            logged: EventLoggingObserver) -> None:
    # A lone CRLF waits for a possible second one; it is not the start of a
    # message, so no message deadline runs for it.
    clock, sink = Clock(), RecordingSink()
    protocol, transport = connect(clock, sink)

    for _ in range(20):
        clock.advance(IDLE_S / 2)
        protocol.dataReceived(keep_alive)

    assert not transport.disconnecting
    assert closing_reasons(logged) == []


def test_a_connection_a_phone_registered_over_outlives_the_idle_timeout(
        logged: EventLoggingObserver) -> None:
    # The phone can be reached only over its flow (RFC 5626): it stays while
    # a binding rides on it, keep-alives or not.
    clock, sink = Clock(), RecordingSink()
    connections = Connections()
    registered: set[int] = set()
    connections.carries_flow = registered.__contains__
    protocol, transport = connect(clock, sink, connections=connections)
    protocol.dataReceived(WHOLE)  # its REGISTER
    registered.add(protocol.connection_id)

    clock.advance(5 * IDLE_S)
    assert not transport.disconnecting

    registered.clear()  # the binding expired or was removed
    clock.advance(IDLE_S)
    assert transport.disconnecting
    assert closing_reasons(logged) == ["idle for 600 s"]


def test_a_silent_tls_handshake_is_closed_at_its_deadline(
        logged: EventLoggingObserver) -> None:
    clock, sink = Clock(), RecordingSink()
    _, transport = connect(clock, sink, "tls")

    clock.advance(HANDSHAKE_S - 0.25)
    assert not transport.disconnecting
    clock.advance(0.25)
    assert transport.disconnecting
    assert closing_reasons(logged) == ["TLS handshake not complete after 10 s"]


def test_after_the_tls_handshake_the_idle_timeout_applies(
        logged: EventLoggingObserver) -> None:
    clock, sink = Clock(), RecordingSink()
    protocol, transport = connect(clock, sink, "tls")
    clock.advance(HANDSHAKE_S / 2)
    protocol.handshakeCompleted()  # as Twisted's TLS layer tells its protocol

    clock.advance(IDLE_S - 0.25)
    assert not transport.disconnecting
    clock.advance(0.25)
    assert transport.disconnecting
    assert closing_reasons(logged) == ["idle for 600 s"]
