"""The PBX's service tree, built from a checked `Config`.

Theory of operation
-------------------
`PbxService` is a `MultiService` whose named children start in this order
and stop in the reverse, each stop waiting for the one before it
[buildbot's master service]::

    pbx
      store          the SQLite store: opened, the last run's bindings loaded
      listeners      one `pbx.listening.SipListener` per transport ("udp", "tcp", ...)
      calls          at stop: calls ended, waiting answers sent, connections closed
      flush          the group commit's safety net (`FLUSH_INTERVAL_S`)
      housekeeping   bindings expired, the guard and nonce table swept, memory trimmed
      plugins        started once the core is up, stopped before it goes

(the admin web will be one more child). Nothing is started until the whole
config has been checked (`pbx.config`). Then, in `privilegedStartService`
(before the reactor runs, while twistd may still hold privileges), the
dialplan and the plugins are imported and checked, and each child opens
what it holds: the store, then the listeners (the soft open-file limit
raised to the hard one and the connection table sized below it first; each
stream listener asks `Connections.admit` at every accept: per-source and
total limits). If any of it fails (a listener that cannot be bound, a TLS
certificate or key that is unusable) what was opened is let go and
start-up stops with the file, the key and the reason: nothing runs
half-configured.

Binding changes and call records are written by the store's group commit
(`pbx.store.GroupCommit`): a transaction a couple of milliseconds after the
first change, and the 200s to REGISTER and BYE that report them are sent
only once it is committed, so what was answered 200 survives ``kill -9``.
A write that fails keeps everything in memory and is retried; the failure
is logged when it starts, while it lasts and when it ends, and REGISTERs
that could not be stored are answered 503. Periodic jobs keep the tables
bounded: expired bindings are removed as their time comes, and the
authentication guard and nonce table are swept. A clean stop stops the
plugins, ends the calls, commits (sending the answers that waited for it),
stops listening, and commits what is left.

``SIGHUP`` re-reads the config file. A config that no longer validates is
refused with every problem logged, and the running one stays. Otherwise the
users are swapped in at once (a removed user's bindings go away), every
[registrar] and [security] key applies in place (the objects are changed,
not rebuilt, so bindings, calls and the nonces phones hold stay valid), a
listener whose address changed is replaced and the others are left alone
(`pbx.listening.Listeners.reconfigure`; a new certificate replaces the TLS
ones), and each other changed key that is read only at start-up is logged
by name with the reason it needs a restart.

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

from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService, Service
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort
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
from pbx.listening import Binder, Listeners
from pbx.memory import CollectionPauses, give_back_free_memory
from pbx.sip.digest_server import DigestAuthenticator
from pbx.sip.peer import Peer
from pbx.sip.timers import TimerSettings
from pbx.sip.transaction import TransactionLayer
from pbx.store import INSERT_CDR, BindingWriter, GroupCommit, RowQueue, Store, StoreError
from pbx.transport.connections import Connections
from pbx.transport.stream import StreamTimeouts

FLUSH_INTERVAL_S = 0.2
"""How often the service checks that nothing pending is left without a commit scheduled.

Every change schedules its own commit (`GroupCommit.schedule`); this is the
safety net, and costs a sum of a few lengths."""
YOUNG_GENERATION_THRESHOLD = 20_000
"""Allocations between young-generation collections (CPython's default is 700).

A PBX allocates a few hundred short-lived objects per message and holds
hundreds of thousands of long-lived ones (bindings, users, transactions);
with the default, collections ran every couple of messages and took a
large share of a REGISTER's time (docs/benchmarks.md, "Why the hot path is
written as it is")."""
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
    "sip.message_timeout_s": "the stream listeners are set up with it at start-up",
    "sip.idle_timeout_s": "the stream listeners are set up with it at start-up",
    "sip.handshake_timeout_s": "the stream listeners are set up with it at start-up",
    "sip.max_connections": "the connection table is fitted to the open-file limit at start-up",
    "sip.max_connections_per_source": "the connection table is set up at start-up",
}
"""Why a changed key waits for a restart."""
PLUGINS_REASON = "plugins are loaded and started at start-up"
RELOADED_SECTIONS = ("registrar", "security", "dialplan")
"""Sections a reload applies whole (users are compared on their own)."""
LISTENER_KEYS = ("sip.udp", "sip.tcp", "sip.tls", "sip.ws", "sip.wss", "sip.tls_cert",
                 "sip.tls_key")
"""Keys a reload applies by replacing the listeners they concern (`pbx.listening`)."""
RELOADED_KEYS = ("pbx.debug", "pbx.log_requests", "sip.public_address", "sip.user_agent",
                 *LISTENER_KEYS)
