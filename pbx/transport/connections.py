"""The table of open connections, who may open one, and sending a message to a `Peer`.

Responses go back over the connection their request came on, and requests
to a phone that registered over TCP, TLS or WebSocket go over the
connection it opened while that is open (RFC 5626 §5.3, RFC 7118 §5): both
look the connection up here, by id first and then by address. Only when no
connection is open does a TCP or TLS peer get a new outbound one
(`Connector`); a WebSocket peer cannot be connected to, and the send fails.

Theory of operation: admission
------------------------------
Every open stream socket (inbound or outbound, TLS or WebSocket still
shaking hands included) is counted here from the moment it is accepted
(`opened`) to the moment it is gone (`closed`), by source address and in
all, since each costs a file descriptor and a buffer. A new inbound
connection is asked about before anything is built for it (`admit`, from
`AdmittingFactory` in front of every listener, TLS included; a refused
socket is closed by Twisted at once, with no protocol, TLS state or log):

- a source address already holding ``max_per_source`` connections is
  refused, so one host cannot take the table (an office NAT with a hundred
  phones, each with its connection, stays well under the default);
- when ``max_connections`` are open (the service sets it below the
  open-file limit, so the kernel never says EMFILE), the connection idle
  longest is aborted to make room: one with no binding riding on it
  (`carries_flow`, RFC 5626 flows stay up) and no message half received.
  When there is none, the newcomer is refused instead.

``_open`` is kept in order of last activity (`touched` moves a connection to
the end), so the oldest idle connection is found from the front; one found
busy or carrying a flow is moved to the end, so the next search does not
walk past it again. Aborted connections still count until their socket is
closed (on the reactor's next turn); at most ``MAX_EVICTIONS_IN_FLIGHT`` of
them at a time, so the descriptors in use never exceed the limit by more.

Refusals and evictions can come thousands of times a second in a flood:
each kind is logged at most once per ``LOG_EVERY_S`` with a count of what
happened since (`_Occasional`), never once per attempt.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IAddress, IProtocolFactory, IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger

from pbx.sip.peer import Peer

MAX_EVICTIONS_IN_FLIGHT = 16
"""Aborted connections whose sockets have not closed yet, beyond which newcomers are refused."""
EVICTION_SCAN_LIMIT = 256
"""Connections looked at for an idle one per admission; bounds the cost of one accept."""
LOG_EVERY_S = 60.0
"""At most one line per minute for each kind of refusal: a flood must not flood the log."""


class Connection(Protocol):
    """A stream connection as the table sees it."""

    connection_id: int
    sip_peer: Peer

    @property
    def message_pending(self) -> bool:
        """Part of a message has arrived and the rest has not: not idle."""

    @property
    def last_activity(self) -> float:
        """When it last received anything (the reactor's clock)."""

    def send_message(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None:
        """Close at once, without waiting for buffered data to go out."""


class Connector(Protocol):
    """Opens an outbound TCP or TLS connection; the data is written once it is up.

    ``on_failure`` runs if the connection cannot be made, so that the
    transaction that sent the data learns of it at once (RFC 3261 §17.1.4)
    rather than after its timeout.
    """

    def __call__(self, peer: Peer, data: bytes,
                 on_failure: Callable[[], None] | None) -> None: ...


class _Occasional:
    """Counts an event and says when it is time for one log line about it."""

    __slots__ = ("_count", "_next_line_at", "every_s")

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        self._count = 0
        self._next_line_at = float("-inf")

    def tick(self, now: float) -> int:
        """0, or (when a line is due) how many events happened since the last line."""
        self._count += 1
        if now < self._next_line_at:
            return 0
        count, self._count = self._count, 0
        self._next_line_at = now + self.every_s
        return count


def _no_flow(connection_id: int) -> bool:
    return False


class Connections:
    """Where every message the core sends leaves, and the open stream connections
    (routing by id and address, and admission). Bounded.

    Compiled (`pbx.compiled`): `send` is on the path of every answer, and as
    interpreted code it cost more than the UDP path it leads to.
    """

    def __init__(self, max_connections: int = 10_000, max_per_source: int = 256) -> None:
        # The instance's, with its namespace spelt out: a Logger as a class
        # attribute names itself after the class only in interpreted code.
        self.log = Logger(namespace="pbx.transport.connections.Connections")
        self._by_id: dict[int, Connection] = {}
        self._by_address: dict[tuple[str, str, int], Connection] = {}
        self._ids = itertools.count(1)
        self.max_connections = max_connections
        self.max_per_source = max_per_source
        self.udp_send: Callable[[bytes, str, int], None] | None = None
        """The UDP listener's send (data, host, port), which `send` uses for UDP
        peers; set while it listens (`pbx.transport.udp`)."""
        self.connectors: dict[str, Connector] = {}
        self.carries_flow: Callable[[int], bool] = _no_flow
        """Whether a binding rides on the connection of this id (set by the service)."""
        self._open: dict[int, Connection] = {}  # every socket, oldest activity first
        self._per_source: dict[str, int] = {}
        self._evicting: set[int] = set()
        self._refused_source = _Occasional()
        self._refused_full = _Occasional()
        self._evicted = _Occasional()

    def next_id(self) -> int:
        return next(self._ids)

    def __len__(self) -> int:
        return len(self._by_id)

    # ------------------------------------------------------------ routing

    def add(self, connection: Connection) -> None:
        """Make a connection reachable for `find` and `send` (it is up, and speaks SIP)."""
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
        for connection in list(self._open.values()):
            connection.close()

    # ---------------------------------------------------------- admission

    @property
    def open_count(self) -> int:
        """Sockets open now, including those being closed to make room."""
        return len(self._open)

    def admit(self, host: str, now: float) -> bool:
        """Whether a connection just accepted from `host` may stay (see the module notes)."""
        held = self._per_source.get(host, 0)
        if held >= self.max_per_source:
            count = self._refused_source.tick(now)
            if count:
                self.log.warn(
                    "Refused a connection from {host}: it already holds {limit}, the most one "
                    "address may (sip.max_connections_per_source); {count} refused for this "
                    "since the last such line (logged at most once a minute)",
                    host=host, limit=self.max_per_source, count=count)
            return False
        if len(self._open) - len(self._evicting) < self.max_connections:
            return True
        if len(self._evicting) < MAX_EVICTIONS_IN_FLIGHT and self._evict_oldest_idle(now):
            return True
        count = self._refused_full.tick(now)
        if count:
            self.log.warn(
                "Refused a connection from {host}: {limit} connections are open, the most "
                "the open-file limit and sip.max_connections allow, and none is idle; "
                "{count} refused for this since the last such line (logged at most once a "
                "minute)",
                host=host, limit=self.max_connections, count=count)
        return False

    def opened(self, connection: Connection) -> None:
        """Count a socket from its first moment (before TLS or a WebSocket is up)."""
        self._open[connection.connection_id] = connection
        host = connection.sip_peer.host
        self._per_source[host] = self._per_source.get(host, 0) + 1

    def touched(self, connection: Connection) -> None:
        """It received something: it is now the last in line to be closed for room."""
        connection_id = connection.connection_id
        open_ = self._open
        if open_.pop(connection_id, None) is not None:
            open_[connection_id] = connection

    def closed(self, connection: Connection) -> None:
        connection_id = connection.connection_id
        if self._open.pop(connection_id, None) is None:
            return
        self._evicting.discard(connection_id)
        host = connection.sip_peer.host
        held = self._per_source.get(host, 0) - 1
        if held > 0:
            self._per_source[host] = held
        else:
            self._per_source.pop(host, None)

    def _evict_oldest_idle(self, now: float) -> bool:
        busy: list[Connection] = []
        chosen: Connection | None = None
        for scanned, (connection_id, connection) in enumerate(self._open.items()):
            if scanned >= EVICTION_SCAN_LIMIT:
                break
            if connection_id in self._evicting:
                continue
            if connection.message_pending or self.carries_flow(connection_id):
                busy.append(connection)
                continue
            chosen = connection
            break
        for connection in busy:
            self.touched(connection)
        if chosen is None:
            return False
        self._evicting.add(chosen.connection_id)
        count = self._evicted.tick(now)
        if count:
            self.log.warn(
                "Closed the connection idle longest ({peer}, quiet for {idle_s:.0f} s) to make "
                "room: {limit} connections are open, the most the open-file limit and "
                "sip.max_connections allow; {count} closed for room since the last such line "
                "(logged at most once a minute)",
                peer=str(chosen.sip_peer), idle_s=now - chosen.last_activity,
                limit=self.max_connections, count=count)
        chosen.abort()
        return True


class AdmittingFactory(Factory):
    """In front of a listener's factory: asks `Connections.admit` before anything is built.

    Returning None from `buildProtocol` makes Twisted close the accepted
    socket at once. It must sit outside the TLS wrapper, which would wrap
    a None protocol rather than refuse.
    """

    noisy = False

    def __init__(self, wrapped: IProtocolFactory, connections: Connections,
                 clock: IReactorTime) -> None:
        self.wrapped = wrapped
        self.connections = connections
        self.clock = clock

    def buildProtocol(self, addr: IAddress | None) -> TwistedProtocol | None:
        if addr is None or not self.connections.admit(str(getattr(addr, "host", "")),
                                                       self.clock.seconds()):
            return None
        protocol = self.wrapped.buildProtocol(addr)
        assert protocol is None or isinstance(protocol, TwistedProtocol)
        return protocol

    def logPrefix(self) -> str:
        """The wrapped factory's, for Twisted's "... starting on PORT" line."""
        prefix = getattr(self.wrapped, "logPrefix", None)
        return str(prefix()) if callable(prefix) else type(self.wrapped).__name__

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()
