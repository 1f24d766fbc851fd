"""The UDP transport's lean path, on real sockets on 127.0.0.1 (no reactor needed).

The protocol is attached to a real Twisted `udp.Port` (listening, never run
by a reactor: reads are driven by hand with ``doRead``), so ``socket.sendto``
and Twisted's own checks are the real ones.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest
from twisted.internet import reactor
from twisted.internet.error import InvalidAddressError

from pbx.sip.errors import SipParseError
from pbx.sip.peer import Peer
from pbx.transport.connections import Connections
from pbx.transport.udp import MAX_HELD_SENDS, SipDatagramProtocol, listen_udp


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


def test_answers_to_a_burst_go_out_when_the_burst_is_read(phone: socket.socket) -> None:
    """Answers are held while more datagrams wait, then sent in order (`SipUdpPort`)."""
    seen_at_send: list[int] = []
    arrived_during_burst: list[bytes] = []

    class Echo(Sink):
        def receive_data(self, data: bytes, peer: Peer, *, datagram: bool) -> None:
            super().receive_data(data, peer, datagram=datagram)
            protocol.send(b"answer " + data[-1:], peer.host, peer.port)
            seen_at_send.append(len(self.received))
            with contextlib.suppress(BlockingIOError):
                arrived_during_burst.append(phone.recv(100))

    protocol = SipDatagramProtocol(Echo(), Connections())
    port = listen_udp(reactor, 0, protocol, interface="127.0.0.1")  # type: ignore[arg-type]
    try:
        where = ("127.0.0.1", port.getHost().port)
        for n in range(3):
            phone.sendto(MESSAGE + str(n).encode(), where)
        phone.setblocking(False)
        port.doRead()
        assert seen_at_send == [1, 2, 3]  # all three handled in one read
        assert arrived_during_burst == []  # nothing went out before the burst ended
        phone.settimeout(2)
        assert [phone.recv(100) for _ in range(3)] == [b"answer 0", b"answer 1", b"answer 2"]
        # Outside a read burst (a timer's retransmission), a send goes at once.
        protocol.send(b"now", "127.0.0.1", phone.getsockname()[1])
        assert phone.recv(100) == b"now"
    finally:
        port.stopListening()


def test_a_long_burst_sends_in_batches(phone: socket.socket) -> None:
    protocol = SipDatagramProtocol(Sink(), Connections())
    port = listen_udp(reactor, 0, protocol, interface="127.0.0.1")  # type: ignore[arg-type]
    try:
        target = phone.getsockname()
        protocol.begin_burst()
        for n in range(MAX_HELD_SENDS - 1):
            protocol.send(b"%d" % n, *target)
        phone.setblocking(False)
        with pytest.raises(BlockingIOError):
            phone.recv(100)  # held
        protocol.send(b"last of the batch", *target)  # the cap: the batch goes now
        phone.settimeout(2)
        got = [phone.recv(100) for _ in range(MAX_HELD_SENDS)]
        assert got[0] == b"0" and got[-1] == b"last of the batch"
        protocol.end_burst()
    finally:
        port.stopListening()


def test_an_error_of_the_core_on_one_datagram_is_logged_and_the_burst_goes_on(
        phone: socket.socket) -> None:
    from twisted.logger import globalLogPublisher

    class Fussy(Sink):
        def receive_data(self, data: bytes, peer: Peer, *, datagram: bool) -> None:
            if data.endswith(b"0"):
                raise ValueError("the core tripped")
            super().receive_data(data, peer, datagram=datagram)

    sink = Fussy()
    protocol = SipDatagramProtocol(sink, Connections())
    port = listen_udp(reactor, 0, protocol, interface="127.0.0.1")  # type: ignore[arg-type]
    logged: list[dict[str, object]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        where = ("127.0.0.1", port.getHost().port)
        for n in range(2):
            phone.sendto(MESSAGE + str(n).encode(), where)
        port.doRead()
        assert [data for data, _ in sink.received] == [MESSAGE + b"1"]
        failures = [event for event in logged if "log_failure" in event]
        assert len(failures) == 1
        assert "the core tripped" in str(failures[0]["log_failure"])
        failures[0]["log_failure"].cleanFailure()  # type: ignore[attr-defined]
    finally:
        globalLogPublisher.removeObserver(logged.append)
        port.stopListening()
