"""The real PBX under ``twistd``, and the real programs that talk to it.

Each test gets its own PBX process: a config written into ``tmp_path``
(free ports on 127.0.0.1, ``data_dir`` beside it), started as
``twistd -n --pidfile ... --logfile ... pbx --config ...`` and considered
up once its log says every listener is bound. At teardown it is stopped
with SIGTERM, like an init system would, and must stop cleanly (see
`Pbx.stop`) with no traceback in its log: an interop test that leaves the
server broken has failed even if the phone was happy.

Every wait here is bounded and polls a condition (a log line, a control
reply) rather than sleeping for a guessed time.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import itertools
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = Path(__file__).parent / "scenarios"
PHONE_EXAMPLES = REPO / "docs" / "phones"  # the set-up files docs/phones.md shows
TWISTD = Path(sys.executable).parent / "twistd"
SIPP = shutil.which("sipp")
BARESIP = shutil.which("baresip")
BARESIP_MODULES = Path("/usr/lib/baresip/modules")
LINPHONEC = shutil.which("linphonec")

DOMAIN = "pbx.test"
USERS = {"1001": "secret-1001", "1002": "secret-1002"}

SHIPPED_SIP_PORT = 5060  # etc/pbx.toml: udp and tcp
SHIPPED_TLS_PORT = 5061

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.05

requires_sipp = pytest.mark.skipif(
    SIPP is None, reason="sipp not installed (apt-get install sip-tester)")
requires_baresip = pytest.mark.skipif(
    BARESIP is None or not BARESIP_MODULES.is_dir(),
    reason="baresip not installed (apt-get install baresip-core)")
requires_linphone = pytest.mark.skipif(
    LINPHONEC is None, reason="linphonec not installed (apt-get install linphone-cli)")


REQUIRE_INTEROP = os.environ.get("PBX_REQUIRE_INTEROP") == "1"
"""Set by .ci/run: an interop test that would skip fails instead.

