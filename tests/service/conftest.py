"""Fixtures of the service tests: a whole PBX on 127.0.0.1 under the real reactor.

`pbx_factory` builds a `PbxService` from a config dict (every listener on
port 0, the data directory in ``tmp_path``), starts it, and hands back a
`RunningPbx` to open client links and read the SQLite file with. At teardown
every link is closed, every service stopped, the SIGHUP handler and the
garbage collector's settings put back, and the reactor is checked to hold
no delayed call the test left behind.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import signal
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, ssl
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from pbx.config import load_config, parse_config
from pbx.service import PbxService
from tests.service.sipclient import (
    Behaviour,
    Link,
    Phone,
    Softphone,
    StreamLink,
    UdpLink,
    WsLink,
)

DOMAIN = "pbx.test"
TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss")
PASSWORDS = {"1001": "correct horse 1001", "1002": "battery staple 1002",
             "1003": "stored as ha1 1003", "1004": "newcomer 1004"}
HA1_1003 = hashlib.md5(f"1003:{DOMAIN}:{PASSWORDS['1003']}".encode()).hexdigest()


def config_data(tmp_path: Path) -> dict[str, Any]:
    """The config every test starts from; tests override pieces of it."""
    return {
        "pbx": {"data_dir": str(tmp_path / "data")},
        "sip": {"domain": DOMAIN, **{name: "127.0.0.1:0" for name in TRANSPORTS}},
        # Every test phone is offered SHA-256 then MD5 and answers SHA-256;
        # test_register.py checks the shipped default (by User-Agent) itself.
        "registrar": {"min_expires_s": 60, "max_expires_s": 1800, "default_expires_s": 600,
                      "sha256_user_agents": ["*"]},
        "security": {
            # Generous by default: only the guard tests want to be blocked.
            "max_auth_failures": 100, "slowdown_after": 50, "slowdown_s": 0.3,
            "failure_window_s": 60, "cooldown_s": 60,
            "log_file": str(tmp_path / "security.log"),
        },
        "users": {
            "1001": {"password": PASSWORDS["1001"]},
            "1002": {"password": PASSWORDS["1002"]},
            "1003": {"ha1": HA1_1003},
        },
    }


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


async def ticks(reactor: Any, seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def eventually(reactor: Any, check: Callable[[], bool], *, timeout: float = 1.0,
                     step: float = 0.02) -> None:
    """Poll `check` until it holds; fail after `timeout` seconds."""
    deadline = reactor.seconds() + timeout
    while not check():
        if reactor.seconds() > deadline:
            raise AssertionError(f"still not true after {timeout} s: {check}")
        await ticks(reactor, step)


async def assert_nothing_left(reactor: Any, baseline: set[Any]) -> None:
    """Fail if a delayed call scheduled since `baseline` is still pending.

    Closing connections takes a few reactor turns (TLS and WebSocket close
    handshakes), so this waits a bounded time for them first.
    """

    def leftovers() -> list[Any]:
        return [call for call in reactor.getDelayedCalls()
                if call not in baseline and call.active()]

    with contextlib.suppress(AssertionError):
        await eventually(reactor, lambda: not leftovers(), timeout=3.0)
    assert not leftovers(), f"delayed calls left behind: {leftovers()}"


class RunningPbx:
    """A started `PbxService` and the client links opened to it."""

    def __init__(self, reactor: Any, service: PbxService, tmp_path: Path) -> None:
        self.reactor = reactor
        self.service = service
        self.tmp_path = tmp_path
        self.links: list[Link] = []
        self.running = True
        self._media_ports = 40000

    @property
    def data_dir(self) -> Path:
        return self.service.config.pbx.data_dir

    @property
    def security_log(self) -> Path:
        path = self.service.config.security.log_file
        assert path is not None
        return path

    def address(self, transport: str) -> tuple[str, int]:
        bound = self.service.bound(transport)
        return bound.host, bound.port

    def trust(self) -> ssl.Certificate:
        """The self-signed certificate the PBX made, as a phone told to trust it."""
        pem = (self.data_dir / "tls" / "pbx-selfsigned.crt").read_bytes()
        return ssl.Certificate.loadPEM(pem)

    async def link(self, transport: str, **kwargs: Any) -> Link:
        server = self.address(transport)
        link: Link
        if transport == "udp":
            link = UdpLink(self.reactor, server, **kwargs)
        elif transport in ("tcp", "tls"):
            link = await StreamLink.open(self.reactor, transport, server,
                                         trust=self.trust() if transport == "tls" else None)
        else:
            link = await WsLink.open(self.reactor, transport, server,
                                     trust=self.trust() if transport == "wss" else None,
                                     **kwargs)
        self.links.append(link)
        return link

    async def phone(self, user: str, transport: str = "udp", **kwargs: Any) -> Phone:
        return Phone(await self.link(transport, **kwargs), user, PASSWORDS.get(user))

    async def softphone(self, user: str, transport: str = "udp", *,
                        behaviour: Behaviour | None = None, register: bool = True
                        ) -> Softphone:
        """A phone that makes and takes calls, registered unless told otherwise."""
        self._media_ports += 2
        softphone = Softphone(await self.phone(user, transport), media_port=self._media_ports,
                              behaviour=behaviour)
        if register:
            await softphone.register()
        return softphone

    def cdrs(self) -> list[dict[str, Any]]:
        """Call detail rows as an administrator's ``sqlite3`` shell would show them."""
        with contextlib.closing(sqlite3.connect(self.data_dir / "pbx.sqlite3")) as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute("SELECT * FROM cdr ORDER BY id")]

    async def cdrs_when(self, count: int, timeout: float = 2.0) -> list[dict[str, Any]]:
        """The call detail rows once there are `count` (they are written in batches)."""
        await eventually(self.reactor, lambda: len(self.cdrs()) >= count, timeout=timeout)
        return self.cdrs()

    def rows(self, aor: str | None = None) -> list[dict[str, Any]]:
        """Binding rows as an administrator's ``sqlite3`` shell would show them."""
        path = self.data_dir / "pbx.sqlite3"
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.row_factory = sqlite3.Row
            if aor is None:
                found = db.execute("SELECT * FROM bindings ORDER BY aor, contact").fetchall()
            else:
                found = db.execute("SELECT * FROM bindings WHERE aor = ? ORDER BY contact",
                                   (aor,)).fetchall()
        return [dict(row) for row in found]

    async def rows_when(self, check: Callable[[list[dict[str, Any]]], bool], aor: str,
                        timeout: float = 1.0) -> list[dict[str, Any]]:
        """The rows of `aor` once `check` accepts them (binding writes are batched)."""
        await eventually(self.reactor, lambda: check(self.rows(aor)), timeout=timeout)
        return self.rows(aor)

    async def close_links(self) -> None:
        links, self.links = self.links, []
        await defer.gatherResults([link.close() for link in links])

    async def stop(self) -> None:
        """Close the links, then stop the service as twistd would."""
        await self.close_links()
        if self.running:
            self.running = False
            await self.service.stopService()


