"""The SIP listeners as services: one child of `PbxService`'s ``listeners`` per transport.

Theory of operation
-------------------
Each `SipListener` is a named service (``"udp"``, ``"tcp"``, ``"tls"``,
``"ws"``, ``"wss"``) that binds its socket in ``privilegedStartService``
(before twistd drops privileges) and stops listening in ``stopService``.
The sockets are opened by a `Binder`, one for the whole PBX: it builds the
protocol factory of each transport around the one endpoint every listener
shares [twisted.names], wraps TLS around the stream factory, and turns every
failure into a `SystemExit` naming the config file, the key and the reason.
Connections a listener accepted are not its to close: they belong to
`pbx.transport.connections.Connections`, and outlive a listener replaced on
reload.

`Listeners.reconfigure` is the reload [buildbot ``BuildbotServiceManager``]:
it compares the listeners running with the ones the new config wants, by
name, and leaves alone every one whose address (and TLS files) did not
change. A changed one is stopped, and once its socket is closed (the new
address may share its port) the new one is bound; when that fails, the old
address is bound again and the failure logged: a reload never leaves the
PBX deaf on a transport it was serving.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from pbx.configtable import Listen
from pbx.sip.peer import Peer
from pbx.transport.connections import AdmittingFactory, Connections
from pbx.transport.sink import MessageSink
from pbx.transport.stream import SipStreamClientFactory, SipStreamFactory, StreamTimeouts
from pbx.transport.udp import SipDatagramProtocol, listen_udp

TLS_TRANSPORTS = ("tls", "wss")
"""The listeners that use the certificate: a new one replaces them."""
FILES_KEPT_FREE = 100
"""Descriptors kept out of the connection count: listeners, the SQLite files (database,
WAL, shared memory), logs, the reactor's own, outbound connections being opened, and
connections closed to make room whose sockets are not shut yet (at most
`pbx.transport.connections.MAX_EVICTIONS_IN_FLIGHT`). Never more than half the limit."""
UNLIMITED_FILES = 1 << 20
"""What an unlimited open-file limit is taken for: Linux's default fs.nr_open."""


class Binder:
    """Opens the listening sockets of every transport, for one endpoint.

    ``tls_files`` gives the certificate and key (making a self-signed pair
    when none is configured); the server context made from them is kept
    until `renew_tls`, so that every TLS listener serves the same one.
    """

    log = Logger()

    def __init__(self, *, reactor: Any, endpoint: MessageSink, connections: Connections,
                 stream_timeouts: StreamTimeouts, config_path: Path,
                 tls_files: Callable[[], tuple[Path, Path]]) -> None:
        # Any: the reactor provides many interfaces (time, UDP, TCP, SSL).
        self.reactor: Any = reactor
        self.endpoint = endpoint
        self.connections = connections
        self.stream_timeouts = stream_timeouts
        self.config_path = config_path
        self.tls_files = tls_files
        self._context: Any = None

    def renew_tls(self) -> None:
        """Read the certificate and key again for the next TLS listener bound; SystemExit
        (naming the key) when they are unusable, and the context in use stays."""
        self._context = self._read_tls()

    def bind(self, name: str, listen: Listen) -> IListeningPort:
        """Listen for SIP over transport `name` at `listen`; SystemExit naming the key."""
        path = self.config_path
        try:
            return self._listen(name, listen)
        except CannotListenError as error:
            raise SystemExit(f"{path}: sip.{name}: cannot listen on {listen}: "
                             f"{error.socketError}") from None
        except (OSError, ValueError) as error:
            raise SystemExit(f"{path}: sip.{name}: {error}") from None

    def _tls_context(self) -> Any:
        if self._context is None:
            self._context = self._read_tls()
        return self._context

    def _read_tls(self) -> Any:
        path = self.config_path
        try:
            from OpenSSL import SSL

            from pbx.transport.tls import TlsFileError, server_context
        except ImportError as error:
            # pbx.memory.leave_tls_unloaded: no TLS listener at start-up.
            raise SystemExit(f"{path}: sip.tls, sip.wss: TLS support was left unloaded at "
                             f"start-up, when no listener needed it; restart the PBX to add "
                             f"one ({error})") from None
        cert, key = self.tls_files()
        try:
            return server_context(cert, key)
        except TlsFileError as error:
            raise SystemExit(f"{path}: sip.{error.key}: {error}") from None
        except SSL.Error as error:
            raise SystemExit(f"{path}: sip.tls_cert, sip.tls_key: {cert}, {key}: OpenSSL "
                             f"refused them: {error}") from None

    def _listen(self, name: str, listen: Listen) -> IListeningPort:
        """Bind listener `name`; a stream listener asks `Connections.admit` at each accept."""
        reactor = self.reactor
        host = listen.host
        if name == "udp":
            protocol = SipDatagramProtocol(self.endpoint, self.connections)
            port: IListeningPort = listen_udp(reactor, listen.port, protocol, interface=host)
            return port
        context = self._tls_context() if name in TLS_TRANSPORTS else None
        factory: Any
        if name in ("tcp", "tls"):
            factory = SipStreamFactory(name, self.endpoint, self.connections, reactor,
                                       self.stream_timeouts)
        else:
            # autobahn (and, for TLS, cryptography) cost memory every process
            # pays once imported: a PBX without these listeners never loads them.
            from pbx.transport.ws import SipWebSocketFactory

            factory = SipWebSocketFactory(
                name, self.endpoint, self.connections, reactor,
                handshake_timeout_s=self.stream_timeouts.handshake_s,
                message_timeout_s=self.stream_timeouts.message_s)
        if context is not None:
            # What listenSSL does, with the admission check outside the TLS
            # wrapper (which cannot refuse a connection itself).
            from pbx.transport.tls import SipTlsFactory

            factory = SipTlsFactory(context, False, factory)
            if name == "tls":
                self.connections.connectors["tls"] = self._connect_tls
        elif name == "tcp":
            self.connections.connectors["tcp"] = self._connect_tcp
        port = reactor.listenTCP(listen.port, AdmittingFactory(factory, self.connections, reactor),
                                 interface=host)
        return port

    def _connect_tcp(self, peer: Peer, data: bytes,
                     on_failure: Callable[[], None] | None) -> None:
        factory = SipStreamClientFactory(peer, data, self.endpoint, self.connections,
                                         self.reactor, self.stream_timeouts,
                                         on_failure=on_failure)
        self.reactor.connectTCP(peer.host, peer.port, factory, timeout=10)

    def _connect_tls(self, peer: Peer, data: bytes,
                     on_failure: Callable[[], None] | None) -> None:
        factory = SipStreamClientFactory(peer, data, self.endpoint, self.connections,
                                         self.reactor, self.stream_timeouts,
                                         on_failure=on_failure)
        from pbx.transport.tls import client_context

        self.reactor.connectSSL(peer.host, peer.port, factory, client_context(peer.host),
                                timeout=10)


