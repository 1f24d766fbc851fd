"""Authenticated REGISTER rate and binding memory of the PBX, beside Kamailio 5.6.

Each server runs pinned to CPU 1 (`taskset -c 1`), SIPp to CPU 0, on
127.0.0.1 only (the method of /work/shared/notes/peers.md):

* rate (default): N users (1,000: u0000..u0999) with passwords; SIPp plays
  tests/interop/scenarios/register_auth.xml (REGISTER, 401, REGISTER with
  an MD5 digest, 200) cycling through them in order, over one UDP socket
  (`-t u1`) bound to the same port in every step: every user keeps one
  contact, so a re-registration refreshes its binding instead of adding
  one, across steps too; both servers see the same traffic.
  The rate rises in fixed steps (500, 1,000, 2,000 ... registrations/s,
  10 s each, bounded with -m and -timeout); for each step: SIPp's counts
  (successful, failed, retransmissions, from -trace_stat), the server's CPU
  (utime+stime of its whole process group from /proc, over the step's
  wall time) and memory (RSS and PSS summed over the group), and SIPp's
  own CPU (near 100% it, not the server, is the limit), and SIPp's mean
  time per registration. A step is clean with no failed call and the
  server keeping up: registrations done at 95% of the target or more
  while SIPp was offering them (from its per-second rows, SIPp's start
  and the step's tail left out; the whole-wall rate of the runs before
  2026-12-07 is printed too). It stops after the second step that is not.
  The figure is the highest clean step, and whether it needed
  retransmissions; its ratio to Kamailio's. --rounds N repeats both
  ladders N times, alternating which server goes first, with a ratio for
  each round: a single run on a shared 2-core VM is noisy.
* --bindings N: N distinct users register once each at a rate both servers
  hold; then the servers' resident memory (RSS, PSS) with N bindings, at
  once and again after the transactions have expired (the PBX keeps each
  completed non-INVITE server transaction for Timer J, 64*T1 = 32 s).

The PBX runs as `twistd -n pbx` with its log in a file (its normal set-up,
one info line per REGISTER answered), a config offering MD5 first (SIPp
answers only the first challenge, and only MD5). Kamailio runs
bench/kamailio/kamailio-htable.cfg by default (its strongest set-up: the
plain passwords loaded once into an htable and checked with
pv_www_authenticate, usrloc in memory, children=1, tcp_children=1),
`-m 512 -M 16`; `--kamailio-setup auth_db` runs bench/kamailio/kamailio.cfg
instead (auth_db: one SQLite query per REGISTER, the peer of the runs
before the evening of 2026-12-07); `--kamailio-setup htable_durable` runs
the htable set-up with every binding written through to SQLite in WAL mode
before the 200 (usrloc db_mode 1): the promise the PBX makes since its group
commit (a 200 means stored), which memory-only Kamailio does not make.

    .venv/bin/python bench/register.py [--quick] [--only pbx|kamailio] [--rounds 3]
        [--kamailio-setup htable[,htable_durable,auth_db]]
    .venv/bin/python bench/register.py --bindings 100000 [--bindings-rate 1000]

Needs sipp (sip-tester) and, for the peer, `apt-get install -y kamailio
kamailio-sqlite-modules`. Every process it starts is in its own process
group and is killed on the way out, however the run ends.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import platform
import pstats
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCENARIO = REPO / "tests/interop/scenarios/register_auth.xml"
KAMAILIO_CFGS = {
    # Credentials loaded once into memory (htable), checked with
    # pv_www_authenticate: Kamailio's strongest registrar set-up
    # (notes/peers.md), the default peer.
    "htable": REPO / "bench/kamailio/kamailio-htable.cfg",
    # auth_db: one SQLite query per authenticated REGISTER (the runs before
    # 2026-12-07 evening measured against this one).
    "auth_db": REPO / "bench/kamailio/kamailio.cfg",
    # htable, and every binding written through to SQLite (WAL) before the
    # 200 (usrloc db_mode 1): the same promise as the PBX's group commit.
    "htable_durable": REPO / "bench/kamailio/kamailio-htable.cfg",
}
USRLOC_SCHEMA = Path("/usr/share/kamailio/db_sqlite/usrloc-create.sql")
"""Debian's kamailio-sqlite-modules' own DDL for the location table (version 9)."""
TWISTD = Path(sys.executable).parent / "twistd"
DOMAIN = "pbx.test"
SERVER_CPU = 1
LOAD_CPU = 0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

STEPS = (500, 1000, 1500, 2000, 3000, 4000, 5000, 6000, 8000, 10000, 12000, 14000, 15000,
         16000, 17000, 18000, 20000, 22000, 24000, 26000, 28000, 30000)
"""Up to where neither server holds: on the 2026-12-05 machine both held 15,000/s,
the top of the old ladder, and a ratio of 1.00 said nothing more; on the
2026-12-07 Xeon machine Kamailio with credentials in memory held 22,000/s,
the top of the next one."""
AT_RATE = 0.95  # a step counts only if SIPp completed its calls at this share of the target
QUICK_STEPS = (200, 400)

sys.path.insert(0, str(REPO / "bench/kamailio"))
from make_db import make_db  # noqa: E402


def say(text: str = "") -> None:
    print(text, flush=True)  # a script's output, not a log


# ------------------------------------------------------------- processes

def free_port(avoid: Sequence[int] = ()) -> int:
    """A port on 127.0.0.1 free for both UDP and TCP (the PBX takes both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port in avoid or not udp_port_is_free(port):
            continue
        return port
    raise RuntimeError("no free port on 127.0.0.1")


def udp_port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            udp.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def group_pids(pgid: int) -> list[int]:
    """Live processes of a process group (the server and its children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def group_cpu_s(pgid: int) -> float:
    """utime + stime of every process in the group, in seconds."""
    total = 0
    for pid in group_pids(pgid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLOCK_TICKS


@dataclass(frozen=True)
class Memory:
    rss_mb: float  # sum over the group: counts shared pages once per process
    pss_mb: float  # proportional set size: shared pages split among sharers

    def __str__(self) -> str:
        return f"RSS {self.rss_mb:.1f} MB, PSS {self.pss_mb:.1f} MB"


def group_memory(pgid: int) -> Memory:
    rss_kb = pss_kb = 0
    for pid in group_pids(pgid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                name, _, value = line.partition(":")
                if name == "Rss":
                    rss_kb += int(value.split()[0])
                elif name == "Pss":
                    pss_kb += int(value.split()[0])
    return Memory(rss_mb=rss_kb / 1024, pss_mb=pss_kb / 1024)


def kill_group(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> int | None:
    """SIGTERM the process group, then SIGKILL what is left after `grace_s`."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    for pid in group_pids(process.pid):  # children that outlived their parent
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return process.returncode


def answers_options(port: int, timeout_s: float) -> bool:
    """Whether something on 127.0.0.1:port answers a SIP OPTIONS within `timeout_s`."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        local = sock.getsockname()[1]
        sock.settimeout(0.2)
        deadline = time.monotonic() + timeout_s
        n = 0
        while time.monotonic() < deadline:
            n += 1
            request = (
                f"OPTIONS sip:{DOMAIN} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-bench-{n};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:probe@{DOMAIN}>;tag=probe\r\nTo: <sip:{DOMAIN}>\r\n"
                f"Call-ID: probe-{n}-{local}\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n")
            sock.sendto(request.encode(), ("127.0.0.1", port))
            try:
                if sock.recv(65535).startswith(b"SIP/2.0 "):
                    return True
            except TimeoutError:
                continue
    return False


# --------------------------------------------------------------- servers

class Server:
    name = ""

    def __init__(self, workdir: Path, users: Sequence[tuple[str, str]]) -> None:
        self.workdir = workdir
        self.users = users
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_s = 0.0

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write config and data before the clock for start-up starts."""

    def start(self, timeout_s: float) -> None:
        self.prepare()
        started = time.monotonic()
        with (self.workdir / f"{self.name}.out").open("ab") as output:
            self.process = subprocess.Popen(
                ["taskset", "-c", str(SERVER_CPU), *self.command()], cwd=self.workdir,
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True)
        if not answers_options(self.port, timeout_s):
            raise SystemExit(f"{self.name} did not answer within {timeout_s} s; see "
                             f"{self.workdir / (self.name + '.out')}")
        self.startup_s = time.monotonic() - started

    @property
    def pgid(self) -> int:
        assert self.process is not None
        return self.process.pid

    keeps_bindings = False  # whether a restart reloads the bindings

    def stop(self) -> None:
        if self.process is not None:
            kill_group(self.process)
            self.process = None

    def bindings(self) -> int | None:
        """How many bindings the server holds, where it can tell us; None otherwise."""
        return None


LOG_REQUESTS = True
"""The PBX's [pbx] log_requests; set from --log-requests."""

PROFILE: Path | None = None
"""Where twistd's cProfile statistics go; set from --profile."""

class Pbx(Server):
    name = "pbx"
    keeps_bindings = True  # SQLite, flushed on a clean stop

    def prepare(self) -> None:
        self.port = free_port()
        self.data_dir = self.workdir / "pbx-data"
        lines = [
            "[pbx]", f'data_dir = "{self.data_dir}"',
            f"log_requests = {'true' if LOG_REQUESTS else 'false'}",
            # Timer J holds every answered UDP REGISTER for 32 s: at R/s that
            # is 64*R transactions (two per registration), above the default
            # bound of 100,000 from 1,560/s on.
            "[sip]", f'domain = "{DOMAIN}"', f'udp = "127.0.0.1:{self.port}"',
            "max_transactions = 500000",
            "[registrar]", 'digest_algorithms = ["MD5", "SHA-256"]',
            # All the load comes from one address (SIPp on loopback): the
            # per-source limit is set far above it, so that its counting is
            # still paid for and measured, but never drops the load.
            "[security]", "max_messages_per_source = 100000000",
        ]
        for user, password in self.users:
            lines.append(f'[users.{user}]\npassword = "{password}"')
        self.config = self.workdir / "pbx.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = self.workdir / "pbx.log"

    def command(self) -> list[str]:
        profile = [] if PROFILE is None else [
            f"--profile={PROFILE}", "--profiler=cprofile", "--savestats"]
        return [str(TWISTD), "-n", "--pidfile", str(self.workdir / "pbx.pid"), *profile,
                "--logfile", str(self.log), "pbx", "--config", str(self.config)]

    def start(self, timeout_s: float) -> None:
        super().start(timeout_s)
        mode = self.mode()
        if not mode.startswith("compiled"):
            # A source file edited after `make compile` (even during a run:
            # each start checks again) makes the PBX fall back to pure Python,
            # about half as fast: such figures must not pass for the PBX's.
            self.stop()
            raise SystemExit(f"the PBX runs as {mode!r}, not compiled: run `make compile` "
                             "and leave pbx/ alone while the benchmark runs")

    def mode(self) -> str:
        """What the PBX logged at start about its hot path (`pbx.compiled.MODE`)."""
        marker = "SIP core and registrar: "
        with contextlib.suppress(OSError):
            for line in self.log.read_text(errors="replace").splitlines():
                if marker in line:
                    return line.split(marker, 1)[1].strip()
        return "unknown (no start-up line in its log)"

    def bindings(self) -> int | None:
        """Rows in the PBX's SQLite file (flushed every 0.2 s; WAL lets us read)."""
        database = self.data_dir / "pbx.sqlite3"
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT count(*) FROM bindings").fetchone()[0])


class Kamailio(Server):
    name = "kamailio"
    config: Path | None = None
    """The .cfg to run instead of the set-up's (bench/flood.py's proxy)."""

    def __init__(self, workdir: Path, users: Sequence[tuple[str, str]],
                 setup: str = "htable", *, named_by_setup: bool = False) -> None:
        super().__init__(workdir, users)
        self.setup = setup
        if named_by_setup:
            self.name = f"kamailio-{setup}"

    @property
    def durable(self) -> bool:
        return self.config is None and self.setup == "htable_durable"

    def prepare(self) -> None:
        self.port = free_port()
        self.database = self.workdir / f"{self.name}.sqlite3"
        make_db(self.database, DOMAIN, self.users)
        if self.durable:
            with contextlib.closing(sqlite3.connect(self.database)) as db:
                db.executescript(USRLOC_SCHEMA.read_text())
                db.commit()
        self.rundir = self.workdir / f"{self.name}-run"
        self.rundir.mkdir(exist_ok=True)

    def command(self) -> list[str]:
        return ["kamailio", "-f", str(self.config or KAMAILIO_CFGS[self.setup]), "-DD", "-E",
                "-l", f"udp:127.0.0.1:{self.port}", "-Y", str(self.rundir),
                "-m", "512", "-M", "16", "-A", f'DBURL="sqlite://{self.database}"',
                *self.durable_flags()]

    def durable_flags(self) -> list[str]:
        if not self.durable:
            return []
        # db_sqlite keys its journal mode by the URL's path without the leading
        # slash (checked: with the slash the database stays in rollback mode).
        return ["-A", "DURABLE", "-A",
                f'DB_JOURNAL="{str(self.database).lstrip("/")}=WAL;"']


# ------------------------------------------------------------------ load

@dataclass(frozen=True)
class Step:
    rate: int
    calls: int
    successful: int
    failed: int  # failed, plus calls SIPp never finished before its timeout
    retransmissions: int
    wall_s: float
    cpu_percent: float
    sipp_cpu_percent: float  # the load generator's own CPU 0: near 100 means it is the limit
    memory: Memory
    steady_rate: float  # registrations done per second while SIPp was offering them
    mean_ms: float  # SIPp's mean time per registration (REGISTER to 200), retransmissions included

    @property
    def achieved(self) -> float:
        """Registrations over the whole wall time, SIPp's start and the step's tail included."""
        return self.successful / self.wall_s if self.wall_s else 0.0

    @property
    def clean(self) -> bool:
        """No failed call, and the server kept up with the offered rate (`steady_rate`)."""
        return self.failed == 0 and self.steady_rate >= AT_RATE * self.rate

    @property
    def clean_by_wall(self) -> bool:
        """The rule of the runs before 2026-12-07: the rate over the whole wall time.

        One call retransmitted in the step's last half second adds T1 (0.5 s)
        to the wall and fails a 10 s step at 95%, however well the server
        kept up for the other 9.5 s: this judged the tail, not the rate.
        Printed beside `clean` so that runs stay comparable.
        """
        return self.failed == 0 and self.achieved >= AT_RATE * self.rate


def write_users_csv(path: Path, users: Sequence[tuple[str, str]]) -> None:
    path.write_text("SEQUENTIAL\n" + "".join(f"{u};{p};{DOMAIN}\n" for u, p in users))


def run_step(server: Server, users_csv: Path, rate: int, seconds: float, work: Path,
             tag: str, local_port: int) -> Step:
    """One SIPp run at `rate`, from `local_port` (the same for every step of a run:
    each user's Contact is then the same URI, and every step refreshes the
    binding of the step before instead of adding one, as on either server a
    phone re-registering from its address does; with a new port per step a
    user gained a contact a step, and the PBX's max_contacts_per_user (10)
    answered the eleventh step 403)."""
    calls = max(1, int(rate * seconds))
    stats = work / f"{tag}.csv"
    # Bounds: no answer within 8 s fails a call (after SIPp's retransmissions),
    # and the whole step ends at twice its length plus 20 s whatever happens.
    global_timeout_s = int(seconds * 2 + 20)
    command = [
        "taskset", "-c", str(LOAD_CPU), "sipp", f"127.0.0.1:{server.port}",
        "-sf", str(SCENARIO), "-inf", str(users_csv), "-i", "127.0.0.1",
        "-p", str(local_port), "-t", "u1", "-r", str(rate), "-m", str(calls),
        "-l", str(max(1000, rate * 10)), "-recv_timeout", "8000",
        "-timeout", f"{global_timeout_s}s", "-nostdin",
        "-trace_stat", "-stf", str(stats), "-fd", "1",
    ]
    cpu_before = group_cpu_s(server.pgid)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with (work / f"{tag}.sipp.out").open("wb") as output:
        process = subprocess.Popen(command, cwd=work, stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            process.wait(global_timeout_s + 15)
        except subprocess.TimeoutExpired:
            pass
        finally:
            kill_group(process, grace_s=2)
    wall_s = time.monotonic() - started
    cpu_s = group_cpu_s(server.pgid) - cpu_before
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # SIPp, reaped just now
    sipp_cpu_s = (children.ru_utime + children.ru_stime
                  - children_before.ru_utime - children_before.ru_stime)
    memory = group_memory(server.pgid)
    stat = read_stats(stats, calls)
    unfinished = max(0, calls - stat.successful - stat.failed)
    return Step(rate=rate, calls=calls, successful=stat.successful,
                failed=stat.failed + unfinished, retransmissions=stat.retransmissions,
                wall_s=wall_s, cpu_percent=100 * cpu_s / wall_s,
                sipp_cpu_percent=100 * sipp_cpu_s / wall_s, memory=memory,
                steady_rate=stat.steady_rate, mean_ms=stat.mean_ms)


@dataclass(frozen=True)
class SippStats:
    successful: int
    failed: int
    retransmissions: int
    steady_rate: float
    mean_ms: float


def read_stats(path: Path, calls: int) -> SippStats:
    """What SIPp's -trace_stat file (one row a second, -fd 1) says about a step.

    The counts are the cumulative ones of the last row. ``steady_rate`` is
    the registrations completed per second from the row a second in to the
    last row written while SIPp was still starting calls (fewer than
    ``calls`` created): the rate the server kept up with, apart from SIPp's
    start and the step's tail. A step too short for two such rows falls
    back to the last row's count over its elapsed time.
    """
    if not path.exists():
        return SippStats(0, 0, 0, 0.0, 0.0)
    rows = list(csv.DictReader(path.read_text().splitlines(), delimiter=";"))
    if not rows:
        return SippStats(0, 0, 0, 0.0, 0.0)

    def seconds(row: dict[str, str]) -> float:
        return float(row["CurrentTime"].split("\t")[-1])

    start = seconds(rows[0])
    offering = [row for row in rows
                if seconds(row) - start >= 1.0 and int(row["TotalCallCreated"]) < calls]
    last = rows[-1]
    successful = int(last["SuccessfulCall(C)"])
    if len(offering) >= 2:
        first_row, last_row = offering[0], offering[-1]
        steady = ((int(last_row["SuccessfulCall(C)"]) - int(first_row["SuccessfulCall(C)"]))
                  / (seconds(last_row) - seconds(first_row)))
    else:
        elapsed = seconds(last) - start
        steady = successful / elapsed if elapsed > 0 else 0.0
    hours, minutes, secs, micros = (int(x) for x in last["CallLength(C)"].split(":"))
    mean_ms = ((hours * 60 + minutes) * 60 + secs) * 1000 + micros / 1000
    return SippStats(successful=successful, failed=int(last["FailedCall(C)"]),
                     retransmissions=int(last["Retransmissions(C)"]),
                     steady_rate=steady, mean_ms=mean_ms)


# ---------------------------------------------------------------- report

def machine_note() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} x {model}, {memory_gib:.0f} GiB, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def load_note() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def version_of(command: Sequence[str]) -> str:
    try:
        output = subprocess.run(command, capture_output=True, timeout=10, check=False)
    except OSError:
        return "not installed"
    text = (output.stdout + output.stderr).decode(errors="replace").strip()
    return text.splitlines()[0].strip() if text else "?"


def print_steps(name: str, steps: Sequence[Step]) -> None:
    say(f"\n{name}: authenticated REGISTER (401 + 200) per second, one core")
    say("| target/s | steady/s | achieved/s | ok | failed | retrans | mean ms | CPU % "
        "| SIPp CPU % | RSS MB | PSS MB |")
    say("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in steps:
        say(f"| {s.rate:,} | {s.steady_rate:,.0f} | {s.achieved:,.0f} | {s.successful:,} | "
            f"{s.failed:,} | {s.retransmissions:,} | {s.mean_ms:.0f} | {s.cpu_percent:.0f} | "
            f"{s.sipp_cpu_percent:.0f} | {s.memory.rss_mb:.1f} | {s.memory.pss_mb:.1f} |")


def best_clean(steps: Sequence[Step], *, by_wall: bool = False) -> Step | None:
    clean = [s for s in steps if (s.clean_by_wall if by_wall else s.clean)]
    return max(clean, key=lambda s: s.rate) if clean else None


def describe_best(name: str, best: Step | None) -> str:
    if best is None:
        return f"{name}: no step without failures at {AT_RATE:.0%} of its target rate"
    retrans = (f"with {best.retransmissions:,} retransmissions" if best.retransmissions
               else "without retransmissions")
    return (f"{name}: highest rate with zero failures {best.rate:,}/s ({retrans}, "
            f"mean {best.mean_ms:.0f} ms, CPU {best.cpu_percent:.0f}%, "
            f"SIPp {best.sipp_cpu_percent:.0f}%)")


def ratio_of(results: dict[str, list[Step]], peer: str = "kamailio", *,
             by_wall: bool = False) -> float | None:
    """PBX over `peer`, highest clean rate each; None unless both had a clean step."""
    pbx = best_clean(results.get("pbx", []), by_wall=by_wall)
    kamailio = best_clean(results.get(peer, []), by_wall=by_wall)
    if pbx is None or kamailio is None:
        return None
    return pbx.rate / kamailio.rate


def peers_of(results: dict[str, list[Step]]) -> list[str]:
    """The Kamailio set-ups of a round, by their server names."""
    return [name for name in results if name != "pbx"]


def cpu_per_registration_us(steps: Sequence[Step]) -> dict[int, float]:
    """Server CPU µs per registration at each clean step from 5,000/s, by rate.

    Below that, the server's idle work (timers, housekeeping) is a large
    share of its CPU and the figure says little about a registration.
    """
    return {s.rate: s.cpu_percent / 100 * s.wall_s / s.successful * 1e6
            for s in steps if s.clean and s.successful and s.rate >= 5000}


def report_rounds(rounds: Sequence[dict[str, list[Step]]], users: Sequence[tuple[str, str]],
                  seconds: float, *, quick: bool) -> None:
    say(f"\n# {'QUICK SMOKE RUN, not a measurement: ' if quick else ''}"
        f"{len(users):,} users, steps of {seconds:.0f} s, SIPp -t u1, {len(rounds)} round(s); "
        f"{load_note()}")
    ratios: dict[str, list[float | None]] = {}
    for number, results in enumerate(rounds, start=1):
        say(f"\n## round {number}")
        for name, steps_done in results.items():
            print_steps(name, steps_done)
        say()
        for name, steps_done in results.items():
            say(describe_best(name, best_clean(steps_done)))
            per = cpu_per_registration_us(steps_done)
            if per:
                say(f"  {name} CPU per registration: "
                    + ", ".join(f"{us:.0f} µs at {rate:,}/s" for rate, us in per.items()))
        if "pbx" not in results:
            continue
        for peer in peers_of(results):
            ratio = ratio_of(results, peer)
            by_wall = ratio_of(results, peer, by_wall=True)
            ratios.setdefault(peer, []).append(ratio)
            say(f"ratio pbx/{peer} (highest clean rate): {_ratio_text(ratio)}"
                f"  (by the whole-wall rule before 2026-12-07: {_ratio_text(by_wall)})")
    if len(rounds) > 1:
        for peer, peer_ratios in ratios.items():
            known = [r for r in peer_ratios if r is not None]
            say(f"\nratios pbx/{peer} by round: "
                f"{', '.join(_ratio_text(r) for r in peer_ratios)}; "
                f"lowest {_ratio_text(min(known) if known else None)}")


def _ratio_text(ratio: float | None) -> str:
    return "n/a (a server had no clean step)" if ratio is None else f"{ratio:.2f}"


# ------------------------------------------------------------------ runs

def rate_run(server: Server, users: Sequence[tuple[str, str]], steps: Sequence[int],
             seconds: float, pause_s: float, max_failed_steps: int, work: Path) -> list[Step]:
    users_csv = work / f"{server.name}-users.csv"
    write_users_csv(users_csv, users)
    server.start(timeout_s=60)
    say(f"{server.name}: answering on 127.0.0.1:{server.port} after {server.startup_s:.1f} s; "
        f"idle {group_memory(server.pgid)}; {load_note()}")
    results: list[Step] = []
    failed_steps = 0
    sipp_port = free_port(avoid=(server.port,))
    try:
        for rate in steps:
            if not udp_port_is_free(sipp_port):  # taken since by someone else
                sipp_port = free_port(avoid=(server.port,))
            step = run_step(server, users_csv, rate, seconds, work, f"{server.name}-{rate}",
                            sipp_port)
            results.append(step)
            say(f"  {rate:>6,}/s: ok {step.successful:,}, failed {step.failed:,}, retrans "
                f"{step.retransmissions:,}, achieved {step.achieved:,.0f}/s, "
                f"CPU {step.cpu_percent:.0f}% (SIPp {step.sipp_cpu_percent:.0f}%), "
                f"{step.memory}, wall {step.wall_s:.1f} s")
            if server.process is not None and server.process.poll() is not None:
                say(f"  {server.name} exited with {server.process.returncode}; stopping")
                break
            if not step.clean:
                failed_steps += 1
                if failed_steps >= max_failed_steps:
                    break
            time.sleep(pause_s)  # let retransmissions and timers of this step settle
    finally:
        server.stop()
    return results


def bindings_run(server: Server, count: int, rate: int, settle_s: float, work: Path) -> None:
    width = max(4, len(str(count - 1)))
    users = [(f"u{i:0{width}d}", f"pw-{i:0{width}d}") for i in range(count)]
    users_csv = work / f"{server.name}-users-{count}.csv"
    write_users_csv(users_csv, users)
    server.users = users
    server.start(timeout_s=600)
    try:
        idle = group_memory(server.pgid)
        say(f"{server.name}: {count:,} users configured; answering after "
            f"{server.startup_s:.1f} s; idle {idle}; {load_note()}")
        step = run_step(server, users_csv, rate, count / rate, work,
                        f"{server.name}-bindings-{count}", free_port(avoid=(server.port,)))
        say(f"  registered {step.successful:,} of {count:,} at {rate:,}/s "
            f"(failed {step.failed:,}, retrans {step.retransmissions:,}, CPU "
            f"{step.cpu_percent:.0f}%, wall {step.wall_s:.1f} s)")
        time.sleep(1.0)  # one SQLite flush interval and then some
        loaded = group_memory(server.pgid)
        held = server.bindings()
        held_note = f"; {held:,} bindings in its database" if held is not None else ""
        say(f"  with {step.successful:,} bindings, at once: {loaded}{held_note}")
        if settle_s > 0:
            time.sleep(settle_s)
            settled = group_memory(server.pgid)
            say(f"  after {settle_s:.0f} s more (transactions expired): {settled}")
            growth_kb = (settled.pss_mb - idle.pss_mb) * 1024 / max(1, step.successful)
            say(f"  PSS growth over idle per registration: {growth_kb:.2f} KB")
        if server.keeps_bindings:
            # Python rarely hands freed memory back to the kernel, so the figures
            # above are a high-water mark (transactions, nonces, buffers). A
            # restart that loads the saved bindings shows a process holding them
            # and nothing else (they partly reuse the heap the config parse
            # freed, so the difference from idle understates their size).
            server.stop()
            server.start(timeout_s=600)
            reloaded = group_memory(server.pgid)
            say(f"  restarted: {server.bindings():,} bindings loaded from its database, "
                f"answering after {server.startup_s:.1f} s: {reloaded}")
    finally:
        server.stop()


def print_profile(path: Path, top: int = 40) -> None:
    """The functions the PBX spent most time in, itself and with what they called."""
    if not path.exists():
        say(f"# no profile at {path}: twistd did not stop cleanly")
        return
    stats = pstats.Stats(str(path))
    stats.strip_dirs()
    for order in ("tottime", "cumulative"):
        say(f"\n# PBX profile by {order} (cProfile, so calls are overcharged)")
        stats.sort_stats(order).print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: two low steps of 3 s (with --bindings: settle 5 s)")
    parser.add_argument("--only", choices=("pbx", "kamailio"))
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--steps", help="comma-separated rates, e.g. 500,1000,2000")
    parser.add_argument("--step-s", type=float, default=10.0, help="length of each step")
    parser.add_argument("--pause-s", type=float, default=3.0, help="idle time between steps")
    parser.add_argument("--max-failed-steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1,
                        help="ladders per server, alternating which goes first; a ratio each")
    parser.add_argument("--bindings", type=int, help="memory with this many bindings")
    parser.add_argument("--bindings-rate", type=int, default=1000)
    parser.add_argument("--settle-s", type=float, default=40.0,
                        help="--bindings: wait this long for transactions to expire")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--log-requests", choices=("on", "off"), default="on",
                        help="the PBX's [pbx] log_requests (Kamailio logs no request)")
    parser.add_argument("--kamailio-setup", default="htable",
                        help="the peer's set-ups, comma-separated, each a ladder and a "
                             "ratio: htable (credentials in memory, its strongest), "
                             "htable_durable (and every binding written to SQLite before "
                             "the 200, the PBX's promise) or auth_db (a SQLite query per "
                             "REGISTER)")
    parser.add_argument("--profile", action="store_true",
                        help="run the PBX under twistd's cProfile (slows it about twofold: "
                             "for where its time goes, not for figures) and print the top")
    args = parser.parse_args()
    global LOG_REQUESTS, PROFILE
    LOG_REQUESTS = args.log_requests == "on"
    setups = [setup.strip() for setup in args.kamailio_setup.split(",") if setup.strip()]
    unknown = [setup for setup in setups if setup not in KAMAILIO_CFGS]
    if unknown or not setups:
        parser.error(f"--kamailio-setup: expected some of {', '.join(KAMAILIO_CFGS)}, "
                     f"comma-separated; got {args.kamailio_setup!r}")

    missing = [tool for tool in ("sipp", "taskset") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: apt-get install -y sip-tester util-linux")
    if not TWISTD.exists():
        raise SystemExit(f"no twistd beside {sys.executable}: run from the project's venv")
    makers: dict[str, Callable[[Path, Sequence[tuple[str, str]]], Server]] = {}
    if args.only != "kamailio":
        makers["pbx"] = Pbx
    if args.only != "pbx":
        for setup in setups:
            kamailio = Kamailio(Path(), [], setup, named_by_setup=len(setups) > 1)
            makers[kamailio.name] = partial(Kamailio, setup=setup,
                                            named_by_setup=len(setups) > 1)
    names = list(makers)
    if args.only != "pbx" and shutil.which("kamailio") is None:
        raise SystemExit("kamailio not installed: apt-get install -y kamailio "
                         "kamailio-sqlite-modules (or use --only pbx)")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs two CPUs: the server on CPU 1, SIPp on CPU 0")

    # A SIGTERM or SIGHUP ends the run through the finally blocks below.
    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    work = Path(tempfile.mkdtemp(prefix="bench-register-"))
    if args.profile:
        PROFILE = work / "pbx.pstats"
    say(f"# bench/register.py {' '.join(sys.argv[1:])}  ({time.strftime('%Y-%m-%d %H:%M')})")
    say(f"# {machine_note()}; server on CPU {SERVER_CPU}, SIPp on CPU {LOAD_CPU}; "
        f"{load_note()}")
    say(f"# {version_of(['sipp', '-v'])}; "
        f"{version_of(['kamailio', '-v']) if args.only != 'pbx' else ''}"
        f"{f' (set-ups: {chr(44).join(setups)})' if args.only != 'pbx' else ''}")
    say(f"# work directory {work}")
    servers: dict[str, Server] = {}
    try:
        if args.bindings:
            settle_s = min(args.settle_s, 5.0) if args.quick else args.settle_s
            for name in names:
                server: Server = makers[name](work, [])
                servers[name] = server
                bindings_run(server, args.bindings, args.bindings_rate, settle_s, work)
            return
        users = [(f"u{i:04d}", f"pw-{i:04d}") for i in range(args.users)]
        if args.steps:
            steps: Sequence[int] = [int(x) for x in args.steps.split(",")]
        else:
            steps = QUICK_STEPS if args.quick else STEPS
        seconds = 3.0 if args.quick else args.step_s
        rounds: list[dict[str, list[Step]]] = []
        for number in range(1, args.rounds + 1):
            # Each round in the other order: neither server always runs on a
            # machine warmed (or disturbed) by the other's run.
            order = names if number % 2 else names[::-1]
            results: dict[str, list[Step]] = {}
            round_work = work / f"round{number}"
            round_work.mkdir()
            say(f"# round {number} of {args.rounds}: {', '.join(order)}")
            for name in order:
                server = makers[name](round_work, users)
                servers[name] = server
                results[name] = rate_run(server, users, steps, seconds, args.pause_s,
                                         args.max_failed_steps, round_work)
            rounds.append({name: results[name] for name in names})
        report_rounds(rounds, users, seconds, quick=args.quick)
        if PROFILE is not None and "pbx" in servers:
            servers["pbx"].stop()  # twistd writes its statistics on the way out
            print_profile(PROFILE)
    finally:
        for server in servers.values():
            server.stop()
        if args.keep:
            say(f"# kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as stop:
        raise SystemExit(f"interrupted ({stop}); the processes it started are stopped") from None