"""Keys of other sections a reload applies."""
HOUSEKEEPING_INTERVAL_S = 1.0
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
        self.store: Store | None = None
        self.writer: BindingWriter | None = None
        self.group: GroupCommit | None = None
        """The store's group commit, from start-up (`pbx.store`)."""
        self.cdr_queue = RowQueue(INSERT_CDR)
        """Call records of ended calls, written in the next group commit."""
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
            record_cdr=lambda cdr: self.cdr_queue.append(cdr.row()),
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
        dispatcher = self.endpoint.dispatcher
        self.plugin_events.source = dispatcher
        self.calls.events = self.plugin_events
        self.plugin_dialogs = PluginDialogs(sender=self.calls, responder=dispatcher,
                                            timers=self.calls)
        dispatcher.plugin_dialogs = self.plugin_dialogs
        dispatcher.plugin_requests = PluginRequests(responder=dispatcher,
                                                    dialogs=self.plugin_dialogs)
        self.plugins = PluginHost(
            _UserDirectory(self), self.calls.actions, requests=dispatcher.plugin_requests,
            outbound=Outbound(sender=self.calls, location=self.location),
            events=self.plugin_events, timers=self.calls, media=self.calls.use_media)
        # The tree: started in this order, stopped in the reverse (see the module notes).
        self.listeners = Listeners(
            Binder(reactor=self.reactor, endpoint=self.endpoint, connections=self.connections,
                   stream_timeouts=self.stream_timeouts, config_path=config.path,
                   tls_files=self._tls_files),
            sip.listeners, max_connections=sip.max_connections)
        for child in (
            StoreService(self),
            self.listeners,
            CallsService(self),
            _every("flush", FLUSH_INTERVAL_S, self._flush, self.reactor),
            _every("housekeeping", HOUSEKEEPING_INTERVAL_S, self._housekeeping, self.reactor),
            PluginsService(self.plugins, self.plugin_dialogs),
        ):
            child.setServiceParent(self)
        self.listeners_settled: Deferred[list[str]] = succeed([])
        """The listeners the last reload changed, once they are in place (`reload`)."""

    # -------------------------------------------------------- lifecycle

    def privilegedStartService(self) -> None:
        """Load the code the config names, then open each child in order: the store, then
        the listeners. A child that fails stops start-up, and the ones opened before it
        let go of what they hold: nothing runs half-configured."""
        Service.privilegedStartService(self)
        config = self.config
        try:
            self.dialplan.load(config.dialplan.module)
        except DialplanError as error:
            raise SystemExit(f"{config.path}: dialplan.module: {error}") from None
        try:
            self.plugins.load(config.plugins)
        except PluginError as error:
            raise SystemExit(f"{config.path}: plugins: {error}") from None
        self.endpoint.request_handlers = self.plugins.request_handlers
        opened: list[IService] = []
        try:
            for child in self:
                child.privilegedStartService()
                opened.append(child)
        except BaseException:
            for child in reversed(opened):
                release = getattr(child, "release", None)
                if release is not None:
                    release()
            raise

    def open_store(self) -> Store:
        """The store of ``data_dir``, the bindings of the last run loaded (`StoreService`)."""
        config = self.config
        data_dir = config.pbx.data_dir
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            store = Store.open(data_dir / "pbx.sqlite3")
        except (OSError, StoreError) as error:
            raise SystemExit(f"{config.path}: pbx.data_dir: {error}") from None
        try:
            self._keep_nonce_secret(data_dir / NONCE_SECRET_FILE)
        except OSError as error:
            store.close()
            raise SystemExit(f"{config.path}: pbx.data_dir: {error}") from None
        self.store = store
        self._start_saving(store)
        assert self.writer is not None and self.group is not None
        dropped = self.location.load(store.load_bindings(self.secrets.user_name),
                                     self.reactor.seconds())
        if dropped:
            self.writer.changes.record_removals(dropped)
            self.group.schedule()
        self.log.info("Loaded {count} binding(s) from {path}", count=len(self.location),
                      path=str(store.path))
        return store

    def close_store(self, *, stopping: bool) -> None:
        """Commit what is left and close the store; `stopping`: a clean stop, to report."""
        saved = self._commit_now()
        unsaved = 0
        if self.group is not None:
            unsaved = self.group.pending
            self.group.close()
        if self.store is not None:
            self.store.close()
            self.store = None
        if not stopping:
            return
        if saved:
            self.log.info("Stopped; bindings saved")
        else:
            self.log.error("Stopped; {unsaved} change(s) to bindings and call records could "
                           "NOT be saved (see the errors above): they are lost",
                           unsaved=unsaved)

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

    def _carries_flow(self, connection_id: int) -> bool:
        """Whether a registration arrived over this connection: the phone's only way in."""
        return bool(self.location.bindings_by_connection(connection_id))

    def _tls_files(self) -> tuple[Path, Path]:
        """The certificate and key of the TLS listeners: the configured pair, else a
        self-signed one made in ``data_dir`` on first use (`pbx.listening.Binder`)."""
        sip = self.config.sip
        if sip.tls_cert is not None and sip.tls_key is not None:
            return sip.tls_cert, sip.tls_key
        from pbx.transport.tls import ensure_self_signed

        cert, key, created = ensure_self_signed(self.config.pbx.data_dir, sip.domain)
        self.log.warn(
            "No tls_cert configured: {made} self-signed certificate {cert} for "
            "{domain}; phones must be told to trust it",
            made="made a" if created else "using the", cert=str(cert), domain=sip.domain)
        return cert, key

    def local_address(self, peer: Peer) -> tuple[str, int]:
        """Our host and port as `peer` should see them, for Via and Contact.

        The configured public address if any, else the listener's own, else
        (bound to every interface) the address the kernel would send from
        to reach that peer.
        """
        listener = self.listeners.namedServices.get(peer.transport)
        if listener is None or listener.port is None:
            listener = next(iter(self.listeners.bound().values()), None)
        listen = Listen(host="127.0.0.1", port=5060) if listener is None else listener.bound()
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
        return self.listeners[name].bound()

    @property
    def ports(self) -> dict[str, IListeningPort]:
        """The listening ports bound now, by transport."""
        return {name: listener.port for name, listener in self.listeners.bound().items()
                if listener.port is not None}

    def startService(self) -> None:
        Service.startService(self)
        self.log.info("SIP core and registrar: {mode}", mode=compiled.MODE)
        if self.config.pbx.log_format == "json":
            self._start_json_log()
        for child in self:
            child.startService()
        _tune_garbage_collector()
        self._gc_pauses.install()
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

    def stopService(self) -> Deferred[None]:
        """Stop the children one after the other, in the reverse of their start, each
        once the one before has finished: plugins, timers, calls, listeners, store."""
        self._gc_pauses.uninstall()
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_children())

    async def _stop_children(self) -> None:
        for child in reversed(list(self)):
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                self.log.failure("Stopping {service} failed", service=child.name)
        self._stop_json_log()

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

    async def _apply_listeners(self, before: Deferred[list[str]], wanted: Mapping[str, Listen],
                               *, tls_changed: bool) -> list[str]:
        """Replace the listeners that changed, once the last reload's are in place."""
        try:
            await before
            return await self.listeners.reconfigure(wanted, tls_changed=tls_changed)
        except Exception:
            self.log.failure("Replacing the listeners failed")
            return []

    def reload(self) -> bool:
        """Re-read the config file; True when the new one was applied.

        Listeners are replaced after it returns (a changed one's socket must
        close before its address is bound again): `listeners_settled` fires
        with the transports changed once they are in place.
        """
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
        if new.plugins != self.config.plugins:
            needs_restart["plugins"] = PLUGINS_REASON
        self._apply_registrar_and_security(new)
        self.config = new
        self.log.info("Reloaded {path}: users added {added}, changed {changed}, removed "
                      "{removed}; applied {applied}", path=str(self.config_path),
                      added=list(diff.added), changed=list(diff.changed),
                      removed=list(diff.removed), applied=applied)
        for key, reason in needs_restart.items():
            self.log.warn("Changed {key} takes effect at the next restart: {reason}",
                          key=key, reason=reason)
        if any(key in LISTENER_KEYS for key in changed):
            tls_changed = "sip.tls_cert" in changed or "sip.tls_key" in changed
            self.listeners_settled = Deferred.fromCoroutine(self._apply_listeners(
                self.listeners_settled, new.sip.listeners, tls_changed=tls_changed))
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


