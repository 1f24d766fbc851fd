"""SIP over UDP: one datagram is one message (RFC 3261 §18)."""

from __future__ import annotations

import contextlib
import socket

from twisted.internet.protocol import DatagramProtocol

from pbx.sip.peer import Peer
from pbx.transport.connections import Connections
from pbx.transport.sink import MessageSink

# Keep-alives that are not SIP: some phones send a bare CRLF or a few NULs
# to hold their NAT binding open. Nothing shorter than this is a message.
_SHORTEST_MESSAGE = 16


class SipDatagramProtocol(DatagramProtocol):
    """Hands each datagram to the core; sends what the core asks, to any address."""

    def __init__(self, sink: MessageSink, connections: Connections) -> None:
        self.sink = sink
        self.connections = connections

    def startProtocol(self) -> None:
        self.connections.udp_send = self.send
        _enlarge_receive_buffer(self.transport)

    def stopProtocol(self) -> None:
        if self.connections.udp_send == self.send:
            self.connections.udp_send = None

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < _SHORTEST_MESSAGE:
            return
        self.sink.receive_data(data, Peer("udp", addr[0], addr[1]), datagram=True)

    def send(self, data: bytes, host: str, port: int) -> None:
        assert self.transport is not None
        # ICMP errors from an earlier send surface here on Linux; the
        # transaction's timers deal with a peer that is gone.
        with contextlib.suppress(OSError):
            self.transport.write(data, (host, port))


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
