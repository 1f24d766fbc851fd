"""The table of open connections, and sending a message to a `Peer`.

Responses go back over the connection their request came on, and requests
to a phone that registered over TCP, TLS or WebSocket go over the
connection it opened while that is open (RFC 5626 §5.3, RFC 7118 §5): both
look the connection up here, by id first and then by address. Only when no
connection is open does a TCP or TLS peer get a new outbound one
(`Connector`); a WebSocket peer cannot be connected to, and the send fails.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Protocol

from twisted.logger import Logger

from pbx.sip.peer import Peer


class Connection(Protocol):
    """A stream connection as the table sees it."""

    connection_id: int
    sip_peer: Peer

    def send_message(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class Connector(Protocol):
    """Opens an outbound TCP or TLS connection; the data is written once it is up.

    ``on_failure`` runs if the connection cannot be made, so that the
    transaction that sent the data learns of it at once (RFC 3261 §17.1.4)
    rather than after its timeout.
    """

    def __call__(self, peer: Peer, data: bytes,
                 on_failure: Callable[[], None] | None) -> None: ...


def _no_flow(connection_id: int) -> bool:
    return False


class Connections:
    """Open stream connections by id and by (transport, host, port). Bounded."""

    log = Logger()

    def __init__(self, max_connections: int = 10_000) -> None:
        self._by_id: dict[int, Connection] = {}
        self._by_address: dict[tuple[str, str, int], Connection] = {}
        self._ids = itertools.count(1)
        self.max_connections = max_connections
        self.udp_send: Callable[[bytes, str, int], None] | None = None
        self.connectors: dict[str, Connector] = {}
        self.carries_flow: Callable[[int], bool] = _no_flow
        """Whether a binding rides on the connection of this id (set by the service)."""

    def next_id(self) -> int:
        return next(self._ids)

    def __len__(self) -> int:
        return len(self._by_id)

    def is_full(self) -> bool:
        return len(self._by_id) >= self.max_connections

    def add(self, connection: Connection) -> None:
        peer = connection.sip_peer
        self._by_id[connection.connection_id] = connection
        self._by_address[(peer.transport, peer.host, peer.port)] = connection

    def remove(self, connection: Connection) -> None:
        peer = connection.sip_peer
        self._by_id.pop(connection.connection_id, None)
        key = (peer.transport, peer.host, peer.port)
        if self._by_address.get(key) is connection:
            del self._by_address[key]

    def find(self, peer: Peer) -> Connection | None:
        if peer.connection_id is not None:
            connection = self._by_id.get(peer.connection_id)
            if connection is not None:
                return connection
        return self._by_address.get((peer.transport, peer.host, peer.port))

    def send(self, data: bytes, peer: Peer,
             on_failure: Callable[[], None] | None = None) -> bool:
        """Send one message; False when there is no way to reach the peer now.

        True for a connection being opened; if that fails, ``on_failure`` runs.
        """
        if peer.transport == "udp":
            if self.udp_send is None:
                return False
            self.udp_send(data, peer.host, peer.port)
            return True
        connection = self.find(peer)
        if connection is not None:
            connection.send_message(data)
            return True
        connector = self.connectors.get(peer.transport)
        if connector is None:
            self.log.info("No open connection to {peer} and none can be opened", peer=str(peer))
            return False
        connector(peer, data, on_failure)
        return True

    def close_all(self) -> None:
        for connection in list(self._by_id.values()):
            connection.close()