# ------------------------------------------------------------- the children


class StoreService(Service):
    """The SQLite store: opened first, so the last run's bindings are in place before
    anything listens; saved and closed last, once nothing can change them any more."""

    def __init__(self, pbx: PbxService) -> None:
        self.setName("store")
        self._pbx = pbx

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._pbx.open_store()

    def stopService(self) -> None:
        super().stopService()
        self._pbx.close_store(stopping=True)

    def release(self) -> None:
        """Close the store of a start-up that failed after it was opened."""
        self._pbx.close_store(stopping=False)


class CallsService(Service):
    """The calls and the connections phones opened: at stop, the calls are ended and the
    answers waiting for a commit sent while the sockets are still open, then every
    connection is closed, before the listeners stop."""

    def __init__(self, pbx: PbxService) -> None:
        self.setName("calls")
        self._pbx = pbx

    def stopService(self) -> None:
        super().stopService()
        pbx = self._pbx
        pbx.calls.hangup_all()
        pbx._commit_now()
        pbx.endpoint.stop()
        pbx.connections.close_all()


class PluginsService(Service):
    """The plugins: started once the core is up (store open, listeners bound), stopped
    before any of it goes."""

    def __init__(self, host: PluginHost, dialogs: PluginDialogs) -> None:
        self.setName("plugins")
        self.host = host
        self.dialogs = dialogs

    def startService(self) -> None:
        super().startService()
        self.host.start_all()  # each plugin's failure is logged, and the others start

    def stopService(self) -> Deferred[None]:
        super().stopService()
        # The dialogs plugins own end first (each plugin hears it and may send a
        # last NOTIFY while the sockets are open), then the plugins stop.
        self.dialogs.end_all()
        return self.host.stop_all()


def _every(name: str, interval_s: float, work: Callable[[], None], clock: Any) -> TimerService:
    """A named child that calls `work` every `interval_s` on `clock`, from its start."""
    timer = TimerService(interval_s, work)
    timer.clock = clock
    timer.setName(name)
    return timer
