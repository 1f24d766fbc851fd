"""CPU per message in the TCP/TLS stream shell, with no sockets and no reactor.

What `SipStreamProtocol.dataReceived` costs around the framer: the deadline
bookkeeping (message deadline, idle timer, the connection table's order of
activity). The SIP core is left out (a sink that drops the message), so the
figure is the shell's alone. Three cases: a whole REGISTER per read, the
same REGISTER in two reads, and a CRLFCRLF keep-alive per read.

    .venv/bin/python bench/stream_cpu.py [--messages 200000]

It prints microseconds per message for each case (CPU time of the thread,
best of three runs).
"""

from __future__ import annotations

import argparse
import time

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from pbx.sip.errors import SipParseError
from pbx.sip.peer import Peer
from pbx.transport.connections import Connections
from pbx.transport.stream import SipStreamFactory

REGISTER = (
    b"REGISTER sip:pbx.test SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK-bench-1;rport\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:1001@pbx.test>;tag=1\r\nTo: <sip:1001@pbx.test>\r\n"
    b"Call-ID: bench@127.0.0.1\r\nCSeq: 1 REGISTER\r\n"
    b"Contact: <sip:1001@127.0.0.1:5070;transport=tcp>\r\nExpires: 3600\r\n"
    b"Content-Length: 0\r\n\r\n"
)


class DroppingSink:
    def receive_data(self, data: bytes, peer: Peer, *, datagram: bool) -> None:
        pass

    def receive_broken_stream(self, error: SipParseError, data: bytes, peer: Peer) -> None:
        raise SystemExit(f"broken stream: {error}")

    def connection_closed(self, peer: Peer) -> None:
        pass


def run(reads: list[bytes], messages: int) -> float:
    """Microseconds of thread CPU per message, feeding `reads` in turn."""
    clock = Clock()
    address = IPv4Address("TCP", "127.0.0.1", 5070)
    connections = Connections()
    # Other connections in the table, as on a PBX serving an office.
    for _ in range(100):
        other = SipStreamFactory("tcp", DroppingSink(), connections, clock).buildProtocol(address)
        other.makeConnection(StringTransport(peerAddress=address))
    protocol = SipStreamFactory("tcp", DroppingSink(), connections, clock).buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    feed = protocol.dataReceived
    started = time.thread_time()
    for n in range(messages):
        for data in reads:
            feed(data)
        if n % 1000 == 0:
            clock.advance(0.01)
            transport.clear()
    return (time.thread_time() - started) / messages * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    args = parser.parse_args()
    half = len(REGISTER) // 2
    cases = {
        "whole REGISTER per read": [REGISTER],
        "REGISTER in two reads": [REGISTER[:half], REGISTER[half:]],
        "CRLFCRLF keep-alive per read": [b"\r\n\r\n"],
    }
    for name, reads in cases.items():
        best = min(run(reads, args.messages) for _ in range(3))
        print(f"{name:32s} {best:6.2f} µs per message")


if __name__ == "__main__":
    main()
