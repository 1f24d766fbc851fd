"""SIP over UDP: one datagram is one message (RFC 3261 §18)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable

from twisted.internet import udp
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IReactorFDSet
from twisted.internet.protocol import DatagramProtocol

from pbx.sip.peer import Peer
from pbx.transport.connections import Connections
from pbx.transport.sink import MessageSink

# Keep-alives that are not SIP: some phones send a bare CRLF or a few NULs
# to hold their NAT binding open. Nothing shorter than this is a message.
_SHORTEST_MESSAGE = 16


_PEER_CACHE_SIZE = 20_000
"""Addresses whose `Peer` is kept for reuse: every phone of a big office, and then some."""

MAX_HELD_SENDS = 32
"""Datagrams held back during one read burst before they go out anyway.

Bounds the delay holding adds: at ~300 µs of work a message, the first
answer of a full batch waits about 10 ms, far below T1 (500 ms).
"""


class SipDatagramProtocol(DatagramProtocol):
    """Hands each datagram to the core; sends what the core asks, to any address.

    The per-datagram path is kept lean, since a registrar sees thousands of
    datagrams a second: the `Peer` of each source address is made once and
    reused (a frozen dataclass costs a microsecond or two to build), and
    sends go straight to ``socket.sendto`` once the destination is known to
    be an IP address of our family (Twisted's ``Port.write`` checks that on
    every call). Anything else goes through ``Port.write``, which refuses a
    host name (resolving it here would block the reactor).
    """

    def __init__(self, sink: MessageSink, connections: Connections) -> None:
        self.sink = sink
        self.connections = connections
        self._peers: dict[tuple[str, int], Peer] = {}
        self._sendable: set[str] = set()
        self._sendto: Callable[[bytes, tuple[str, int]], object] | None = None
        self._family = socket.AF_INET
        # Datagrams held while a read burst is handled (`SipUdpPort`); None outside one.
        self._held: list[tuple[bytes, tuple[str, int]]] | None = None

    def begin_burst(self) -> None:
        """Hold sends until `end_burst`: the datagrams waiting to be read come first.

        Why: a datagram sent to a program that sleeps waiting for it costs
        the sender the wake-up (an inter-processor interrupt; 40-130 µs a
        send on the virtual machines measured, 5 µs when the receiver is
        already awake). Answering a burst of requests back to back wakes
        each peer once instead of once per answer, so the busier the PBX,
        the less each answer costs it. Nothing is held when a single
        datagram arrives: a burst of one ends with its own answer.
        """
        self._held = []

    def end_burst(self) -> None:
        """Send what `begin_burst` held, in order."""
        held, self._held = self._held, None
        if held:
            self._send_held(held)

    def _send_held(self, held: list[tuple[bytes, tuple[str, int]]]) -> None:
        sendto = self._sendto
        if sendto is None:
            return
        for data, address in held:
            with contextlib.suppress(OSError):
                sendto(data, address)

    def startProtocol(self) -> None:
        self.connections.udp_send = self.send
        _enlarge_receive_buffer(self.transport)
        sock = getattr(self.transport, "socket", None)
        self._sendto = None if sock is None else sock.sendto
        self._family = getattr(self.transport, "addressFamily", socket.AF_INET)

    def stopProtocol(self) -> None:
        if self.connections.udp_send == self.send:
            self.connections.udp_send = None
        self._sendto = None

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < _SHORTEST_MESSAGE:
            return
        peer = self._peers.get(addr)
        if peer is None:
            if len(self._peers) >= _PEER_CACHE_SIZE:
                self._peers.clear()
            peer = self._peers[addr] = Peer("udp", addr[0], addr[1])
        self.sink.receive_data(data, peer, datagram=True)

    def send(self, data: bytes, host: str, port: int) -> None:
        assert self.transport is not None
        sendto = self._sendto
        if sendto is None or host not in self._sendable:
            if sendto is None or not self._is_our_family(host):
                # Twisted's checks and errors (a fake transport in tests, a host name).
                with contextlib.suppress(OSError):
                    self.transport.write(data, (host, port))
                return
            if len(self._sendable) >= _PEER_CACHE_SIZE:
                self._sendable.clear()
            self._sendable.add(host)
        held = self._held
        if held is not None:
            held.append((data, (host, port)))
            if len(held) >= MAX_HELD_SENDS:
                self._held = []
                self._send_held(held)
            return
        # ICMP errors from an earlier send surface here on Linux, and a full
        # socket buffer drops the datagram: the transaction's timers deal with
        # both, as with any loss on the way.
        with contextlib.suppress(OSError):
            sendto(data, (host, port))

    def _is_our_family(self, host: str) -> bool:
        if self._family == socket.AF_INET6:
            return isIPv6Address(host)
        return isIPAddress(host)


class SipUdpPort(udp.Port):
    """Twisted's UDP port, telling its `SipDatagramProtocol` where each read burst ends.

    ``doRead`` reads every datagram waiting (up to Twisted's per-call
    budget); the protocol holds its answers until the last is handled.
    """

    protocol: SipDatagramProtocol

    def doRead(self) -> None:
        protocol = self.protocol
        protocol.begin_burst()
        try:
            super().doRead()  # type: ignore[no-untyped-call]
        finally:
            protocol.end_burst()


def listen_udp(reactor: IReactorFDSet, port: int, protocol: SipDatagramProtocol,
               interface: str = "") -> SipUdpPort:
    """`reactor.listenUDP`, with the port that lets `protocol` batch its answers."""
    listening = SipUdpPort(  # type: ignore[no-untyped-call]
        port, protocol, interface, maxPacketSize=65535, reactor=reactor)
    listening.startListening()  # type: ignore[no-untyped-call]
    return listening


RECEIVE_BUFFER_BYTES = 8 * 1024 * 1024
"""Room for about two seconds of REGISTERs at 5,000/s in the kernel.

Every pause of the process (a full garbage collection, a database flush)
lets datagrams pile up; the kernel's default (~200 KB) overflows in tens of
milliseconds at thousands of messages per second, and every drop comes back
as a retransmission. SO_RCVBUFFORCE passes the system limit when we run as
root; otherwise SO_RCVBUF gets what net.core.rmem_max allows.
"""


def _enlarge_receive_buffer(transport: object) -> None:
    sock = getattr(transport, "socket", None)
    if sock is None:
        return
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    for option in (force, socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, RECEIVE_BUFFER_BYTES)
            return
        except OSError:
            continue
