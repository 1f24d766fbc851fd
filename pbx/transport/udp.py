"""SIP over UDP: one datagram is one message (RFC 3261 §18)."""

from __future__ import annotations

import contextlib

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
