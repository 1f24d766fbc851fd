"""Where a message came from, or goes to: plain data the sans-I/O core can hold.

A request that came over a stream is answered on that same connection
(RFC 3261 §18.2.2), and a phone behind NAT or in a browser can only be
reached over the connection it opened (RFC 5626, RFC 7118), so a peer on a
stream transport carries the id of its connection as well as its address.
"""

from __future__ import annotations

from dataclasses import dataclass

STREAM_TRANSPORTS = frozenset({"tcp", "tls", "ws", "wss"})
SECURE_TRANSPORTS = frozenset({"tls", "wss"})
VIA_TRANSPORT = {"udp": "UDP", "tcp": "TCP", "tls": "TLS", "ws": "WS", "wss": "WSS"}


@dataclass(frozen=True, slots=True)
class Peer:
    transport: str
    """"udp", "tcp", "tls", "ws" or "wss" (lowercase, as in URI parameters)."""
    host: str
    port: int
    connection_id: int | None = None
    """The stream connection the message came over, None for UDP or a new connection."""

    @property
    def is_reliable(self) -> bool:
        """Streams retransmit by themselves: no SIP-level retransmissions (RFC 3261 §17)."""
        return self.transport in STREAM_TRANSPORTS

    @property
    def is_secure(self) -> bool:
        return self.transport in SECURE_TRANSPORTS

    @property
    def via_transport(self) -> str:
        return VIA_TRANSPORT[self.transport]

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"
