"""How the core sends a message it has made: the one protocol both halves use.

`pbx.transport.connections.Connections` implements it. A protocol rather
than an import because the transports sit above the core (DESIGN.md): they
call the endpoint, and the core never imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pbx.sip.peer import Peer


class Sender(Protocol):
    """Send bytes to a peer over its transport: UDP, or the connection it has."""

    def send(self, data: bytes, peer: Peer,
             on_failure: Callable[[], None] | None = None) -> bool:
        """False when there is no way to reach `peer` now; True for a connection
        being opened, and ``on_failure`` runs if that fails."""