A developer without root or SIPp gets skips that say what is missing; CI,
whose green run must mean the PBX works with real phones, gets failures:
a machine that cannot run these tests cannot vouch for them.
"""


def _required(reason: str) -> str:
    reason = reason.removeprefix("Skipped: ")
    return (f"PBX_REQUIRE_INTEROP=1 and this interop test would have been skipped: {reason}. "
            "Install what it needs (make system-deps, as root) or unset PBX_REQUIRE_INTEROP.")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None],
) -> Iterator[None]:
    """Under PBX_REQUIRE_INTEROP, an interop test's skip (marker, fixture, twistd) is a failure."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if (REQUIRE_INTEROP and report.skipped and "interop" in item.keywords
            and not hasattr(report, "wasxfail")):
        reason = (report.longrepr[2] if isinstance(report.longrepr, tuple)
                  else str(report.longrepr))
        report.outcome = "failed"
        report.longrepr = _required(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """Likewise for a whole interop module skipped while importing (`importorskip`)."""
    outcome = yield
    report: pytest.CollectReport = outcome.get_result()  # type: ignore[attr-defined]
    if REQUIRE_INTEROP and report.skipped and isinstance(collector, pytest.Module):
        reason = (report.longrepr[2] if isinstance(report.longrepr, tuple)
                  else str(report.longrepr))
        report.outcome = "failed"
        report.longrepr = _required(reason)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if TWISTD.exists():
        return
    skip = pytest.mark.skip(reason=f"no twistd beside {sys.executable}: install the project")
    for item in items:
        if "interop" in item.keywords:
            item.add_marker(skip)


# ------------------------------------------------------------------ ports

def free_port(*, span: int = 1, avoid: Sequence[int] = ()) -> int:
    """A port p on 127.0.0.1 where UDP and TCP p .. p+span-1 can all be bound now.

    The PBX listens for UDP and TCP on one port number, and baresip takes
    its TLS port at sip_listen + 1, so both protocols (and the neighbour)
    must be free. The kernel picks p (port 0), we check the rest.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + span > 65536 or any(p in avoid for p in range(port, port + span)):
            continue
        if all(_bindable(p) for p in range(port, port + span)):
            return port
    raise RuntimeError("no free port found on 127.0.0.1")


def _bindable(port: int) -> bool:
    with contextlib.ExitStack() as stack:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            sock = stack.enter_context(socket.socket(socket.AF_INET, kind))
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def wait_for(condition: Callable[[], object], timeout_s: float, what: str) -> object:
    """Poll `condition` until it returns something true; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(POLL_S)


# -------------------------------------------------------- network namespace

IP = shutil.which("ip")
CLONE_NEWNET = 0x40000000  # <sched.h>
_netns_numbers = itertools.count()


def in_netns(name: str | None) -> list[str]:
    """The command prefix that runs a program inside network namespace `name`."""
    return [str(IP), "netns", "exec", name] if name else []


@dataclass
class Netns:
    """A network namespace of our own: a veth pair and nothing else.

    Phones put the address of the machine's default interface into their
    SDP; inside this namespace the only addresses are the ones made here, so
    every SIP and RTP packet stays inside (notes/baresip.md). The first
    address goes on v0, the others on its peer v1; a default route through
    v0 gives programs that look for "the" local address one to find.
    """

    name: str
    addresses: tuple[str, ...]
    server: str | None = None
    """A second namespace that gets v0 and the first address: the PBX's own machine.

    With it, the PBX and the phones are on two hosts of one LAN, as in an
    office: the PBX's 0.0.0.0 listeners leave the phones' ports free, and
    the PBX must find by itself which of its addresses the phones can reach.
    """

    @property
    def server_name(self) -> str:
        """The namespace the first address is in (`server`, or this one)."""
        return self.server or self.name

    def create(self) -> None:
        first, *others = self.addresses
        near = self.server_name
        commands = [
            ["netns", "add", self.name],
            ["-n", self.name, "link", "set", "lo", "up"],
            ["-n", self.name, "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
            *([["netns", "add", near],
               ["-n", near, "link", "set", "lo", "up"],
               ["-n", self.name, "link", "set", "v0", "netns", near]]
              if self.server else []),
            ["-n", near, "addr", "add", f"{first}/24", "dev", "v0"],
            *(["-n", self.name, "addr", "add", f"{a}/24", "dev", "v1"] for a in others),
            ["-n", near, "link", "set", "v0", "up"],
            ["-n", self.name, "link", "set", "v1", "up"],
            ["-n", near, "route", "add", "default", "dev", "v0"],
            *([["-n", self.name, "route", "add", "default", "dev", "v1"]] if self.server else []),
        ]
        for command in commands:
            subprocess.run([str(IP), *command], check=True, capture_output=True, timeout=10)

    def delete(self) -> None:
        for name in (self.name, *([self.server] if self.server else [])):
            subprocess.run([str(IP), "netns", "delete", name], check=False,
                           capture_output=True, timeout=10)

    def connect(self, address: tuple[str, int], timeout_s: float) -> socket.socket:
        """A TCP connection made from inside the namespace, usable from the test.

        A socket belongs to the namespace of the thread that made it, and
        setns(2) moves only the calling thread: a short-lived thread enters
        the namespace, connects and hands the socket back.
        """
        outcome: list[socket.socket | BaseException] = []

        def work() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                with open(f"/run/netns/{self.name}", "rb") as handle:
                    if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                        error = ctypes.get_errno()
                        raise OSError(error, f"setns {self.name}: {os.strerror(error)}")
                outcome.append(socket.create_connection(address, timeout=timeout_s))
            except BaseException as error:  # handed to the caller's thread
                outcome.append(error)

        thread = threading.Thread(target=work, name=f"setns-{self.name}")
        thread.start()
        thread.join()
        [result] = outcome
        if isinstance(result, BaseException):
            raise result
        return result


def _make_netns(*, two_hosts: bool) -> Iterator[Netns]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace (ip netns add); CI runs as root")
    if IP is None:
        pytest.skip("no `ip` command (apt-get install iproute2)")
    number = next(_netns_numbers)
    space = Netns(name=f"pbxt-{os.getpid()}-{number}",
                  addresses=("10.77.0.1", "10.77.0.2", "10.77.0.3", "10.77.0.4"),
                  server=f"pbxs-{os.getpid()}-{number}" if two_hosts else None)
    try:
        space.create()
    except subprocess.CalledProcessError as error:
        space.delete()
        pytest.skip(f"cannot create a network namespace here: {error.stderr.decode().strip()}")
    try:
        yield space
    finally:
        space.delete()


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A fresh namespace with 10.77.0.1 (v0) and 10.77.0.2-4 (v1), deleted at teardown.

    Request it before `make_pbx` and `make_phone`, so that it is made first
    and deleted after their processes are gone.
    """
    yield from _make_netns(two_hosts=False)


@pytest.fixture
def lan() -> Iterator[Netns]:
    """Two namespaces joined by a veth pair: the PBX's host and the phones' LAN.

    10.77.0.1 is the PBX's (run it in `server_name`), 10.77.0.2-4 the
    phones' (in `name`). Request it before `make_pbx` and `make_phone`.
    """
    yield from _make_netns(two_hosts=True)


# -------------------------------------------------------------------- PBX

@dataclass
class Pbx:
    """One PBX installation in a directory: config, data_dir, log; started and stopped."""

    root: Path
    sip_port: int  # UDP and TCP
    tls_port: int
    digest_algorithms: tuple[str, ...] | None = ("MD5", "SHA-256")  # None: the shipped default
    users: dict[str, str] = field(default_factory=lambda: dict(USERS))
    host: str = "127.0.0.1"  # where every listener binds
    netns: str | None = None  # run inside this network namespace (`Netns`)
    debug: bool = False  # [pbx] debug: every SIP message in the log
    dialplan: str | None = None  # source of a dialplan file; None: the built-in default
    command_prefix: tuple[str, ...] = ()  # runs twistd, e.g. in a mount namespace of its own
    process: subprocess.Popen[bytes] | None = None
    exit_codes: list[int] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.root / "pbx.toml"

    @property
    def log_path(self) -> Path:
        return self.root / "pbx.log"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def database(self) -> Path:
        return self.data_dir / "pbx.sqlite3"

    @property
    def security_log(self) -> Path:
        return self.root / "security.log"

    @property
    def certificate(self) -> Path:
        """The self-signed certificate the PBX makes on first start (pbx.transport.tls)."""
        return self.data_dir / "tls" / "pbx-selfsigned.crt"

    def write_config(self) -> None:
        digest = ([] if self.digest_algorithms is None else [
            "digest_algorithms = [" + ", ".join(f'"{a}"' for a in self.digest_algorithms) + "]"])
        lines = [
            "[pbx]",
            f'data_dir = "{self.data_dir}"',
            *(["debug = true"] if self.debug else []),
            "[sip]",
            f'domain = "{DOMAIN}"',
            f'udp = "{self.host}:{self.sip_port}"',
            f'tcp = "{self.host}:{self.sip_port}"',
            f'tls = "{self.host}:{self.tls_port}"',
            "[registrar]",
            *digest,
            "[security]",
            f'log_file = "{self.security_log}"',
        ]
        if self.dialplan is not None:
            dialplan_path = self.root / "dialplan.py"
            dialplan_path.write_text(self.dialplan)
            lines += ["[dialplan]", f'module = "{dialplan_path}"']
        for extension, password in self.users.items():
            lines += [f"[users.{extension}]", f'password = "{password}"']
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        assert self.process is None, "already running"
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.config_path.exists():
            self.write_config()
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with (self.root / "twistd.out").open("ab") as output:
            self.process = subprocess.Popen(
                [*in_netns(self.netns), *self.command_prefix,
                 str(TWISTD), "-n", "--pidfile", str(self.root / "twistd.pid"),
                 "--logfile", str(self.log_path), "pbx", "--config", str(self.config_path)],
                cwd=self.root, stdin=subprocess.DEVNULL, stdout=output,
                stderr=subprocess.STDOUT, start_new_session=True)

        def listening() -> bool:
            if self.process is not None and self.process.poll() is not None:
                output = (self.root / "twistd.out").read_text(errors="replace")
                pytest.fail(f"the PBX exited with {self.process.returncode} while starting:\n"
                            f"{output}\n{self.log()}")
            return "Listening for SIP over TLS" in self.log()[offset:]

        wait_for(listening, START_TIMEOUT_S, "the PBX to listen")

    def stop(self) -> int:
        """SIGTERM, wait, and insist on a clean stop (which flushes bindings).

        twistd ends a clean shutdown by re-raising the signal that asked for
        it (``twisted.application.app._exitWithSignal``), so init systems see
        "stopped by SIGTERM": a clean stop is exit 0 or death by SIGTERM
        *after* the reactor logged its orderly end. A crash or a hang shows up
        as another status, a missing "Server Shut Down.", or a timeout.
        """
        process = self.process
        assert process is not None, "not running"
        self.process = None
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            pytest.fail(f"the PBX did not stop within {STOP_TIMEOUT_S} s of SIGTERM")
        self.exit_codes.append(code)
        log = self.log()
        assert code in (0, -signal.SIGTERM), f"the PBX exited with {code}:\n{log}"
        assert log.rstrip().endswith("Server Shut Down."), f"no orderly shutdown:\n{log}"
        assert "Stopped; bindings saved" in log, log
        return code

    def kill(self) -> None:
        """For teardown after a failure: no questions asked."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def bindings(self) -> list[dict[str, object]]:
        """The saved bindings, read straight from SQLite (read-only)."""
        with contextlib.closing(
                sqlite3.connect(f"file:{self.database}?mode=ro", uri=True)) as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute("SELECT * FROM bindings ORDER BY aor")]

    def cdrs(self) -> list[dict[str, object]]:
        """The call detail records written so far, oldest first (read-only).

        The PBX writes a call's record before it answers the BYE that ended
        it 200 (a group commit), a call it ended itself within milliseconds:
        poll with `wait_for` for those.
        """
        if not self.database.exists():
            return []
        with contextlib.closing(
                sqlite3.connect(f"file:{self.database}?mode=ro", uri=True)) as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute("SELECT * FROM cdr ORDER BY id")]


