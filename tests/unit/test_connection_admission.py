"""Who may open a connection: per-source limits, a full table, the oldest idle closed for room.

The listener's factory is driven as Twisted's accept loop drives it: a None
from `buildProtocol` is a socket closed at once. Sockets are StringTransports
and time a `Clock`; tests/service/test_connection_limits.py does the same
over real sockets, and with a real open-file limit.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from pbx.sip.errors import SipParseError
from pbx.sip.peer import Peer
from pbx.transport.connections import MAX_EVICTIONS_IN_FLIGHT, AdmittingFactory, Connections
from pbx.transport.stream import SipStreamFactory, SipStreamProtocol, StreamTimeouts

HALF = b"OPTIONS sip:pbx.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bKh\r\n"


class NullSink:
    def receive_data(self, data: bytes, peer: Peer, *, datagram: bool) -> None:
        pass

    def receive_broken_stream(self, error: SipParseError, data: bytes, peer: Peer) -> None:
        raise AssertionError(f"broken stream: {error}")

    def connection_closed(self, peer: Peer) -> None:
        pass


class Listener:
    """A stream listener with admission in front, and the sockets it accepted."""

    def __init__(self, connections: Connections) -> None:
        self.clock = Clock()
        self.connections = connections
        self.factory = AdmittingFactory(
            SipStreamFactory("tcp", NullSink(), connections, self.clock, StreamTimeouts()),
            connections, self.clock)
        self.ports = iter(range(20000, 60000))

    def accept(self, host: str) -> tuple[SipStreamProtocol, StringTransport] | None:
        """None when the connection was refused (Twisted closes the socket at once)."""
        address = IPv4Address("TCP", host, next(self.ports))
        protocol = self.factory.buildProtocol(address)
        if protocol is None:
            return None
        assert isinstance(protocol, SipStreamProtocol)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport


def closed_by_the_kernel(protocol: SipStreamProtocol) -> None:
    """What the reactor does on its next turn after an abort: the socket is gone."""
    protocol.connectionLost()


class Warnings:
    """The warning lines logged so far, as an administrator reads them."""

    def __init__(self, observer: EventLoggingObserver) -> None:
        self.observer = observer

    def lines(self) -> list[str]:
        return [formatEvent(event) for event in self.observer
                if event["log_level"] == LogLevel.warn]


@pytest.fixture
def warnings() -> Iterator[Warnings]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    try:
        yield Warnings(observer)
    finally:
        globalLogPublisher.removeObserver(observer)


def test_a_source_over_its_limit_is_refused_while_others_connect() -> None:
    listener = Listener(Connections(max_per_source=3))
    first = [listener.accept("192.0.2.1") for _ in range(3)]
    assert all(accepted is not None for accepted in first)

    assert listener.accept("192.0.2.1") is None
    assert listener.accept("192.0.2.2") is not None

    # One of the first source's connections goes: it may open one again.
    assert first[0] is not None
    first[0][0].connectionLost()
    assert listener.accept("192.0.2.1") is not None
    assert listener.accept("192.0.2.1") is None


def test_refusals_are_logged_once_a_minute_with_their_count(warnings: Warnings) -> None:
    listener = Listener(Connections(max_per_source=1))
    listener.accept("192.0.2.1")

    for _ in range(500):
        assert listener.accept("192.0.2.1") is None
    lines = warnings.lines()
    assert len(lines) == 1
    assert "192.0.2.1" in lines[0] and "1 refused" in lines[0]

    listener.clock.advance(60.0)
    assert listener.accept("192.0.2.1") is None
    lines = warnings.lines()
    assert len(lines) == 2
    assert "500 refused" in lines[1]  # 499 in the quiet minute, and this one


def test_a_full_table_closes_the_connection_idle_longest_to_make_room(
        warnings: Warnings) -> None:
    listener = Listener(Connections(max_connections=3))
    oldest, middle, newest = (listener.accept(f"192.0.2.{n}") for n in (1, 2, 3))
    assert oldest is not None and middle is not None and newest is not None
    listener.clock.advance(1.0)
    oldest[0].dataReceived(b"\r\n\r\n")  # a keep-alive: now the most recently active

    assert listener.accept("198.51.100.1") is not None

    assert [t.disconnecting for _, t in (oldest, middle, newest)] == [False, True, False]
    lines = warnings.lines()
    assert len(lines) == 1 and "192.0.2.2" in lines[0]


def test_connections_with_a_flow_or_half_a_message_are_not_closed_for_room() -> None:
    connections = Connections(max_connections=3)
    listener = Listener(connections)
    registered, sending, idle = (listener.accept(f"192.0.2.{n}") for n in (1, 2, 3))
    assert registered is not None and sending is not None and idle is not None
    connections.carries_flow = {registered[0].connection_id}.__contains__
    sending[0].dataReceived(HALF)

    assert listener.accept("198.51.100.1") is not None
    assert [t.disconnecting for _, t in (registered, sending, idle)] == [False, False, True]
    closed_by_the_kernel(idle[0])

    # Nothing idle is left but the newcomer itself, which is the newest.
    assert listener.accept("198.51.100.2") is not None
    assert not registered[1].disconnecting and not sending[1].disconnecting


def test_with_nothing_idle_to_close_the_newcomer_is_refused(warnings: Warnings) -> None:
    connections = Connections(max_connections=2)
    listener = Listener(connections)
    held = [listener.accept(f"192.0.2.{n}") for n in (1, 2)]
    connections.carries_flow = lambda connection_id: True  # both phones registered

    for _ in range(10):
        assert listener.accept("198.51.100.1") is None

    assert not any(accepted[1].disconnecting for accepted in held if accepted is not None)
    lines = warnings.lines()
    assert len(lines) == 1 and "none is idle" in lines[0]


def test_closing_for_room_is_bounded_until_the_sockets_are_gone() -> None:
    # Aborted sockets close on the reactor's next turn: until then they
    # still hold descriptors, so only so many may be in flight.
    connections = Connections(max_connections=100)
    listener = Listener(connections)
    for n in range(100):
        listener.accept(f"10.0.{n // 250}.{n % 250 + 1}")

    admitted = [listener.accept("198.51.100.1") for _ in range(2 * MAX_EVICTIONS_IN_FLIGHT)]

    assert sum(accepted is not None for accepted in admitted) == MAX_EVICTIONS_IN_FLIGHT
    assert connections.open_count == 100 + MAX_EVICTIONS_IN_FLIGHT