def start(service: PbxService) -> None:
    service.privilegedStartService()
    service.startService()


@pytest_twisted.async_yield_fixture
async def pbx_factory(tmp_path: Path) -> AsyncIterator[Any]:
    """``await pbx_factory(overrides, from_file=None)``: a started PBX (stopped at teardown).

    With ``from_file``, the config is read from that TOML file by `load_config`
    (for reload tests); otherwise `config_data` merged with ``overrides`` is
    checked by `parse_config` as if it came from ``tmp_path/pbx.toml``.
    """
    from twisted.internet import reactor

    started: list[RunningPbx] = []
    baseline = set(reactor.getDelayedCalls())
    old_sighup = signal.getsignal(signal.SIGHUP)
    # startService tunes the process's garbage collector (for twistd); undone below.
    old_gc_threshold = gc.get_threshold()
    was_frozen = gc.get_freeze_count() > 0

    async def factory(overrides: dict[str, Any] | None = None, *,
                      from_file: Path | None = None) -> RunningPbx:
        if from_file is not None:
            config = load_config(from_file)
        else:
            data = merged(config_data(tmp_path), overrides or {})
            config = parse_config(data, str(tmp_path / "pbx.toml"))
        service = PbxService(config, reactor=reactor)
        start(service)
        running = RunningPbx(reactor, service, tmp_path)
        started.append(running)
        return running

    try:
        yield factory
    finally:
        for running in started:
            await running.stop()
        signal.signal(signal.SIGHUP, old_sighup)
        gc.set_threshold(*old_gc_threshold)
        if not was_frozen:
            gc.unfreeze()
        await assert_nothing_left(reactor, baseline)


@pytest.fixture
def log_events() -> Iterator[EventLoggingObserver]:
    """Every event logged during the test (for tracebacks, reload errors...)."""
    events = EventLoggingObserver()
    globalLogPublisher.addObserver(events)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events)


@pytest.fixture
def reactor() -> Any:
    from twisted.internet import reactor as global_reactor

    return global_reactor