def shipped_config() -> dict[str, Any]:
    """etc/pbx.toml as the repository ships it, parsed."""
    with (REPO / "etc" / "pbx.toml").open("rb") as handle:
        return tomllib.load(handle)


@dataclass
class ShippedPbx(Pbx):
    """The PBX as an administrator first runs it: etc/pbx.toml and dialplans/, unchanged.

    The repository's etc/ and dialplans/ folders are copied side by side
    into `root`, so the file's relative paths (``../var``,
    ``../dialplans/office.py``) resolve inside it. Its listeners are the
    shipped ``0.0.0.0`` ones with no public address: run it in a network
    namespace of its own (`lan`), where those ports are free.
    """

    sip_port: int = SHIPPED_SIP_PORT
    tls_port: int = SHIPPED_TLS_PORT

    @property
    def config_path(self) -> Path:
        return self.root / "etc" / "pbx.toml"

    @property
    def data_dir(self) -> Path:
        return self.root / "var"

    def write_config(self) -> None:
        for folder in ("etc", "dialplans"):
            shutil.copytree(REPO / folder, self.root / folder,
                            ignore=shutil.ignore_patterns("__pycache__"))
        assert self.config_path.read_bytes() == (REPO / "etc" / "pbx.toml").read_bytes()



@pytest.fixture
def make_pbx(tmp_path: Path) -> Iterator[Callable[..., Pbx]]:
    """Start a PBX (keyword arguments as for `Pbx`); each is checked at teardown.

    ``shipped=True`` starts a `ShippedPbx` instead (only `netns` applies).
    """
    made: list[Pbx] = []

    def make(*, sip_port: int = 0, tls_port: int = 0, shipped: bool = False,
             **options: object) -> Pbx:
        root = tmp_path / f"pbx{len(made)}"
        if shipped:
            server: Pbx = ShippedPbx(root=root, **options)  # type: ignore[arg-type]
            made.append(server)
            server.start()
            return server
        sip_port = sip_port or free_port()
        tls_port = tls_port or free_port(avoid=(sip_port,))
        server = Pbx(root=root, sip_port=sip_port, tls_port=tls_port,
                     **options)  # type: ignore[arg-type]
        made.append(server)
        server.start()
        return server

    yield make
    for server in made:
        try:
            if server.process is not None:
                server.stop()
        finally:
            server.kill()
        log = server.log()
        assert "Traceback" not in log, f"traceback in the PBX log:\n{log}"


