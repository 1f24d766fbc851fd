"""The seam between the transport shells and the SIP core above them."""

from __future__ import annotations

from typing import Protocol

from pbx.sip.errors import SipParseError
from pbx.sip.peer import Peer


class MessageSink(Protocol):
    """What the transports deliver to: one object behind every listener [twisted.names]."""

    def receive_data(self, data: bytes, peer: Peer, *, datagram: bool) -> None:
        """One whole SIP message. ``datagram``: a missing Content-Length means "the rest"."""

    def receive_broken_stream(self, error: SipParseError, data: bytes, peer: Peer) -> None:
        """A stream that cannot be framed any more; the connection is being closed."""

    def connection_closed(self, peer: Peer) -> None:
        """A stream connection went away (its bindings stay: phones re-register)."""