class SipListener(Service):
    """SIP over one transport at one address: bound at start-up, let go at stop."""

    log = Logger()

    def __init__(self, transport: str, listen: Listen, binder: Binder, *,
                 address: Listen | None = None) -> None:
        self.setName(transport)
        self.listen = listen
        """The address the config asks for (port 0: any)."""
        self.address = address or listen
        """Where to bind: the configured address, or the one a replaced listener held."""
        self.binder = binder
        self.port: IListeningPort | None = None
        self._bound: Listen | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.port is None:
            self.port = port = self.binder.bind(self.transport, self.address)
            address = port.getHost()
            # Asked for every call leg's Via and Contact (`PbxService.local_address`).
            self._bound = Listen(host=str(getattr(address, "host", "")),
                                 port=int(getattr(address, "port", 0)))
            self.log.info("Listening for SIP over {transport} on {address}",
                          transport=self.transport.upper(), address=str(self.bound()))

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.port is not None:
            self.log.info("Stopped listening for SIP over {transport} on {address}",
                          transport=self.transport.upper(), address=str(self.bound()))
        return self.release()

    def release(self) -> Deferred[None] | None:
        """Stop listening (once); fires when the socket is closed."""
        port, self.port, self._bound = self.port, None, None
        if port is None:
            return None
        stopped: Deferred[None] | None = port.stopListening()
        return stopped

    @property
    def transport(self) -> str:
        return str(self.name)

    def bound(self) -> Listen:
        """Where it really listens (port 0 in the config means any)."""
        assert self._bound is not None, f"the {self.transport} listener is not bound"
        return self._bound