@pytest.fixture
def pbx(make_pbx: Callable[..., Pbx]) -> Pbx:
    """A PBX offering MD5 first, the only digest SIPp can answer."""
    return make_pbx()


# ------------------------------------------------------------------- SIPp

@dataclass(frozen=True)
class SippRun:
    returncode: int
    output: str
    errors: str  # SIPp's -trace_err file: unexpected messages and why calls failed
    messages: str  # -trace_msg: every message sent and received
    logs: str  # -trace_logs: what <log> actions wrote
    stats: str = ""  # -trace_stat: cumulative counters, one CSV line per second and at exit

    def counts(self) -> dict[str, int]:
        """SIPp's final cumulative counters: SuccessfulCall, FailedCall, Retransmissions..."""
        rows = list(csv.DictReader(self.stats.splitlines(), delimiter=";"))
        if not rows:
            return {}
        return {name[:-3]: int(value) for name, value in rows[-1].items()
                if name and name.endswith("(C)") and value and value.isdigit()}


@dataclass
class _SippCommand:
    command: list[str]
    files: dict[str, Path]
    timeout_s: int

    def result(self, returncode: int, output: bytes) -> SippRun:
        def read(name: str) -> str:
            path = self.files[name]
            return path.read_text(errors="replace") if path.exists() else ""

        return SippRun(returncode=returncode, output=output.decode(errors="replace"),
                       errors=read("errors"), messages=read("messages"), logs=read("logs"),
                       stats=read("stats"))


