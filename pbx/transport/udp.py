"""SIP over UDP: one datagram is one message (RFC 3261 §18)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.protocol import DatagramProtocol

from pbx.sip.peer import Peer
from pbx.transport.connections import Connections
from pbx.transport.sink import MessageSink

# Keep-alives that are not SIP: some phones send a bare CRLF or a few NULs
# to hold their NAT binding open. Nothing shorter than this is a message.
_SHORTEST_MESSAGE = 16


_PEER_CACHE_SIZE = 20_000
"""Addresses whose `Peer` is kept for reuse: every phone of a big office, and then some."""


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
        # ICMP errors from an earlier send surface here on Linux, and a full
        # socket buffer drops the datagram: the transaction's timers deal with
        # both, as with any loss on the way.
        with contextlib.suppress(OSError):
            sendto(data, (host, port))

    def _is_our_family(self, host: str) -> bool:
        if self._family == socket.AF_INET6:
            return isIPv6Address(host)
        return isIPAddress(host)


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
