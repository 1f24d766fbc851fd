"""The PBX's service tree, built from a checked `Config`.

Theory of operation
-------------------
`PbxService` is a `MultiService`. Nothing is started until the whole config
has been checked (`pbx.config`); then, in `privilegedStartService` (before
the reactor runs, while twistd may still hold privileges), it opens the
SQLite store, loads the bindings saved by the last run, and binds every
listener. If any listener cannot be bound, the ones already bound are
closed and start-up stops with the file, the key and the reason: nothing
runs half-configured.

While running, three periodic jobs keep the tables bounded and the disk in
step: binding changes are flushed to SQLite every 0.2 s (so a crash loses
at most that much; phones repair it at their next refresh), expired
bindings are removed as their time comes, and the authentication guard and
nonce table are swept. A clean stop stops listening, then flushes.

``SIGHUP`` re-reads the config file. A config that no longer validates is
refused with every problem logged, and the running one stays. Otherwise the
users are swapped in at once (a removed user's bindings go away), and
changes that need new sockets are logged as needing a restart.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import IO, Any

from twisted.application.service import MultiService
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import gatherResults
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, globalLogPublisher, jsonFileLogObserver

from pbx import compiled
from pbx.config import Config, ConfigError, Listen, UserConfig, diff_users, load_config
from pbx.core.auth import RequestAuthenticator, SecurityEvent
from pbx.core.calls import CallManager
from pbx.core.endpoint import SipEndpoint, new_tag
from pbx.core.guard import AuthGuard, GuardSettings
from pbx.core.location import LocationService
from pbx.core.plugins import PluginError, PluginHost
from pbx.core.registrar import Registrar, RegistrarSettings
from pbx.core.router import DialplanError, DialplanLoader
from pbx.core.user_secrets import UserSecrets
from pbx.memory import CollectionPauses, give_back_free_memory
from pbx.sip.digest_server import DigestAuthenticator
from pbx.sip.peer import Peer
from pbx.sip.timers import TimerSettings
from pbx.sip.transaction import TransactionLayer
from pbx.store import BindingWriter, Store, StoreError
from pbx.transport.connections import Connections
from pbx.transport.stream import SipStreamClientFactory, SipStreamFactory
from pbx.transport.udp import SipDatagramProtocol, listen_udp

FLUSH_INTERVAL_S = 0.2
YOUNG_GENERATION_THRESHOLD = 20_000
"""Allocations between young-generation collections (CPython's default is 700).

A PBX allocates a few hundred short-lived objects per message and holds
hundreds of thousands of long-lived ones (bindings, users, transactions);
with the default, collections ran every couple of messages and cost a
quarter of a REGISTER's time (measured: 360 → 280 µs per registration)."""
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
        self.ports: dict[str, IListeningPort] = {}
        self.store: Store | None = None
        self.writer: BindingWriter | None = None
        self._loops: list[LoopingCall] = []
        self._previous_sighup: Any = None
        self._json_log: IO[str] | None = None
        self._json_observer: Any = None
        self._users: Mapping[str, UserConfig] = config.users
        # What the registrar asks of the users on every request, answered in
        # compiled code; the realm in force is the one the service started with.
        self.secrets = UserSecrets(config.users, config.sip.domain)
        self._held_peak = 0  # transactions held at the top of the last burst
        self._gc_pauses = CollectionPauses(self._report_gc_pause)
        self.connections = Connections()
        self.location = LocationService(
            max_contacts_per_aor=config.registrar.max_contacts_per_user)
        self.guard = AuthGuard(GuardSettings(
            max_failures=config.security.max_auth_failures,
            failure_window_s=config.security.failure_window_s,
            cooldown_s=config.security.cooldown_s,
            slowdown_after=config.security.slowdown_after,
            slowdown_s=config.security.slowdown_s,
        ))
        self.authenticator = DigestAuthenticator(
            config.sip.domain, os.urandom(32),
            nonce_lifetime_s=config.registrar.nonce_lifetime_s,
            algorithms=config.registrar.digest_algorithms)
        sip = config.sip
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
        )
        self.registrar = Registrar(
            auth=self.auth,
            location=self.location,
            settings=RegistrarSettings(
                min_expires_s=config.registrar.min_expires_s,
                max_expires_s=config.registrar.max_expires_s,
                default_expires_s=config.registrar.default_expires_s,
                max_contacts_per_user=config.registrar.max_contacts_per_user,
            ),
        )
        self.dialplan = DialplanLoader()
        self._cdrs: list[tuple[object, ...]] = []
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
            record_cdr=self._cdrs.append,
            on_security_event=self._write_security_event,
        )
        self.plugins = PluginHost(_UserDirectory(self), self.calls.actions)
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
        )

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
        self.writer = BindingWriter(self.store)
        self.endpoint.writer = self.writer.changes  # recorded into in compiled code
        dropped = self.location.load(self.store.load_bindings(self.secrets.user_name),
                                     self.reactor.seconds())
        self.writer.changes.record_removals(dropped)
        self.log.info("Loaded {count} binding(s) from {path}", count=len(self.location),
                      path=str(self.store.path))
        try:
            self._listen_all()
        except SystemExit:
            for port in self.ports.values():
                port.stopListening()
            self.ports.clear()
            self.store.close()
            raise
        super().privilegedStartService()

    def _listen_all(self) -> None:
        sip = self.config.sip
        path = self.config.path
        cert_key: tuple[Path, Path] | None = None
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
        for name, listen in sip.listeners.items():
            refused: tuple[type[Exception], ...] = (OSError, ValueError, *_tls_errors(name))
            try:
                self.ports[name] = self._listen(name, listen, cert_key)
            except CannotListenError as error:
                raise SystemExit(
                    f"{path}: sip.{name}: cannot listen on {listen}: "
                    f"{error.socketError}") from None
            except refused as error:
                raise SystemExit(f"{path}: sip.{name}: {error}") from None
            self.log.info("Listening for SIP over {transport} on {address}",
                          transport=name.upper(), address=str(self.bound(name)))

    def _listen(self, name: str, listen: Listen, cert_key: tuple[Path, Path] | None
                ) -> IListeningPort:
        reactor = self.reactor
        host = listen.host
        if name == "udp":
            protocol = SipDatagramProtocol(self.endpoint, self.connections)
            port: IListeningPort = listen_udp(reactor, listen.port, protocol, interface=host)
            return port
        if name in ("tcp", "tls"):
            factory: Any = SipStreamFactory(name, self.endpoint, self.connections, reactor)
        else:
            # autobahn (and, for TLS, cryptography) cost memory every process
            # pays once imported: a PBX without these listeners never loads them.
            from pbx.transport.ws import SipWebSocketFactory

            factory = SipWebSocketFactory(name, self.endpoint, self.connections)
        if name in ("tls", "wss"):
            from pbx.transport.tls import server_context

            assert cert_key is not None
            context = server_context(*cert_key)
            port = reactor.listenSSL(listen.port, factory, context, interface=host)
            if name == "tls":
                self.connections.connectors["tls"] = self._connect_tls
            return port
        port = reactor.listenTCP(listen.port, factory, interface=host)
        if name == "tcp":
            self.connections.connectors["tcp"] = self._connect_tcp
        return port

    def _connect_tcp(self, peer: Peer, data: bytes,
                     on_failure: Callable[[], None] | None) -> None:
        factory = SipStreamClientFactory(peer, data, self.endpoint, self.connections,
                                         self.reactor, on_failure=on_failure)
        self.reactor.connectTCP(peer.host, peer.port, factory, timeout=10)

    def _connect_tls(self, peer: Peer, data: bytes,
                     on_failure: Callable[[], None] | None) -> None:
        factory = SipStreamClientFactory(peer, data, self.endpoint, self.connections,
                                         self.reactor, on_failure=on_failure)
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
        self.endpoint.stop()
        self.connections.close_all()
        stopping = [port.stopListening() for port in self.ports.values()]
        self.ports.clear()
        self._flush()
        if self.store is not None:
            self.store.close()
            self.store = None
        self.log.info("Stopped; bindings saved")
        self._stop_json_log()
        super().stopService()
        stopping.append(self.plugins.stop_all())
        return gatherResults([d for d in stopping if d is not None])

    # ------------------------------------------------------ periodic work

    def _flush(self) -> None:
        if self._cdrs and self.store is not None:
            rows, self._cdrs[:] = list(self._cdrs), []
            try:
                self.store.write_cdrs(rows)
            except StoreError as error:
                self._cdrs[:0] = rows[-10_000:]  # retried next time; bounded
                self.log.warn("Could not save call records yet: {error}", error=str(error))
        if self.writer is None or not self.writer.pending:
            return
        try:
            self.writer.flush()
        except StoreError as error:
            self.log.warn("Could not save bindings yet: {error}", error=str(error))

    def _housekeeping(self) -> None:
        now = self.reactor.seconds()
        expired = self.location.expire(now, limit=10_000)
        if expired and self.writer is not None:
            self.writer.changes.record_removals(expired)
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
        """Give memory back once a burst's transactions are gone (`TRIM_AFTER_PEAK`)."""
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
        import time

        line = (f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(stamp))}Z pbx security "
                f"{event.kind} from {event.address} user={event.user} reason={event.detail}\n")
        try:
            with path.open("a", encoding="utf-8") as file:
                file.write(line)
        except OSError as error:
            self.log.warn("Cannot write security log {path}: {error}", path=str(path),
                          error=str(error))

    # ------------------------------------------------------------ reload

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        self.reactor.callFromThread(self.reload)

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
            if self.writer is not None:
                self.writer.changes.record_removals(gone)
        unchanged = ("sip", "registrar", "security", "pbx")  # [dialplan] reloads above
        needs_restart = [name for name in unchanged
                         if getattr(new, name) != getattr(self.config, name)]
        self.config = new
        self.log.info("Reloaded {path}: users added {added}, changed {changed}, removed "
                      "{removed}", path=str(self.config_path), added=list(diff.added),
                      changed=list(diff.changed), removed=list(diff.removed))
        if needs_restart:
            self.log.warn("Changes to [{sections}] take effect at the next restart",
                          sections=", ".join(needs_restart))
        del new
        gc.collect()  # the old config's users, and what parsing the new one left
        give_back_free_memory()
        return True


def _tls_errors(listener: str) -> tuple[type[Exception], ...]:
    """pyOpenSSL's error, for listeners that use it (others may run without it loaded)."""
    if listener not in ("tls", "wss"):
        return ()
    from OpenSSL import SSL

    return (SSL.Error,)


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