def _sipp_command(
    work_dir: Path,
    scenario: str,
    remote: str | None,
    *,
    transport: str,
    rows: Sequence[Sequence[str]] | None,
    local_port: int,
    calls: int,
    limit: int,
    extra: Sequence[str],
    timeout_s: int,
) -> _SippCommand:
    assert SIPP is not None
    work_dir.mkdir(parents=True, exist_ok=True)
    run = len(list(work_dir.glob("run-*")))
    (work_dir / f"run-{run}").touch()
    inf: list[str] = []
    if rows is not None:
        csv_path = work_dir / f"users-{run}.csv"
        csv_path.write_text("SEQUENTIAL\n" + "".join(";".join(row) + "\n" for row in rows))
        inf = ["-inf", str(csv_path)]
    files = {name: work_dir / f"{name}-{run}.log"
             for name in ("errors", "messages", "logs", "stats")}
    command = [
        SIPP, *([remote] if remote else []), "-sf", str(SCENARIOS / scenario), *inf,
        "-i", "127.0.0.1", "-p", str(local_port),
        "-t", transport, "-m", str(calls), "-l", str(limit),
        "-timeout", f"{timeout_s}s", "-timeout_error", "-nostdin",
        "-trace_err", "-error_file", str(files["errors"]),
        "-trace_msg", "-message_file", str(files["messages"]),
        "-trace_logs", "-log_file", str(files["logs"]),
        "-trace_stat", "-stf", str(files["stats"]), "-fd", "1",
        *extra,
    ]
    return _SippCommand(command, files, timeout_s)


def run_sipp(
    work_dir: Path,
    scenario: str,
    pbx_port: int,
    *,
    transport: str = "u1",
    users: Sequence[Sequence[str]] = (("1001", USERS["1001"]),),
    local_port: int | None = None,
    calls: int | None = None,
    extra: Sequence[str] = (),
    timeout_s: int = 10,
) -> SippRun:
    """Run one SIPp scenario against the PBX on 127.0.0.1, bounded.

    Each user is a CSV row: extension, password, then the domain is put in
    as the third field and any further items follow it (the callee for
    uac_call_auth.xml). One call per user unless `calls` says how many
    (SIPp goes round the rows); pass a rate with ``extra=["-r", "5"]``.
    """
    count = calls if calls is not None else len(users)
    command = _sipp_command(
        work_dir, scenario, f"127.0.0.1:{pbx_port}", transport=transport,
        rows=[(row[0], row[1], DOMAIN, *row[2:]) for row in users],
        local_port=local_port or free_port(avoid=(pbx_port,)), calls=count, limit=count,
        extra=extra, timeout_s=timeout_s)
    completed = subprocess.run(command.command, cwd=work_dir, stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=timeout_s + 15, check=False)
    return command.result(completed.returncode, completed.stdout + completed.stderr)


