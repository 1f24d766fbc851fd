"""The PBX's service tree, built from a checked `Config`.

Theory of operation
-------------------
`PbxService` is a `MultiService`. Nothing is started until the whole config
has been checked (`pbx.config`); then, in `privilegedStartService` (before
the reactor runs, while twistd may still hold privileges), it opens the
SQLite store, loads the bindings saved by the last run, raises the soft
open-file limit to the hard one and sizes the connection table below it,
and binds every listener (each stream listener asks `Connections.admit` at
every accept: per-source and total limits). If any listener cannot be
bound, or the TLS certificate or key is unusable, the ones already bound
are closed and start-up stops with the file, the key and the reason:
nothing runs half-configured.

Binding changes and call records are written by the store's group commit
(`pbx.store.GroupCommit`): a transaction a couple of milliseconds after the
first change, and the 200s to REGISTER and BYE that report them are sent
only once it is committed, so what was answered 200 survives ``kill -9``.
A write that fails keeps everything in memory and is retried; the failure
is logged when it starts, while it lasts and when it ends, and REGISTERs
that could not be stored are answered 503. Periodic jobs keep the tables
bounded: expired bindings are removed as their time comes, and the
authentication guard and nonce table are swept. A clean stop ends the
calls, commits (sending the answers that waited for it), stops listening,
and commits what is left.

``SIGHUP`` re-reads the config file. A config that no longer validates is
refused with every problem logged, and the running one stays. Otherwise the
users are swapped in at once (a removed user's bindings go away), every
[registrar] and [security] key applies in place (the objects are changed,
not rebuilt, so bindings, calls and the nonces phones hold stay valid),
and each other changed key that is read only at start-up is logged by name
with the reason it needs a restart.

Nonces are made with a secret kept in ``data_dir/nonce.key`` (created on
first start, 0600), so a phone holding a nonce across a restart is told
``stale=true`` and retries quietly, instead of failing as if it guessed.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from types import FrameType
from typing import IO, Any
from urllib.parse import quote

from twisted.application.service import MultiService
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import gatherResults
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, globalLogPublisher, jsonFileLogObserver

from pbx import compiled
from pbx.config import Config, ConfigError, Listen, UserConfig, diff_users, load_config
from pbx.core.auth import RequestAuthenticator, SecurityEvent, strongest_first
from pbx.core.calls import CallManager
from pbx.core.endpoint import SipEndpoint, new_tag
from pbx.core.events import PluginEvents
from pbx.core.guard import AuthGuard, GuardSettings
from pbx.core.location import LocationService
from pbx.core.outbound import Outbound
from pbx.core.pike import SourceLimiter, SourceLimits
from pbx.core.plugin_dialogs import PluginDialogs
from pbx.core.plugin_requests import PluginRequests
from pbx.core.plugins import PluginError, PluginHost
from pbx.core.registrar import Registrar, RegistrarSettings
from pbx.core.router import DialplanError, DialplanLoader
from pbx.core.user_secrets import UserSecrets
from pbx.memory import CollectionPauses, give_back_free_memory
from pbx.sip.digest_server import DigestAuthenticator
from pbx.sip.peer import Peer
from pbx.sip.timers import TimerSettings
from pbx.sip.transaction import TransactionLayer
from pbx.store import INSERT_CDR, BindingWriter, GroupCommit, RowQueue, Store, StoreError
from pbx.transport.connections import AdmittingFactory, Connections
from pbx.transport.stream import SipStreamClientFactory, SipStreamFactory, StreamTimeouts
from pbx.transport.udp import SipDatagramProtocol, listen_udp

FLUSH_INTERVAL_S = 0.2
"""How often the service checks that nothing pending is left without a commit scheduled.