class Listeners(MultiService):
    """Every SIP listener, by transport name; reconfigured in place on reload."""

    log = Logger()

    def __init__(self, binder: Binder, listeners: Mapping[str, Listen], *,
                 max_connections: int) -> None:
        super().__init__()
        self.setName("listeners")
        self.binder = binder
        self.max_connections = max_connections
        """``sip.max_connections``: lowered at start-up to what the open-file limit allows."""
        for name, listen in listeners.items():
            self.addService(SipListener(name, listen, binder))

    def privilegedStartService(self) -> None:
        """Fit the connection table to the open-file limit, then bind every listener in
        order; on a failure, let go of those bound before it."""
        self._fit_connections_to_file_limit()
        try:
            super().privilegedStartService()
        except BaseException:
            self.release()
            raise

    def _fit_connections_to_file_limit(self) -> None:
        """Raise the soft open-file limit to the hard one, and hold no more connections than fit.

        Each connection is a descriptor. Distributions start services with a
        soft limit of 1,024 (a leftover of select()) and a hard one far
        higher, which a process may raise itself to. Below that limit
        `Connections` keeps ``FILES_KEPT_FREE`` descriptors spare, so the
        kernel never refuses an accept (EMFILE): a full table closes its
        oldest idle connection or refuses the newcomer, once, cleanly.
        """
        try:
            import resource
        except ImportError:  # not a POSIX system: nothing to raise
            return
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        raised_from: int | None = None
        if soft != hard:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, UNLIMITED_FILES)
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            except (ValueError, OSError) as error:
                self.log.warn("Could not raise the open-file limit from {soft} to {hard}: "
                              "{error}", soft=soft, hard=target, error=str(error))
            else:
                raised_from, soft = soft, target
        if soft == resource.RLIM_INFINITY:
            soft = UNLIMITED_FILES
        configured = self.max_connections
        allowed = max(1, soft - min(FILES_KEPT_FREE, soft // 2))
        table = self.binder.connections
        table.max_connections = min(configured, allowed)
        connections = table.max_connections
        if raised_from is None:
            self.log.info("Open-file limit {limit}: at most {connections} stream connections "
                          "at once", limit=soft, connections=connections)
        else:
            self.log.info("Open-file limit raised from {before} to {limit}: at most "
                          "{connections} stream connections at once", before=raised_from,
                          limit=soft, connections=connections)
        if allowed < configured:
            self.log.info("sip.max_connections is {configured}: raise the hard open-file limit "
                          "(ulimit -Hn, systemd's LimitNOFILE=) to hold that many",
                          configured=configured)

    def __getitem__(self, transport: str) -> SipListener:
        listener = self.namedServices[transport]
        assert isinstance(listener, SipListener)
        return listener

    def bound(self) -> dict[str, SipListener]:
        """The listeners bound now, by transport."""
        return {name: listener for name, listener in self.namedServices.items()
                if isinstance(listener, SipListener) and listener.port is not None}

    def release(self) -> None:
        """Let go of every socket bound so far (a start-up that failed half-way)."""
        for listener in list(self):
            if isinstance(listener, SipListener):
                listener.release()

    async def reconfigure(self, wanted: Mapping[str, Listen], *,
                          tls_changed: bool = False) -> list[str]:
        """Make the listeners those of `wanted`, touching only what differs.

        ``tls_changed``: the certificate or key changed, so the TLS listeners
        are replaced too (with a context read first: files that do not work
        leave the running ones alone). Returns the transports changed; a
        failure is logged, never raised.
        """
        if tls_changed and any(name in wanted for name in TLS_TRANSPORTS):
            try:
                self.binder.renew_tls()
            except SystemExit as error:
                self.log.error("TLS listeners kept with the certificate in use: {error}",
                               error=str(error))
                tls_changed = False
        running = {listener.transport: listener for listener in list(self)
                   if isinstance(listener, SipListener)}
        changed: list[str] = []
        for name in sorted(set(running) | set(wanted), key=_transport_order):
            old, new = running.get(name), wanted.get(name)
            renew = tls_changed and name in TLS_TRANSPORTS
            if old is not None and old.listen == new and not renew:
                continue
            if await self._replace(name, old, new):
                changed.append(name)
        return changed

    async def _replace(self, name: str, old: SipListener | None, new: Listen | None) -> bool:
        """Stop `old` (waiting for its socket to close), then bind `new`; False if it failed
        and `old`'s address was bound again."""
        held = None
        if old is not None:
            held = old.bound() if old.port is not None else old.listen
            await maybeDeferred(self.removeService, old)
        if new is None:
            return True
        try:
            self.addService(SipListener(name, new, self.binder))
            return True
        except SystemExit as error:
            self.log.error("Reload could not listen for SIP over {transport}: {error}",
                           transport=name.upper(), error=str(error))
        except Exception:
            self.log.failure("Reload could not listen for SIP over {transport}",
                             transport=name.upper())
        await maybeDeferred(self.removeService, self.namedServices[name])
        if old is not None:
            try:
                self.addService(SipListener(name, old.listen, self.binder, address=held))
            except SystemExit as error:
                self.log.error("Could not listen again on {address}: {error}",
                               address=str(held), error=str(error))
                await maybeDeferred(self.removeService, self.namedServices[name])
        return False


def _transport_order(name: str) -> int:
    order = ("udp", "tcp", "tls", "ws", "wss")
    return order.index(name) if name in order else len(order)