@dataclass
class BackgroundSipp:
    """A SIPp started with `start_sipp` (an answering side); `finish` waits for it."""

    process: subprocess.Popen[bytes]
    command: _SippCommand
    output_path: Path

    def finish(self) -> SippRun:
        """Wait for SIPp to end by itself (it has -m and -timeout), or kill it after that."""
        try:
            returncode = self.process.wait(self.command.timeout_s + 15)
        except subprocess.TimeoutExpired:
            self.kill()
            returncode = -signal.SIGKILL
        return self.command.result(returncode, self.output_path.read_bytes())

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def start_sipp() -> Iterator[Callable[..., BackgroundSipp]]:
    """Start a SIPp that waits for calls on 127.0.0.1:`local_port` (no -inf, no remote).

    Arguments: work_dir, scenario, local_port, calls; optional extra and
    timeout_s. Whatever is still running at teardown is killed.
    """
    started: list[BackgroundSipp] = []

    def start(work_dir: Path, scenario: str, local_port: int, calls: int, *,
              extra: Sequence[str] = (), timeout_s: int = 30) -> BackgroundSipp:
        command = _sipp_command(work_dir, scenario, None, transport="u1", rows=None,
                                local_port=local_port, calls=calls, limit=calls,
                                extra=extra, timeout_s=timeout_s)
        output_path = command.files["errors"].with_suffix(".out")
        with output_path.open("wb") as output:
            process = subprocess.Popen(command.command, cwd=work_dir, stdin=subprocess.DEVNULL,
                                       stdout=output, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        background = BackgroundSipp(process, command, output_path)
        started.append(background)
        return background

    yield start
    for background in started:
        background.kill()


# ---------------------------------------------------------------- baresip

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Phone:
    """A headless baresip 1.0 with its own config directory, driven over ctrl_tcp."""

    root: Path
    extension: str
    password: str
    transport: str  # udp, tcp or tls
    pbx_port: int
    cafile: Path | None = None
    sip_port: int = 0  # 0: a free one (on 127.0.0.1), or 5060 inside a namespace
    ctrl_port: int = 0  # likewise, 4444 inside a namespace
    host: str = "127.0.0.1"  # where it listens for SIP and for control
    pbx_host: str = "127.0.0.1"
    netns: Netns | None = None  # run inside this namespace, each phone on its own `host`
    audio_source: Path | None = None  # what it says: a 16-bit mono WAV (aufile)
    record_dir: Path | None = None  # sndfile: dump-<call>-enc.wav (said), -dec.wav (heard)
    rtp_ports: str = "20000-20100"
    sip_trace: bool = False  # baresip -s: every SIP message in baresip.out
    accounts: str | None = None  # the accounts file as given (`phone_example`), else made here
    process: subprocess.Popen[bytes] | None = None
    _control: socket.socket | None = None
    _buffer: bytes = b""
    events: list[dict[str, object]] = field(default_factory=list)
    _taken: set[int] = field(default_factory=set)  # indexes in `events` wait_event returned

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.netns is not None:  # a namespace of its own: every port is free
            self.sip_port = self.sip_port or 5060
            self.ctrl_port = self.ctrl_port or 4444
        if not self.sip_port:
            self.sip_port = free_port(span=2, avoid=(self.pbx_port,))  # TLS on sip_port + 1
        if not self.ctrl_port:
            self.ctrl_port = free_port(avoid=(self.pbx_port, self.sip_port, self.sip_port + 1))
        source = self.audio_source or "/dev/null"
        config = [
            "poll_method epoll",
            f"sip_listen {self.host}:{self.sip_port}",
            "audio_player aufile,/dev/null",
            f"audio_source aufile,{source}",
            "audio_alert aufile,/dev/null",
            f"module_path {BARESIP_MODULES}",
            "module g711.so",
            *(["module aufile.so"] if self.audio_source is not None else []),
            "module_app account.so",
            "module_app menu.so",  # reginfo and the other commands
            "module_tmp uuid.so",
            "module_app ctrl_tcp.so",
            f"ctrl_tcp_listen {self.host}:{self.ctrl_port}",
            f"rtp_ports {self.rtp_ports}",
        ]
        if self.record_dir is not None:
            self.record_dir.mkdir(parents=True, exist_ok=True)
            config += ["module sndfile.so", f"snd_path {self.record_dir}"]
        if self.cafile is not None:
            config.append(f"sip_cafile {self.cafile}")
        (self.root / "config").write_text("\n".join(config) + "\n")
        t = self.transport
        (self.root / "accounts").write_text(
            self.accounts
            or f"<sip:{self.extension}@{DOMAIN};transport={t}>;auth_pass={self.password};"
            f'outbound="sip:{self.pbx_host}:{self.pbx_port};transport={t}";regint=120\n')
        assert BARESIP is not None
        with (self.root / "baresip.out").open("ab") as output:
            self.process = subprocess.Popen(
                [*in_netns(self.netns.name if self.netns else None),
                 BARESIP, "-f", str(self.root), *(["-s"] if self.sip_trace else [])],
                cwd=self.root, stdin=subprocess.DEVNULL,
                stdout=output, stderr=subprocess.STDOUT,
                env={**os.environ, "HOME": str(self.root)}, start_new_session=True)
        self._control = wait_for(self._connect, 10.0, "baresip's ctrl_tcp")  # type: ignore[assignment]

    def _connect(self) -> socket.socket | None:
        if self.process is not None and self.process.poll() is not None:
            pytest.fail(f"baresip exited with {self.process.returncode}:\n{self.output()}")
        try:
            if self.netns is not None:
                return self.netns.connect((self.host, self.ctrl_port), timeout_s=5)
            return socket.create_connection((self.host, self.ctrl_port), timeout=5)
        except OSError:
            return None

    def command(self, name: str, params: str = "") -> dict[str, object]:
        """Send one ctrl_tcp command (netstring JSON) and return its response.

        Events that arrive meanwhile (REGISTER_OK, CALL_*) are kept in `events`.
        """
        assert self._control is not None
        token = f"t{time.monotonic_ns()}"
        body = json.dumps({"command": name, "params": params, "token": token}).encode()
        self._control.sendall(b"%d:%s," % (len(body), body))
        while True:
            message = self._read_netstring()
            if message.get("response") and message.get("token") == token:
                return message
            self.events.append(message)

    def _read_netstring(self) -> dict[str, object]:
        assert self._control is not None
        while True:
            length, colon, rest = self._buffer.partition(b":")
            if colon and len(rest) > int(length):
                self._buffer = rest[int(length) + 1:]
                return json.loads(rest[:int(length)])  # type: ignore[no-any-return]
            chunk = self._control.recv(65536)
            if not chunk:
                raise ConnectionError("baresip closed its control connection")
            self._buffer += chunk

    def wait_event(self, kind: str, timeout_s: float = 10.0) -> dict[str, object]:
        """The first event of type `kind` (CALL_INCOMING, CALL_CLOSED...) not returned before.

        Reads the control connection until one arrives; fails after `timeout_s`.
        """
        assert self._control is not None
        deadline = time.monotonic() + timeout_s
        while True:
            for index, event in enumerate(self.events):
                if event.get("type") == kind and index not in self._taken:
                    self._taken.add(index)
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = [(e.get("type"), e.get("param")) for e in self.events]
                pytest.fail(f"{self.extension}: no {kind} within {timeout_s} s; "
                            f"events so far: {seen}")
            self._control.settimeout(remaining)
            try:
                message = self._read_netstring()
            except TimeoutError:
                continue
            finally:
                self._control.settimeout(5)
            if not message.get("response"):
                self.events.append(message)

    def event_types(self) -> list[str]:
        return [str(e.get("type")) for e in self.events]

    def registration(self) -> str:
        """The text of `reginfo`, without colours: "... OK ..." once registered."""
        data = self.command("reginfo").get("data", "")
        return _ANSI.sub("", str(data))

    def wait_registered(self, timeout_s: float = 15.0) -> str:
        def registered() -> str | None:
            info = self.registration()
            return info if re.search(r"\sOK\s", info) else None

        what = f"baresip to register over {self.transport}"
        try:
            return str(wait_for(registered, timeout_s, what))
        except pytest.fail.Exception:
            said = [line for line in _ANSI.sub("", self.output()).splitlines()
                    if line.startswith("reg:")][-3:]
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}; baresip said:\n"
                        + "\n".join(said))

    def output(self) -> str:
        path = self.root / "baresip.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """Stop at once, without unregistering, so the binding stays where it is."""
        if self._control is not None:
            self._control.close()
            self._control = None
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None


@pytest.fixture
def make_phone(tmp_path: Path) -> Iterator[Callable[..., Phone]]:
    phones: list[Phone] = []

    def make(**options: object) -> Phone:
        phone = Phone(root=tmp_path / f"phone{len(phones)}", **options)  # type: ignore[arg-type]
        phones.append(phone)
        phone.start()
        return phone

    yield make
    for phone in phones:
        phone.kill()


# ------------------------------------------------------------ phone examples

def phone_example(name: str, replacements: dict[str, str]) -> str:
    """A set-up file of docs/phones/ with its example values replaced.

    The files are what docs/phones.md tells an administrator to copy; the
    tests use them so that the documented set-up is the tested one. Each
    value to replace must be in the file: an example that drifts from what
    the tests expect fails here instead of silently going untested.
    """
    text = (PHONE_EXAMPLES / name).read_text()
    for example, value in replacements.items():
        assert example in text, f"docs/phones/{name} no longer contains {example!r}"
        text = text.replace(example, value)
    return text


# ---------------------------------------------------------------- Linphone

@dataclass
class Linphone:
    """Debian's console Linphone (`linphonec` 5.1), driven through its stdin.

    Its settings come in two files: `config` (``-c``) is the phone's set-up
    as docs/phones/linphonerc shows it, and a read-only factory file
    (``-b``) holds what only this machine needs (the address and ports to
    bind in the namespace). It has no sound card here: ``soundcard use
    files`` makes it play `audio_source` and record to `record_path` when a
    call is up.
    """

    root: Path
    config: str
    host: str
    netns: Netns | None = None  # None: on this machine's loopback, as it is
    audio_source: Path | None = None
    record_path: Path | None = None
    sip_port: int = 5060
    rtp_port: int = 7078
    process: subprocess.Popen[bytes] | None = None

    @property
    def output_path(self) -> Path:
        return self.root / "linphonec.out"

    def start(self) -> None:
        assert LINPHONEC is not None
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
        (self.root / "linphonerc").write_text(self.config)
        factory = [
            "[sip]", f"bind_address={self.host}", f"sip_port={self.sip_port}",
            "sip_tcp_port=-1", "sip_tls_port=-1",
            "[rtp]", f"audio_rtp_port={self.rtp_port}",
            "[sound]", "echocancellation=0",
            "[video]", "capture=0", "display=0", "automatically_initiate=0",
        ]
        (self.root / "factory").write_text("\n".join(factory) + "\n")
        # stdbuf: linphonec writes its events with stdio, fully buffered into a file.
        line_buffered = ["stdbuf", "-oL"] if shutil.which("stdbuf") else []
        with self.output_path.open("ab") as output:
            self.process = subprocess.Popen(
                [*in_netns(self.netns.name if self.netns else None), *line_buffered, LINPHONEC,
                 "-c", str(self.root / "linphonerc"), "-b", str(self.root / "factory"),
                 "-d", "0"],
                cwd=self.root, stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT,
                env={**os.environ, "HOME": str(self.root)}, start_new_session=True)
        self.command("soundcard use files")
        self.wait_output(r"Using wav files instead of soundcard", 10.0)

    def command(self, line: str) -> int:
        """Type one command; returns where in the output its effects start."""
        assert self.process is not None and self.process.stdin is not None
        offset = len(self.output())
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()
        return offset

    def output(self) -> str:
        return (self.output_path.read_text(errors="replace")
                if self.output_path.exists() else "")

    def wait_output(self, pattern: str, timeout_s: float, since: int = 0) -> re.Match[str]:
        """The first match of `pattern` in what linphonec printed after offset `since`."""
        def seen() -> re.Match[str] | None:
            if self.process is not None and self.process.poll() is not None:
                pytest.fail(f"linphonec exited with {self.process.returncode}:\n{self.output()}")
            return re.compile(pattern).search(self.output(), since)

        match = wait_for(seen, timeout_s, f"linphonec to print {pattern!r}")
        assert isinstance(match, re.Match)
        return match

    def wait_registered(self, timeout_s: float = 15.0) -> str:
        """Ask ``status register`` until the answer names the registered identity."""
        deadline = time.monotonic() + timeout_s
        while True:
            since = self.command("status register")
            answer = self.wait_output(r"unregistered|\bregistered[=,][^\n]*", 5.0, since)[0]
            if answer.startswith("registered, identity="):
                return answer
            if time.monotonic() > deadline:
                pytest.fail(f"linphonec not registered after {timeout_s} s: {answer}\n"
                            f"{self.output()}")
            time.sleep(0.2)

    def stop(self) -> int | None:
        """`quit`, as a user would: its exit status, or None if it had to be killed."""
        if self.process is None:
            return None
        with contextlib.suppress(BrokenPipeError):
            self.command("quit")
        try:
            code: int | None = self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()
            code = None
        self.process = None
        return code

    def kill(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None


@pytest.fixture
def make_linphone(tmp_path: Path) -> Iterator[Callable[..., Linphone]]:
    """Start linphonec phones (keyword arguments as for `Linphone`); killed at teardown."""
    phones: list[Linphone] = []

    def make(**options: object) -> Linphone:
        phone = Linphone(root=tmp_path / f"linphone{len(phones)}", **options)  # type: ignore[arg-type]
        phones.append(phone)
        phone.start()
        return phone

    yield make
    for phone in phones:
        phone.kill()
