"""SIP over UDP: one datagram is one message (RFC 3261 §18)."""

from __future__ import annotations

import contextlib
import socket

from twisted.internet import udp
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IReactorFDSet
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from pbx.transport.connections import Connections
from pbx.transport.datagrams import MAX_HELD_SENDS, SHORTEST_MESSAGE, DatagramPath
from pbx.transport.sink import MessageSink

__all__ = ["MAX_HELD_SENDS", "SipDatagramProtocol", "SipUdpPort", "listen_udp"]

log = Logger(namespace="pbx.transport.udp")

class SipDatagramProtocol(DatagramProtocol):
    """Twisted's side of SIP over UDP; the per-datagram work is `DatagramPath`'s.

    Sends go straight to ``socket.sendto`` once the destination is known to
    be an IP address of our family (Twisted's ``Port.write`` checks that on
    every call). Anything else goes through ``Port.write``, which refuses a
    host name (resolving it here would block the reactor).
    """

    def __init__(self, sink: MessageSink, connections: Connections) -> None:
        self.sink = sink
        self.connections = connections
        self._family = socket.AF_INET
        self.path = DatagramPath(sink, on_error=self._core_failed, slow_send=self._write,
                                 is_our_family=self._is_our_family)

    def begin_burst(self) -> None:
        """Hold sends until `end_burst`: the datagrams waiting to be read come first."""
        self.path.begin_burst()

    def end_burst(self) -> None:
        """Send what `begin_burst` held, in order."""
        self.path.end_burst()

    def startProtocol(self) -> None:
        self._family = getattr(self.transport, "addressFamily", socket.AF_INET)
        self.connections.udp_send = self.path.send
        _enlarge_receive_buffer(self.transport)
        sock = getattr(self.transport, "socket", None)
        self.path.sendto = None if sock is None else sock.sendto

    def stopProtocol(self) -> None:
        if self.connections.udp_send == self.path.send:
            self.connections.udp_send = None
        self.path.sendto = None

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) >= SHORTEST_MESSAGE:
            self.path.deliver(data, addr[0], addr[1])

    def send(self, data: bytes, host: str, port: int) -> None:
        self.path.send(data, host, port)

    def _write(self, data: bytes, host: str, port: int) -> None:
        assert self.transport is not None
        with contextlib.suppress(OSError):  # Twisted's errors for a host name stay
            self.transport.write(data, (host, port))

    def _core_failed(self) -> None:
        log.failure("Unhandled error on a datagram")

    def _is_our_family(self, host: str) -> bool:
        if self._family == socket.AF_INET6:
            return isIPv6Address(host)
        return isIPAddress(host)


class SipUdpPort(udp.Port):
    """Twisted's UDP port, reading through the protocol's compiled `DatagramPath`.

    ``doRead`` reads every datagram waiting (up to Twisted's per-call budget
    in bytes); the answers are held until the last is handled.
    """

    protocol: SipDatagramProtocol

    def doRead(self) -> None:
        self.protocol.path.read_burst(self.socket.recvfrom, self.maxPacketSize,
                                      self.maxThroughput)


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