Every change schedules its own commit (`GroupCommit.schedule`); this is the
safety net, and costs a sum of a few lengths."""
YOUNG_GENERATION_THRESHOLD = 20_000
"""Allocations between young-generation collections (CPython's default is 700).

A PBX allocates a few hundred short-lived objects per message and holds
hundreds of thousands of long-lived ones (bindings, users, transactions);
with the default, collections ran every couple of messages and cost a
quarter of a REGISTER's time (measured: 360 → 280 µs per registration)."""
NONCE_SECRET_FILE = "nonce.key"
NONCE_SECRET_BYTES = 32
RESTART_REASONS: Mapping[str, str] = {
    "pbx.data_dir": "the database and files are opened at start-up",
    "pbx.log_format": "the log writers are set up at start-up",
    "sip.domain": "the realm is part of every stored digest hash and nonce",
    "sip.t1_ms": "the transaction timers are set at start-up",
    "sip.t2_ms": "the transaction timers are set at start-up",
    "sip.t4_ms": "the transaction timers are set at start-up",
    "sip.max_transactions": "the transaction table is sized at start-up",
    "sip.tls_cert": "the TLS listeners load it at start-up",
    "sip.tls_key": "the TLS listeners load it at start-up",
    "sip.message_timeout_s": "the stream listeners are set up with it at start-up",
    "sip.idle_timeout_s": "the stream listeners are set up with it at start-up",
    "sip.handshake_timeout_s": "the stream listeners are set up with it at start-up",
    "sip.max_connections": "the connection table is fitted to the open-file limit at start-up",
    "sip.max_connections_per_source": "the connection table is set up at start-up",
}
"""Why a changed key waits for a restart; a listener's reason is `LISTENER_REASON`."""
LISTENER_REASON = "listening sockets are opened at start-up"
RELOADED_SECTIONS = ("registrar", "security", "dialplan")
"""Sections a reload applies whole (users are compared on their own)."""
RELOADED_KEYS = ("pbx.debug", "pbx.log_requests", "sip.public_address", "sip.user_agent")
"""Keys of other sections a reload applies."""
HOUSEKEEPING_INTERVAL_S = 1.0
FILES_KEPT_FREE = 100
"""Descriptors kept out of the connection count: listeners, the SQLite files (database,
WAL, shared memory), logs, the reactor's own, outbound connections being opened, and
connections closed to make room whose sockets are not shut yet (at most
`pbx.transport.connections.MAX_EVICTIONS_IN_FLIGHT`). Never more than half the limit."""
UNLIMITED_FILES = 1 << 20
"""What an unlimited open-file limit is taken for: Linux's default fs.nr_open."""
TRIM_AFTER_PEAK = 5_000
"""Transactions held (live and tombstones) that count as a burst worth trimming after.

A burst of registrations (an office's phones all coming back after an
outage, 500/s) leaves tens of megabytes of answered transactions freed 32 s
later; the allocator keeps that memory unless asked (`pbx.memory`). When the
table has fallen to a quarter of such a peak, housekeeping hands it back."""


class PbxService(MultiService):
    log = Logger()

    def __init__(
        self,
        config: Config,
        *,
        config_path: str | Path | None = None,
        force_debug: bool = False,
        reactor: Any = None,
    ) -> None:
        super().__init__()
        self.setName("pbx")
        self.config = config
        self.config_path = Path(config_path) if config_path is not None else config.path
        self.force_debug = force_debug
        # Any: the reactor provides many interfaces (time, UDP, TCP, SSL, threads).
        self.reactor: Any = reactor if reactor is not None else global_reactor
        self.ports: dict[str, IListeningPort] = {}
        self.store: Store | None = None
        self.writer: BindingWriter | None = None
        self.group: GroupCommit | None = None
        """The store's group commit, from start-up (`pbx.store`)."""
        self.cdr_queue = RowQueue(INSERT_CDR)
        """Call records of ended calls, written in the next group commit."""
        self._loops: list[LoopingCall] = []
        self._previous_sighup: Any = None
        self._json_log: IO[str] | None = None
        self._json_observer: Any = None
        self._users: Mapping[str, UserConfig] = config.users
        # What the registrar asks of the users on every request, answered in
        # compiled code; the realm in force is the one the service started with.
        self.secrets = UserSecrets(config.users, config.sip.domain)
        self._held_peak = 0  # transactions held at the top of the last burst
        self._dropped_seen = 0  # the source limit's drop count at the last housekeeping
        self._flood_dropped = 0  # dropped since the flood began
        self._gc_pauses = CollectionPauses(self._report_gc_pause)
        sip = config.sip
        # max_connections is lowered at start-up to what the open-file limit allows.
        self.connections = Connections(max_connections=sip.max_connections,
                                       max_per_source=sip.max_connections_per_source)
        self.stream_timeouts = StreamTimeouts(idle_s=sip.idle_timeout_s,
                                              message_s=sip.message_timeout_s,
                                              handshake_s=sip.handshake_timeout_s)
        self.location = LocationService(
            max_contacts_per_aor=config.registrar.max_contacts_per_user)
        self.connections.carries_flow = self._carries_flow
        self.guard = AuthGuard(_guard_settings(config))
        self.limiter = SourceLimiter(_source_limits(config))
        # A stand-in secret until start-up reads the kept one (`_keep_nonce_secret`).
        self.authenticator = self._make_authenticator(os.urandom(NONCE_SECRET_BYTES))
        self.layer: TransactionLayer[Peer] = TransactionLayer(
            TimerSettings(t1_s=sip.t1_ms / 1000, t2_s=sip.t2_ms / 1000, t4_s=sip.t4_ms / 1000),
            max_transactions=sip.max_transactions)
        self.auth = RequestAuthenticator(
            domain=sip.domain,
            ha1_lookup=self.secrets.ha1,
            authenticator=self.authenticator,
            guard=self.guard,
            make_tag=new_tag,
            user_name=self.secrets.user_name,
            has_ha1=self.secrets.has_ha1,
            sha256_user_agents=config.registrar.sha256_user_agents,
        )
        self.registrar = Registrar(
            auth=self.auth,
            location=self.location,
            settings=_registrar_settings(config),
        )
        self.dialplan = DialplanLoader()
        self._route_sources: dict[str, str] = {}
        self.calls = CallManager(
            clock=self.reactor,
            layer=self.layer,
            sender=self.connections,
            auth=self.auth,
            location=self.location,
            users=_UserDirectory(self),
            domain=sip.domain,
            local_address=self.local_address,
            dialplan=self.dialplan,
            record_cdr=self.cdr_queue.append,
            on_security_event=self._write_security_event,
        )
        self.endpoint = SipEndpoint(
            clock=self.reactor,
            connections=self.connections,
            layer=self.layer,
            registrar=self.registrar,
            calls=self.calls,
            writer=None,
            server_header=sip.user_agent,
            debug=force_debug or config.pbx.debug,
            log_requests=config.pbx.log_requests,
            on_security_event=self._write_security_event,
            limiter=self.limiter,
        )
        # pluginapi: the services plugins get (docs/plugins.md), on the call manager's
        # sending and timers and the endpoint's answering.
        self.plugin_events = PluginEvents(domain=sip.domain)
        self.plugin_events.source = self.endpoint
        self.calls.events = self.plugin_events
        self.plugin_dialogs = PluginDialogs(sender=self.calls, responder=self.endpoint,
                                            timers=self.calls)
        self.endpoint.plugin_dialogs = self.plugin_dialogs
        self.endpoint.plugin_requests = PluginRequests(responder=self.endpoint,
                                                       dialogs=self.plugin_dialogs)
        self.plugins = PluginHost(
            _UserDirectory(self), self.calls.actions, requests=self.endpoint.plugin_requests,
            outbound=Outbound(sender=self.calls, location=self.location),
            events=self.plugin_events, timers=self.calls)

    # -------------------------------------------------------- lifecycle

    def privilegedStartService(self) -> None:
        config = self.config
        data_dir = config.pbx.data_dir
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            self.store = Store.open(data_dir / "pbx.sqlite3")
        except (OSError, StoreError) as error:
            raise SystemExit(f"{config.path}: pbx.data_dir: {error}") from None
        try:
            self._keep_nonce_secret(data_dir / NONCE_SECRET_FILE)
        except OSError as error:
            self.store.close()
            raise SystemExit(f"{config.path}: pbx.data_dir: {error}") from None
        try:
            self.dialplan.load(config.dialplan.module)
        except DialplanError as error:
            self.store.close()
            raise SystemExit(f"{config.path}: dialplan.module: {error}") from None
        try:
            self.plugins.load(config.plugins)
        except PluginError as error:
            self.store.close()
            raise SystemExit(f"{config.path}: plugins: {error}") from None
        self.endpoint.request_handlers = self.plugins.request_handlers
        self._start_saving(self.store)
        assert self.writer is not None and self.group is not None
        dropped = self.location.load(self.store.load_bindings(self.secrets.user_name),
                                     self.reactor.seconds())
        if dropped:
            self.writer.changes.record_removals(dropped)
            self.group.schedule()
        self.log.info("Loaded {count} binding(s) from {path}", count=len(self.location),
                      path=str(self.store.path))
        self._fit_connections_to_file_limit()
        try:
            self._listen_all()
        except SystemExit:
            for port in self.ports.values():
                port.stopListening()
            self.ports.clear()
            self.store.close()
            raise
        super().privilegedStartService()

    def _start_saving(self, store: Store) -> None:
        """Write bindings and call records to `store` in group commits, and hold the
        answers that report them (REGISTER's and BYE's 200) until they are on disk."""
        self.writer = BindingWriter(store)
        self.group = group = GroupCommit(store, self.reactor)
        group.join(self.writer)
        group.join(self.cdr_queue)
        self.cdr_queue.on_append = group.schedule
        self.endpoint.writer = self.writer.changes  # recorded into in compiled code
        self.endpoint.commits = group
        self.calls.commits = group

    def _make_authenticator(self, secret: bytes) -> DigestAuthenticator:
        registrar = self.config.registrar
        return DigestAuthenticator(
            self.config.sip.domain, secret, nonce_lifetime_s=registrar.nonce_lifetime_s,
            algorithms=strongest_first(registrar.digest_algorithms),
            issued_since=self.reactor.seconds())

    def _keep_nonce_secret(self, path: Path) -> None:
        """Make nonces with the secret kept in `path`, made on first start.

        Nonces are checked by their MAC alone, so with the same secret the
        nonces phones hold stay ours across a restart, answered stale (they
        were issued before this run, `DigestAuthenticator`'s
        ``issued_since``) rather than as unknown. Written to a temporary file and
        renamed, so a crash never leaves a short key; 0600, since it lets
        whoever reads it make nonces the PBX accepts.
        """
        try:
            secret = path.read_bytes()
        except FileNotFoundError:
            secret = b""
        if len(secret) != NONCE_SECRET_BYTES:
            secret = os.urandom(NONCE_SECRET_BYTES)
            temporary = path.with_name(path.name + ".new")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as file:
                file.write(secret)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        elif path.stat().st_mode & 0o077:
            path.chmod(0o600)
        self.authenticator = self._make_authenticator(secret)
        self.auth.authenticator = self.authenticator

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
        configured = self.config.sip.max_connections
        allowed = max(1, soft - min(FILES_KEPT_FREE, soft // 2))
        self.connections.max_connections = min(configured, allowed)
        connections = self.connections.max_connections
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

    def _carries_flow(self, connection_id: int) -> bool:
        """Whether a registration arrived over this connection: the phone's only way in."""
        return bool(self.location.bindings_by_connection(connection_id))

    def _listen_all(self) -> None:
        sip = self.config.sip
        path = self.config.path
        context: Any = None
        if sip.needs_tls:
            if sip.tls_cert is not None and sip.tls_key is not None:
                cert_key = (sip.tls_cert, sip.tls_key)
            else:
                from pbx.transport.tls import ensure_self_signed

                cert, key, created = ensure_self_signed(self.config.pbx.data_dir, sip.domain)
                cert_key = (cert, key)
                self.log.warn(
                    "No tls_cert configured: {made} self-signed certificate {cert} for "
                    "{domain}; phones must be told to trust it",
                    made="made a" if created else "using the", cert=str(cert), domain=sip.domain)
            from OpenSSL import SSL

            from pbx.transport.tls import TlsFileError, server_context

            try:
                context = server_context(*cert_key)
            except TlsFileError as error:
                raise SystemExit(f"{path}: sip.{error.key}: {error}") from None
            except SSL.Error as error:
                raise SystemExit(f"{path}: sip.tls_cert, sip.tls_key: {cert_key[0]}, "
                                 f"{cert_key[1]}: OpenSSL refused them: {error}") from None
        for name, listen in sip.listeners.items():
            try:
                self.ports[name] = self._listen(name, listen, context)
            except CannotListenError as error:
                raise SystemExit(
                    f"{path}: sip.{name}: cannot listen on {listen}: "
                    f"{error.socketError}") from None
            except (OSError, ValueError) as error:
                raise SystemExit(f"{path}: sip.{name}: {error}") from None
            self.log.info("Listening for SIP over {transport} on {address}",
                          transport=name.upper(), address=str(self.bound(name)))

    def _listen(self, name: str, listen: Listen, context: Any) -> IListeningPort:
        """Bind listener `name`; a stream listener asks `Connections.admit` at each accept."""
        reactor = self.reactor
        host = listen.host
        if name == "udp":
            protocol = SipDatagramProtocol(self.endpoint, self.connections)
            port: IListeningPort = listen_udp(reactor, listen.port, protocol, interface=host)
            return port
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
        if name in ("tls", "wss"):
            # What listenSSL does, with the admission check outside the TLS
            # wrapper (which cannot refuse a connection itself).
            from pbx.transport.tls import SipTlsFactory

            assert context is not None
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

    def local_address(self, peer: Peer) -> tuple[str, int]:
        """Our host and port as `peer` should see them, for Via and Contact.

        The configured public address if any, else the listener's own, else
        (bound to every interface) the address the kernel would send from
        to reach that peer.
        """
        name = peer.transport if peer.transport in self.ports else next(iter(self.ports), "")
        listen = self.bound(name) if name else Listen(host="127.0.0.1", port=5060)
        host = self.config.sip.public_address or listen.host
        if host in ("0.0.0.0", "::", ""):
            host = self._route_source(peer.host)
        return host, listen.port

    def _route_source(self, destination: str) -> str:
        source = self._route_sources.get(destination)
        if source is None:
            family = socket.AF_INET6 if ":" in destination else socket.AF_INET
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as probe:
                    probe.connect((destination, 9))  # no packet is sent
                    source = str(probe.getsockname()[0])
            except OSError:
                source = "127.0.0.1" if family == socket.AF_INET else "::1"
            if len(self._route_sources) < 10_000:
                self._route_sources[destination] = source
        return source

    def bound(self, name: str) -> Listen:
        """Where listener `name` really listens (port 0 in the config means any)."""
        address = self.ports[name].getHost()
        return Listen(host=str(getattr(address, "host", "")),
                      port=int(getattr(address, "port", 0)))

    def startService(self) -> None:
        super().startService()
        self.log.info("SIP core and registrar: {mode}", mode=compiled.MODE)
        if self.config.pbx.log_format == "json":
            self._start_json_log()
        self.plugins.start_all()
        _tune_garbage_collector()
        self._gc_pauses.install()
        self._every(FLUSH_INTERVAL_S, self._flush)
        self._every(HOUSEKEEPING_INTERVAL_S, self._housekeeping)
        if hasattr(signal, "SIGHUP") and self.reactor is global_reactor:
            self._previous_sighup = signal.signal(signal.SIGHUP, self._on_sighup)

    def _start_json_log(self) -> None:
        """Also write every event as one JSON object per line, for log collectors."""
        path = self.config.pbx.data_dir / "pbx.log.json"
        self._json_log = path.open("a", encoding="utf-8")
        self._json_observer = jsonFileLogObserver(self._json_log)
        globalLogPublisher.addObserver(self._json_observer)
        self.log.info("Writing JSON events to {path}", path=str(path))

    def _stop_json_log(self) -> None:
        if self._json_observer is not None:
            globalLogPublisher.removeObserver(self._json_observer)
            self._json_observer = None
        if self._json_log is not None:
            self._json_log.close()
            self._json_log = None

    def _every(self, interval_s: float, work: Any) -> None:
        loop = LoopingCall(work)
        loop.clock = self.reactor
        loop.start(interval_s, now=False)
        self._loops.append(loop)

    def stopService(self) -> Any:
        self._gc_pauses.uninstall()
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        self.calls.hangup_all()
        self.plugin_dialogs.end_all()  # pluginapi
        # While the sockets are open: the answers waiting for it go out.
        self._commit_now()
        self.endpoint.stop()
        self.connections.close_all()
        stopping = [port.stopListening() for port in self.ports.values()]
        self.ports.clear()
        saved = self._commit_now()
        unsaved = 0
        if self.group is not None:
            unsaved = self.group.pending
            self.group.close()
        if self.store is not None:
            self.store.close()
            self.store = None
        if saved:
            self.log.info("Stopped; bindings saved")
        else:
            self.log.error("Stopped; {unsaved} change(s) to bindings and call records could "
                           "NOT be saved (see the errors above): they are lost",
                           unsaved=unsaved)
        self._stop_json_log()
        super().stopService()
        stopping.append(self.plugins.stop_all())
        return gatherResults([d for d in stopping if d is not None])

    # ------------------------------------------------------ periodic work

    def _flush(self) -> None:
        """Make sure whatever is pending has a commit scheduled (`FLUSH_INTERVAL_S`)."""
        group = self.group
        if group is not None and group.pending:
            group.schedule()

    def _commit_now(self) -> bool:
        """Write what is pending at once (on stop); True when nothing is left unsaved."""
        group = self.group
        return True if group is None else group.commit()

    def _housekeeping(self) -> None:
        now = self.reactor.seconds()
        expired = self.location.expire(now, limit=10_000)
        self.plugin_events.bindings_expired(expired)  # pluginapi
        if expired and self.writer is not None:
            self.writer.changes.record_removals(expired)
            if self.group is not None:
                self.group.schedule()
            for binding in expired:
                self.log.info("Registration of {user} at {contact} expired",
                              user=binding.aor, contact=binding.contact)
        self.guard.sweep(now)
        self.endpoint.sweep(now)
        self._trim_after_burst()

    def _report_gc_pause(self, generation: int, seconds: float, collected: int) -> None:
        self.log.warn("Garbage collection (generation {generation}) held every request for "
                      "{ms:.0f} ms ({collected} objects freed)", generation=generation,
                      ms=seconds * 1000, collected=collected)

    def _trim_after_burst(self) -> None:
        """Give memory back once a burst's transactions are gone (`TRIM_AFTER_PEAK`),
        or a flood the source limit was dropping has stopped.

        A flood from one address is mostly dropped unread, so it leaves few
        transactions to count; what it costs is the socket's and the
        parser's garbage. It is over when a housekeeping second passes with
        nothing dropped.
        """
        dropped = self.limiter.dropped
        if dropped != self._dropped_seen:
            self._flood_dropped += dropped - self._dropped_seen
            self._dropped_seen = dropped
        elif self._flood_dropped:
            give_back_free_memory()
            self.log.info("Flood over: {dropped} messages from blocked addresses dropped; "
                          "memory handed back", dropped=self._flood_dropped)
            self._flood_dropped = 0
        held = len(self.layer) + self.layer.tombstones
        if held > self._held_peak:
            self._held_peak = held
        elif self._held_peak >= TRIM_AFTER_PEAK and held <= self._held_peak // 4:
            give_back_free_memory()
            self.log.debug("Burst over ({peak} transactions, now {held}): memory trimmed",
                           peak=self._held_peak, held=held)
            self._held_peak = held

    def _write_security_event(self, event: SecurityEvent) -> None:
        path = self.config.security.log_file
        if path is None:
            return
        stamp = self.reactor.seconds()
        line = (f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(stamp))}Z pbx security "
                f"{event.kind} from {event.address} user={_log_safe(event.user)} "
                f"reason={_log_safe(event.detail, keep=' ')}\n")
        try:
            with path.open("a", encoding="utf-8") as file:
                file.write(line)
        except OSError as error:
            self.log.warn("Cannot write security log {path}: {error}", path=str(path),
                          error=str(error))

    # ------------------------------------------------------------ reload

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        self.reactor.callFromThread(self.reload)

    def _apply_registrar_and_security(self, new: Config) -> None:
        """Every [registrar] and [security] key, and `RELOADED_KEYS`, changed in place
        (see the module notes)."""
        registrar = new.registrar
        self.authenticator.reconfigure(
            algorithms=strongest_first(registrar.digest_algorithms),
            nonce_lifetime_s=registrar.nonce_lifetime_s)
        self.auth.set_sha256_user_agents(registrar.sha256_user_agents)
        self.registrar.settings = _registrar_settings(new)
        self.location.max_contacts_per_aor = registrar.max_contacts_per_user
        self.guard.settings = _guard_settings(new)
        self.limiter.limits = _source_limits(new)
        # [security] log_file and [sip] public_address are read from
        # self.config where they are used.
        self.endpoint.debug = self.force_debug or new.pbx.debug
        self.endpoint.request_log.debug = self.endpoint.debug
        self.endpoint.request_log.enabled = new.pbx.log_requests
        self.endpoint.server_header = new.sip.user_agent

    def reload(self) -> bool:
        """Re-read the config file; True when the new one was applied."""
        try:
            new = load_config(self.config_path)
        except ConfigError as error:
            self.log.error("Reload refused, keeping the running config:\n{problems}",
                           problems=str(error))
            return False
        if new.dialplan.module != self.dialplan.path or new.dialplan.module is not None:
            try:
                self.dialplan.load(new.dialplan.module)
            except DialplanError as error:
                self.log.error("Dialplan not reloaded, keeping the running one: {error}",
                               error=str(error))
        diff = diff_users(self.config, new)
        self._users = new.users
        self.secrets.users = new.users
        for extension in diff.removed:
            gone = self.location.remove_aor(extension)
            self.plugin_events.bindings_removed(gone)  # pluginapi
            if self.writer is not None:
                self.writer.changes.record_removals(gone)
        if diff.removed and self.group is not None:
            self.group.schedule()
        changed = _changed_keys(self.config, new)
        applied = [key for key in changed if _reloads(key)]
        needs_restart = {key: _restart_reason(key) for key in changed if not _reloads(key)}
        self._apply_registrar_and_security(new)
        self.config = new
        self.log.info("Reloaded {path}: users added {added}, changed {changed}, removed "
                      "{removed}; applied {applied}", path=str(self.config_path),
                      added=list(diff.added), changed=list(diff.changed),
                      removed=list(diff.removed), applied=applied)
        for key, reason in needs_restart.items():
            self.log.warn("Changed {key} takes effect at the next restart: {reason}",
                          key=key, reason=reason)
        del new
        gc.collect()  # the old config's users, and what parsing the new one left
        give_back_free_memory()
        return True


def _registrar_settings(config: Config) -> RegistrarSettings:
    registrar = config.registrar
    return RegistrarSettings(
        min_expires_s=registrar.min_expires_s,
        max_expires_s=registrar.max_expires_s,
        default_expires_s=registrar.default_expires_s,
        max_contacts_per_user=registrar.max_contacts_per_user,
    )


def _source_limits(config: Config) -> SourceLimits:
    security = config.security
    return SourceLimits(max_messages=security.max_messages_per_source,
                        window_s=security.source_window_s, block_s=security.source_block_s)


def _guard_settings(config: Config) -> GuardSettings:
    security = config.security
    return GuardSettings(
        max_failures=security.max_auth_failures,
        failure_window_s=security.failure_window_s,
        cooldown_s=security.cooldown_s,
        slowdown_after=security.slowdown_after,
        slowdown_s=security.slowdown_s,
    )


def _changed_keys(old: Config, new: Config) -> list[str]:
    """"section.key" for every key of the one-table sections whose value changed."""
    changed: list[str] = []
    for section in fields(old):
        before, after = getattr(old, section.name), getattr(new, section.name)
        if before == after or not hasattr(before, "__dataclass_fields__"):
            continue  # users and plugins are compared on their own
        changed += [f"{section.name}.{key.name}" for key in fields(before)
                    if getattr(before, key.name) != getattr(after, key.name)]
    return changed


def _reloads(key: str) -> bool:
    return key in RELOADED_KEYS or key.split(".", 1)[0] in RELOADED_SECTIONS


def _restart_reason(key: str) -> str:
    section, name = key.split(".", 1)
    if section == "sip" and name in ("udp", "tcp", "tls", "ws", "wss"):
        return LISTENER_REASON
    return RESTART_REASONS.get(key, "read only at start-up")


def _log_safe(text: str, *, keep: str = "") -> str:
    """`text` for one line of the security log: no spaces (unless kept), quotes,
    control characters or non-ASCII, so that what a phone sent cannot forge
    a field or a line that fail2ban would read."""
    return quote(text, safe="!#$&'()*+,-./:;<=>?@[]^_`{|}~" + keep)


def _tune_garbage_collector() -> None:
    """Move start-up objects out of the collector's way and collect the young less often.

    ``gc.freeze`` puts everything alive after start-up (modules, config,
    loaded bindings) into a permanent generation that collections skip.
    """
    gc.collect()
    give_back_free_memory()  # what loading the config and the bindings left behind
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, old)


class _UserDirectory:
    """The office's users as the dialplan sees them (`pbx.dialplan.Users`)."""

    def __init__(self, service: PbxService) -> None:
        self._service = service

    def exists(self, extension: str) -> bool:
        user = self._service._users.get(extension)
        return user is not None and user.enabled

    def name(self, extension: str) -> str | None:
        user = self._service._users.get(extension)
        return None if user is None else user.name

    def is_registered(self, extension: str) -> bool:
        service = self._service
        return bool(service.location.bindings(extension, service.reactor.seconds()))
