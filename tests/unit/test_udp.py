"""The UDP transport's lean path, on real sockets on 127.0.0.1 (no reactor needed).

The protocol is attached to a real Twisted `udp.Port` (listening, never run
by a reactor: reads are driven by hand with ``doRead``), so ``socket.sendto``
and Twisted's own checks are the real ones.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from twisted.internet import reactor
from twisted.internet.error import InvalidAddressError

from pbx.sip.errors import SipParseError
from pbx.sip.peer import Peer
from pbx.transport.connections import Connections
from pbx.transport.udp import SipDatagramProtocol


class Sink:
    def __init__(self) -> None:
        self.received: list[tuple[bytes, Peer]] = []

    def receive_data(self, data: bytes, peer: Peer, *, datagram: bool) -> None:
        self.received.append((data, peer))

    def receive_broken_stream(self, error: SipParseError, data: bytes, peer: Peer) -> None:
        raise AssertionError("not a stream")

    def connection_closed(self, peer: Peer) -> None:
        raise AssertionError("not a stream")


@pytest.fixture
def udp() -> Iterator[tuple[SipDatagramProtocol, Sink, int]]:
    sink = Sink()
    protocol = SipDatagramProtocol(sink, Connections())
    port = reactor.listenUDP(0, protocol, interface="127.0.0.1")  # type: ignore[attr-defined]
    try:
        yield protocol, sink, port.getHost().port
    finally:
        port.stopListening()


@pytest.fixture
def phone() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    try:
        yield sock
    finally:
        sock.close()


MESSAGE = b"OPTIONS sip:pbx.test SIP/2.0\r\n\r\n"


def test_one_peer_object_per_source_address(udp: tuple[SipDatagramProtocol, Sink, int],
                                            phone: socket.socket) -> None:
    protocol, sink, port = udp
    for _ in range(3):
        phone.sendto(MESSAGE, ("127.0.0.1", port))
    protocol.transport.doRead()  # type: ignore[union-attr]
    assert len(sink.received) == 3
    peers = [peer for _, peer in sink.received]
    assert peers[0] == Peer("udp", "127.0.0.1", phone.getsockname()[1])
    assert peers[0] is peers[1] is peers[2]


def test_keep_alives_shorter_than_a_message_are_ignored(
        udp: tuple[SipDatagramProtocol, Sink, int], phone: socket.socket) -> None:
    protocol, sink, port = udp
    phone.sendto(b"\r\n\r\n", ("127.0.0.1", port))
    phone.sendto(MESSAGE, ("127.0.0.1", port))
    protocol.transport.doRead()  # type: ignore[union-attr]
    assert [data for data, _ in sink.received] == [MESSAGE]


def test_send_reaches_an_ip_address_and_refuses_a_host_name(
        udp: tuple[SipDatagramProtocol, Sink, int], phone: socket.socket) -> None:
    protocol, _, _ = udp
    where = phone.getsockname()
    protocol.send(b"first", "127.0.0.1", where[1])
    protocol.send(b"second", "127.0.0.1", where[1])  # the address is known good now
    assert phone.recv(100) == b"first"
    assert phone.recv(100) == b"second"
    with pytest.raises(InvalidAddressError):  # no blocking DNS lookup in the reactor
        protocol.send(b"third", "localhost", where[1])


def test_a_send_to_a_closed_port_is_not_an_error(
        udp: tuple[SipDatagramProtocol, Sink, int]) -> None:
    protocol, _, _ = udp
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    gone = closed.getsockname()[1]
    closed.close()
    for _ in range(3):  # the ICMP error of the first surfaces on a later call
        protocol.send(b"to nobody", "127.0.0.1", gone)
