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
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SCENARIOS = Path(__file__).parent / "scenarios"
TWISTD = Path(sys.executable).parent / "twistd"
SIPP = shutil.which("sipp")
BARESIP = shutil.which("baresip")
BARESIP_MODULES = Path("/usr/lib/baresip/modules")

DOMAIN = "pbx.test"
USERS = {"1001": "secret-1001", "1002": "secret-1002"}

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.05

requires_sipp = pytest.mark.skipif(
    SIPP is None, reason="sipp not installed (apt-get install sip-tester)")
requires_baresip = pytest.mark.skipif(
    BARESIP is None or not BARESIP_MODULES.is_dir(),
    reason="baresip not installed (apt-get install baresip-core)")


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


# -------------------------------------------------------------------- PBX

@dataclass
class Pbx:
    """One PBX installation in a directory: config, data_dir, log; started and stopped."""

    root: Path
    sip_port: int  # UDP and TCP
    tls_port: int
    digest_algorithms: tuple[str, ...] = ("MD5", "SHA-256")
    users: dict[str, str] = field(default_factory=lambda: dict(USERS))
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
        algorithms = ", ".join(f'"{a}"' for a in self.digest_algorithms)
        lines = [
            "[pbx]",
            f'data_dir = "{self.data_dir}"',
            "[sip]",
            f'domain = "{DOMAIN}"',
            f'udp = "127.0.0.1:{self.sip_port}"',
            f'tcp = "127.0.0.1:{self.sip_port}"',
            f'tls = "127.0.0.1:{self.tls_port}"',
            "[registrar]",
            f"digest_algorithms = [{algorithms}]",
            "[security]",
            f'log_file = "{self.security_log}"',
        ]
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
                [str(TWISTD), "-n", "--pidfile", str(self.root / "twistd.pid"),
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


@pytest.fixture
def make_pbx(tmp_path: Path) -> Iterator[Callable[..., Pbx]]:
    """Start a PBX (keyword arguments as for `Pbx`); each is checked at teardown."""
    made: list[Pbx] = []

    def make(**options: object) -> Pbx:
        sip_port = free_port()
        tls_port = free_port(avoid=(sip_port,))
        server = Pbx(root=tmp_path / f"pbx{len(made)}", sip_port=sip_port, tls_port=tls_port,
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


def run_sipp(
    work_dir: Path,
    scenario: str,
    pbx_port: int,
    *,
    transport: str = "u1",
    users: Sequence[tuple[str, str]] = (("1001", USERS["1001"]),),
    local_port: int | None = None,
    extra: Sequence[str] = (),
    timeout_s: int = 10,
) -> SippRun:
    """Run one SIPp scenario against the PBX on 127.0.0.1, one call per user, bounded."""
    assert SIPP is not None
    work_dir.mkdir(parents=True, exist_ok=True)
    run = len(list(work_dir.glob("users-*.csv")))
    csv = work_dir / f"users-{run}.csv"
    csv.write_text("SEQUENTIAL\n" + "".join(f"{u};{p};{DOMAIN}\n" for u, p in users))
    files = {name: work_dir / f"{name}-{run}.log" for name in ("errors", "messages", "logs")}
    command = [
        SIPP, f"127.0.0.1:{pbx_port}", "-sf", str(SCENARIOS / scenario), "-inf", str(csv),
        "-i", "127.0.0.1", "-p", str(local_port or free_port(avoid=(pbx_port,))),
        "-t", transport, "-m", str(len(users)), "-l", str(len(users)),
        "-timeout", f"{timeout_s}s", "-timeout_error", "-nostdin",
        "-trace_err", "-error_file", str(files["errors"]),
        "-trace_msg", "-message_file", str(files["messages"]),
        "-trace_logs", "-log_file", str(files["logs"]),
        *extra,
    ]
    completed = subprocess.run(command, cwd=work_dir, stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=timeout_s + 15, check=False)

    def read(path: Path) -> str:
        return path.read_text(errors="replace") if path.exists() else ""

    return SippRun(
        returncode=completed.returncode,
        output=(completed.stdout + completed.stderr).decode(errors="replace"),
        errors=read(files["errors"]), messages=read(files["messages"]), logs=read(files["logs"]))


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
    sip_port: int = 0
    ctrl_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    _control: socket.socket | None = None
    _buffer: bytes = b""
    events: list[dict[str, object]] = field(default_factory=list)

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.sip_port = free_port(span=2, avoid=(self.pbx_port,))  # TLS on sip_port + 1
        self.ctrl_port = free_port(avoid=(self.pbx_port, self.sip_port, self.sip_port + 1))
        config = [
            "poll_method epoll",
            f"sip_listen 127.0.0.1:{self.sip_port}",
            "audio_player aufile,/dev/null",
            "audio_source aufile,/dev/null",
            "audio_alert aufile,/dev/null",
            f"module_path {BARESIP_MODULES}",
            "module g711.so",
            "module_app account.so",
            "module_app menu.so",  # reginfo and the other commands
            "module_tmp uuid.so",
            "module_app ctrl_tcp.so",
            f"ctrl_tcp_listen 127.0.0.1:{self.ctrl_port}",
            "rtp_ports 20000-20100",
        ]
        if self.cafile is not None:
            config.append(f"sip_cafile {self.cafile}")
        (self.root / "config").write_text("\n".join(config) + "\n")
        t = self.transport
        (self.root / "accounts").write_text(
            f"<sip:{self.extension}@{DOMAIN};transport={t}>;auth_pass={self.password};"
            f'outbound="sip:127.0.0.1:{self.pbx_port};transport={t}";regint=120\n')
        assert BARESIP is not None
        with (self.root / "baresip.out").open("ab") as output:
            self.process = subprocess.Popen(
                [BARESIP, "-f", str(self.root)], cwd=self.root, stdin=subprocess.DEVNULL,
                stdout=output, stderr=subprocess.STDOUT,
                env={**os.environ, "HOME": str(self.root)}, start_new_session=True)
        self._control = wait_for(self._connect, 10.0, "baresip's ctrl_tcp")  # type: ignore[assignment]

    def _connect(self) -> socket.socket | None:
        if self.process is not None and self.process.poll() is not None:
            pytest.fail(f"baresip exited with {self.process.returncode}:\n{self.output()}")
        try:
            return socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=5)
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

    def registration(self) -> str:
        """The text of `reginfo`, without colours: "... OK ..." once registered."""
        data = self.command("reginfo").get("data", "")
        return _ANSI.sub("", str(data))

    def wait_registered(self, timeout_s: float = 15.0) -> str:
        def registered() -> str | None:
            info = self.registration()
            return info if re.search(r"\sOK\s", info) else None

        return str(wait_for(registered, timeout_s, f"baresip to register over {self.transport}"))

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
