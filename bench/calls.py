"""Calls per second through the PBX (a B2BUA) and its memory per call, beside the Sippy B2BUA.

Each B2BUA runs pinned to CPU 1 (`taskset -c 1`); the two SIPps that
drive it, a caller (UAC) and an answering phone (UAS), both run on CPU 0;
127.0.0.1 only (the method of /work/shared/notes/peers.md, and the process
helpers of bench/register.py).

* The PBX (`twistd -n pbx`, its log in a file: its normal set-up, three
  info lines per call) knows two users, 1001 and 1002. The UAS first
  registers as 1002 (tests/interop/scenarios/register_auth.xml) from the
  port it then answers on (uas_answer.xml). The UAC calls 1002 as 1001
  with uac_call_auth.xml: INVITE, 407, ACK, INVITE with an MD5 digest,
  100/180/200, ACK, a pause of `--hold-ms`, BYE, 200. The PBX offers MD5
  first (SIPp answers the first challenge only, and only MD5).
* The Sippy B2BUA 2.5 (bench/sippy/b2bua.sh: `--auth_enable=off
  --acct_enable=off`, SIPLOG_BEND=none, every call statically routed to
  the UAS) trusts every caller: its authentication needs a Radius server.
  Its UAC, uac_call.xml, is the same call without the challenge (and it
  tolerates a 180 relayed after the 200, which the Sippy B2BUA sends from
  several threads under load). So the PBX does more per call: one more
  transaction (INVITE, 407, ACK) and a digest check. It has no setting to
  trust a caller, so it is measured with authentication, and the
  `challenge` figure (an INVITE answered 407 and its ACK, at a fixed rate)
  says what that part costs it.

Modes:

* rate (default): the call rate rises in steps (50, 100, 200 ... calls/s,
  `--step-s` each, bounded with -m and -timeout); per step: calls ok,
  failed (either SIPp's failures, plus calls never finished), SIPp's
  retransmissions (both sides), the mean time from INVITE to 200 and the
  share of calls slower than 200 ms, the server's CPU (utime+stime of its
  process group over the UAC's wall time) and CPU per call, its memory
  (RSS and PSS), and SIPp's own CPU. It stops after the second unclean
  step. The figure: the highest step with zero failed calls.
* --hold N: N calls answered and held open at once (a rate both servers
  hold, then a long pause), and the servers' resident memory: idle (after
  a warm-up of 100 calls and `--settle-s`, so caches and pools are there
  and the warm-up's transactions have expired), then with N calls up,
  `--settle-s` after the last was answered (so the transactions of the
  set-up, kept 32 s after a 2xx, have expired too): per call =
  (with calls - idle) / N.
* --profile RATE: one step at RATE with py-spy sampling the PBX (CPU 0),
  and the functions that take most of its samples.

    .venv/bin/python bench/calls.py [--quick] [--only pbx|sippy]
    .venv/bin/python bench/calls.py --hold 5000 [--hold-rate 100]
    .venv/bin/python bench/calls.py --profile 200 --only pbx

Needs sipp (sip-tester) and the project's venv (twistd, and `sippy` for
the peer). Every process it starts is in its own process group and is
killed on the way out, however the run ends.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import importlib.metadata
import os
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from register import (
    DOMAIN,
    LOAD_CPU,
    SERVER_CPU,
    TWISTD,
    Memory,
    Server,
    free_port,
    group_cpu_s,
    group_memory,
    kill_group,
    load_note,
    machine_note,
    say,
    udp_port_is_free,
    version_of,
)

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = REPO / "tests/interop/scenarios"
SIPPY_SCRIPT = REPO / "bench/sippy/b2bua.sh"
B2BUA = Path(sys.executable).parent / "b2bua"
PY_SPY = Path(sys.executable).parent / "py-spy"

CALLER, CALLEE = "1001", "1002"
PASSWORDS = {CALLER: "bench-1001", CALLEE: "bench-1002"}

STEPS = (50, 100, 150, 200, 250, 300, 400, 500, 600, 800)
QUICK_STEPS = (20, 50)
HOLD_MS = 1000  # how long each call of a rate step stays up
RECV_TIMEOUT_MS = 8000  # a call that hears nothing for this long fails
SLOW_MS = 200  # set-up slower than this counts as slow (a bucket edge of the scenarios)
TRANSACTION_LINGER_S = 32.0  # 64*T1: a 2xx'd INVITE server transaction lasts this long


# --------------------------------------------------------------- servers

class Pbx(Server):
    """The PBX with users 1001 and 1002; the UAS must register as 1002 first."""

    name = "pbx"
    uac_scenario = "uac_call_auth.xml"
    needs_registration = True

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, list(PASSWORDS.items()))

    def prepare(self) -> None:
        self.port = free_port()
        self.data_dir = self.workdir / "pbx-data"
        lines = [
            "[pbx]", f'data_dir = "{self.data_dir}"',
            "[sip]", f'domain = "{DOMAIN}"', f'udp = "127.0.0.1:{self.port}"',
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
        return [str(TWISTD), "-n", "--pidfile", str(self.workdir / "pbx.pid"),
                "--logfile", str(self.log), "pbx", "--config", str(self.config)]

    def answered_calls(self) -> int:
        """Answered calls in the CDR table (written every 0.2 s)."""
        database = self.data_dir / "pbx.sqlite3"
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            return int(db.execute(
                "SELECT count(*) FROM cdr WHERE answered_by IS NOT NULL").fetchone()[0])


class Sippy(Server):
    """The Sippy B2BUA, routing every call to the UAS on `route_port`."""

    name = "sippy"
    uac_scenario = "uac_call.xml"
    needs_registration = False

    def __init__(self, workdir: Path, route_port: int) -> None:
        super().__init__(workdir, [])
        self.route_port = route_port

    def prepare(self) -> None:
        self.port = free_port(avoid=(self.route_port,))

    def command(self) -> list[str]:
        return ["sh", str(SIPPY_SCRIPT), str(self.port), f"127.0.0.1:{self.route_port}",
                str(self.workdir / "sippy")]

    def stop(self) -> None:
        if self.process is not None:
            kill_group(self.process, grace_s=3.0)  # it may linger on SIGTERM
            self.process = None


# ------------------------------------------------------------------ SIPp

@dataclass(frozen=True)
class SippStats:
    created: int
    successful: int
    failed: int
    retransmissions: int
    current: int
    setup_ms: float  # mean INVITE-to-200 time (rtd 1), over the run
    answered: int  # calls whose 200 was timed (sum of the repartition buckets)
    slow: int  # of those, slower than SLOW_MS


def _duration_ms(text: str) -> float:
    """SIPp's HH:MM:SS:uuuuuu."""
    try:
        hours, minutes, seconds, micros = (int(x) for x in text.split(":"))
    except ValueError:
        return 0.0
    return ((hours * 60 + minutes) * 60 + seconds) * 1000 + micros / 1000


def read_sipp_stats(path: Path) -> SippStats:
    """SIPp's last -trace_stat line (cumulative counters)."""
    empty = SippStats(0, 0, 0, 0, 0, 0.0, 0, 0)
    if not path.exists():
        return empty
    rows = list(csv.DictReader(path.read_text(errors="replace").splitlines(), delimiter=";"))
    if not rows:
        return empty
    last = rows[-1]

    def number(name: str) -> int:
        value = (last.get(name) or "0").strip()
        return int(value) if value.isdigit() else 0

    buckets = {name: number(name) for name in last
               if name and name.startswith("ResponseTimeRepartition1_")}
    # The scenarios' buckets: <10, <20, <50, <100, <200, <500, >=500 ms.
    slow = sum(count for name, count in buckets.items()
               if name.endswith(("_<500", "_>=500")))
    return SippStats(
        created=number("OutgoingCall(C)") or number("IncomingCall(C)"),
        successful=number("SuccessfulCall(C)"), failed=number("FailedCall(C)"),
        retransmissions=number("Retransmissions(C)"), current=number("CurrentCall"),
        setup_ms=_duration_ms(last.get("ResponseTime1(C)") or ""),
        answered=sum(buckets.values()), slow=slow)


def sipp(work: Path, tag: str, scenario: str, *, local_port: int, remote_port: int | None,
         csv_path: Path | None, calls: int, limit: int, timeout_s: int,
         extra: Sequence[str] = ()) -> tuple[subprocess.Popen[bytes], Path]:
    """Start one SIPp on CPU 0 in its own process group; its -trace_stat file."""
    stats = work / f"{tag}.stat.csv"
    command = [
        "taskset", "-c", str(LOAD_CPU), "sipp",
        *([f"127.0.0.1:{remote_port}"] if remote_port else []),
        "-sf", str(SCENARIOS / scenario), *(["-inf", str(csv_path)] if csv_path else []),
        "-i", "127.0.0.1", "-p", str(local_port), "-t", "u1",
        "-m", str(calls), "-l", str(limit), "-timeout", f"{timeout_s}s", "-nostdin",
        "-trace_stat", "-stf", str(stats), "-fd", "1",
        "-trace_err", "-error_file", str(work / f"{tag}.errors.log"), *extra,
    ]
    with (work / f"{tag}.out").open("wb") as output:
        process = subprocess.Popen(command, cwd=work, stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    return process, stats


def wait_bound(process: subprocess.Popen[bytes], port: int, timeout_s: float = 5.0) -> None:
    """Until the SIPp that is to answer holds its port (or fail)."""
    deadline = time.monotonic() + timeout_s
    while udp_port_is_free(port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the answering SIPp did not bind 127.0.0.1:{port}")
        time.sleep(0.02)


def finish(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        pass
    finally:
        kill_group(process, grace_s=2)


def write_caller_csv(path: Path) -> Path:
    path.write_text(f"SEQUENTIAL\n{CALLER};{PASSWORDS[CALLER]};{DOMAIN};{CALLEE}\n")
    return path


def register_callee(server: Server, uas_port: int, work: Path) -> None:
    users = work / "callee.csv"
    users.write_text(f"SEQUENTIAL\n{CALLEE};{PASSWORDS[CALLEE]};{DOMAIN}\n")
    command = ["sipp", f"127.0.0.1:{server.port}", "-sf", str(SCENARIOS / "register_auth.xml"),
               "-inf", str(users), "-i", "127.0.0.1", "-p", str(uas_port), "-t", "u1",
               "-m", "1", "-timeout", "10s", "-timeout_error", "-nostdin"]
    done = subprocess.run(command, cwd=work, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=30, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the callee could not register with {server.name}:\n"
                         f"{(done.stdout + done.stderr).decode(errors='replace')}")


# ----------------------------------------------------------------- steps

@dataclass(frozen=True)
class Step:
    rate: int
    calls: int
    successful: int
    failed: int  # UAC failures + calls never finished + UAS failures
    retransmissions: int  # UAC + UAS
    setup_ms: float
    slow: int
    wall_s: float  # the UAC's run, from its start to its exit
    cpu_s: float
    cpu_percent: float
    sipp_cpu_percent: float
    memory: Memory

    @property
    def cpu_ms_per_call(self) -> float:
        return 1000 * self.cpu_s / self.successful if self.successful else 0.0

    @property
    def clean(self) -> bool:
        return self.failed == 0 and self.successful == self.calls


def run_step(server: Server, uas_port: int, rate: int, seconds: float, hold_ms: int,
             work: Path, tag: str, scenario: str | None = None) -> Step:
    """`rate` calls per second for `seconds`: the UAS answers, the UAC calls, both bounded."""
    scenario = scenario or server.uac_scenario  # type: ignore[attr-defined]
    calls = max(1, int(rate * seconds))
    answers = scenario != "uac_challenge.xml"
    # Each call may take a few retransmission rounds beyond its pause; the
    # whole step ends at twice its length plus 30 s whatever happens.
    timeout_s = int(seconds * 2 + hold_ms / 1000 + 30)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    uas = None
    if answers:
        uas, uas_stats_path = sipp(work, f"{tag}-uas", "uas_answer.xml", local_port=uas_port,
                                   remote_port=None, csv_path=None, calls=calls,
                                   limit=max(calls, 1000), timeout_s=timeout_s + 10)
        wait_bound(uas, uas_port)
    cpu_before = group_cpu_s(server.pgid)
    started = time.monotonic()
    uac, uac_stats_path = sipp(
        work, f"{tag}-uac", scenario, local_port=free_port(avoid=(server.port, uas_port)),
        remote_port=server.port, csv_path=write_caller_csv(work / "caller.csv"), calls=calls,
        limit=max(1000, rate * (hold_ms // 1000 + 10)), timeout_s=timeout_s,
        extra=["-r", str(rate), "-d", str(hold_ms), "-recv_timeout", str(RECV_TIMEOUT_MS)])
    finish(uac, timeout_s + 15)
    wall_s = time.monotonic() - started
    cpu_s = group_cpu_s(server.pgid) - cpu_before
    memory = group_memory(server.pgid)
    uas_stats = None
    if uas is not None:
        finish(uas, 20)  # its last calls wait 4 s (timewait) before it exits
        uas_stats = read_sipp_stats(uas_stats_path)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # both SIPps, reaped now
    sipp_cpu_s = (children.ru_utime + children.ru_stime
                  - children_before.ru_utime - children_before.ru_stime)
    uac_stats = read_sipp_stats(uac_stats_path)
    unfinished = max(0, calls - uac_stats.successful - uac_stats.failed)
    uas_failed = uas_stats.failed if uas_stats else 0
    uas_retrans = uas_stats.retransmissions if uas_stats else 0
    return Step(rate=rate, calls=calls, successful=uac_stats.successful,
                failed=uac_stats.failed + unfinished + uas_failed,
                retransmissions=uac_stats.retransmissions + uas_retrans,
                setup_ms=uac_stats.setup_ms, slow=uac_stats.slow, wall_s=wall_s, cpu_s=cpu_s,
                cpu_percent=100 * cpu_s / wall_s, sipp_cpu_percent=100 * sipp_cpu_s / wall_s,
                memory=memory)


def describe_step(step: Step) -> str:
    return (f"ok {step.successful:,}/{step.calls:,}, failed {step.failed:,}, retrans "
            f"{step.retransmissions:,}, set-up {step.setup_ms:.1f} ms ({step.slow:,} over "
            f"{SLOW_MS} ms), CPU {step.cpu_percent:.0f}% = {step.cpu_ms_per_call:.2f} ms/call "
            f"(SIPp {step.sipp_cpu_percent:.0f}%), {step.memory}, wall {step.wall_s:.1f} s")


def start_server(server: Server, uas_port: int, work: Path) -> None:
    server.start(timeout_s=60)
    if server.needs_registration:  # type: ignore[attr-defined]
        register_callee(server, uas_port, work)
    say(f"{server.name}: answering on 127.0.0.1:{server.port} after {server.startup_s:.1f} s; "
        f"idle {group_memory(server.pgid)}; {load_note()}")


def rate_run(server: Server, uas_port: int, steps: Sequence[int], seconds: float,
             hold_ms: int, pause_s: float, max_failed_steps: int, challenge_rate: int,
             work: Path) -> tuple[list[Step], Step | None]:
    start_server(server, uas_port, work)
    results: list[Step] = []
    challenge = None
    failed_steps = 0
    try:
        if challenge_rate and isinstance(server, Pbx):
            challenge = run_step(server, uas_port, challenge_rate, seconds, 0, work,
                                 f"{server.name}-challenge", scenario="uac_challenge.xml")
            say(f"  challenge only (INVITE, 407, ACK) at {challenge_rate}/s: "
                f"{describe_step(challenge)}")
            time.sleep(pause_s)
        for rate in steps:
            step = run_step(server, uas_port, rate, seconds, hold_ms, work,
                            f"{server.name}-{rate}")
            results.append(step)
            say(f"  {rate:>5,}/s: {describe_step(step)}")
            if server.process is not None and server.process.poll() is not None:
                say(f"  {server.name} exited with {server.process.returncode}; stopping")
                break
            if isinstance(server, Pbx):
                with contextlib.suppress(sqlite3.Error):
                    say(f"         (answered calls in its CDR table so far: "
                        f"{server.answered_calls():,})")
            if not step.clean:
                failed_steps += 1
                if failed_steps >= max_failed_steps:
                    break
            time.sleep(pause_s)  # let this step's retransmissions and timers settle
    finally:
        server.stop()
    return results, challenge


# ------------------------------------------------------------------ hold

@dataclass(frozen=True)
class Hold:
    calls: int
    answered: int
    failed: int
    idle: Memory
    loaded: Memory

    @property
    def rss_kb_per_call(self) -> float:
        return (self.loaded.rss_mb - self.idle.rss_mb) * 1024 / max(1, self.answered)

    @property
    def pss_kb_per_call(self) -> float:
        return (self.loaded.pss_mb - self.idle.pss_mb) * 1024 / max(1, self.answered)


def hold_run(server: Server, uas_port: int, count: int, rate: int, settle_s: float,
             work: Path) -> Hold | None:
    start_server(server, uas_port, work)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        warm = run_step(server, uas_port, 50, 2.0, 100, work, f"{server.name}-warm-up")
        say(f"  warm-up: {describe_step(warm)}")
        time.sleep(settle_s)
        idle = group_memory(server.pgid)
        say(f"  idle after the warm-up and {settle_s:.0f} s: {idle}")
        setup_s = count / rate
        hold_ms = int((setup_s + settle_s + 60) * 1000)
        timeout_s = int(hold_ms / 1000 + setup_s + 60)
        uas, _ = sipp(work, f"{server.name}-hold-uas", "uas_answer.xml", local_port=uas_port,
                      remote_port=None, csv_path=None, calls=count, limit=count + 1000,
                      timeout_s=timeout_s + 10)
        processes.append(uas)
        wait_bound(uas, uas_port)
        uac, uac_stats_path = sipp(
            work, f"{server.name}-hold-uac", server.uac_scenario,  # type: ignore[attr-defined]
            local_port=free_port(avoid=(server.port, uas_port)), remote_port=server.port,
            csv_path=write_caller_csv(work / "caller.csv"), calls=count, limit=count,
            timeout_s=timeout_s, extra=["-r", str(rate), "-d", str(hold_ms)])
        processes.append(uac)
        deadline = time.monotonic() + setup_s * 2 + 30
        stats = read_sipp_stats(uac_stats_path)
        while time.monotonic() < deadline and uac.poll() is None:
            stats = read_sipp_stats(uac_stats_path)
            if stats.answered + stats.failed >= count:
                break
            time.sleep(0.5)
        say(f"  {stats.answered:,} of {count:,} calls answered ({stats.failed:,} failed, "
            f"{stats.retransmissions:,} retransmissions, {stats.current:,} in progress); "
            f"waiting {settle_s:.0f} s for the set-up's transactions to expire")
        time.sleep(settle_s)
        stats = read_sipp_stats(uac_stats_path)
        loaded = group_memory(server.pgid)
        hold = Hold(calls=count, answered=stats.answered, failed=stats.failed, idle=idle,
                    loaded=loaded)
        say(f"  with {stats.current:,} calls up ({stats.answered:,} answered, "
            f"{stats.failed:,} failed): {loaded}; per call RSS {hold.rss_kb_per_call:.1f} KB, "
            f"PSS {hold.pss_kb_per_call:.1f} KB")
        return hold
    finally:
        for process in processes:
            kill_group(process, grace_s=1)
        server.stop()


# --------------------------------------------------------------- profile

def profile_run(server: Pbx, uas_port: int, rate: int, seconds: float, hold_ms: int,
                work: Path) -> None:
    """One step at `rate` with py-spy sampling the PBX; the top functions by samples."""
    start_server(server, uas_port, work)
    raw = work / "profile.txt"
    try:
        spy = subprocess.Popen(
            ["taskset", "-c", str(LOAD_CPU), str(PY_SPY), "record", "--pid",
             str(server.pgid), "--duration", str(int(seconds)), "--rate", "200",
             "--nonblocking", "--format", "raw", "--output", str(raw)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            step = run_step(server, uas_port, rate, seconds, hold_ms, work,
                            f"{server.name}-profile-{rate}")
            say(f"  {rate:>5,}/s with py-spy on CPU {LOAD_CPU}: {describe_step(step)}")
            finish(spy, 30)
        finally:
            kill_group(spy, grace_s=2)
    finally:
        server.stop()
    if not raw.exists():
        say("  py-spy wrote nothing (is ptrace allowed?)")
        return
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_FRAME.sub(_short_frame, frame) for frame in stack.split(";")]
        total += count
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        say("  no samples")
        return
    say(f"  {total:,} samples; by own time:")
    for frame, count in own.most_common(25):
        say(f"    {100 * count / total:5.1f}%  {frame}")
    say("  by inclusive time:")
    for frame, count in inclusive.most_common(40):
        say(f"    {100 * count / total:5.1f}%  {frame}")


_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^()]*?)(?::\d+)?\)$")


def _short_frame(match: re.Match[str]) -> str:
    """``handle (/long/path/pbx/sip/transaction.py:120)`` -> ``handle (sip/transaction.py)``."""
    parts = match["path"].split("/")
    return f"{match['function']} ({'/'.join(parts[-2:])})"


# ---------------------------------------------------------------- report

def print_steps(name: str, steps: Sequence[Step], hold_ms: int) -> None:
    say(f"\n{name}: calls per second (call held {hold_ms} ms), one core")
    say("| target/s | ok | failed | retrans | set-up ms | over 200 ms | CPU % | CPU ms/call "
        "| SIPp CPU % | RSS MB | PSS MB |")
    say("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in steps:
        say(f"| {s.rate:,} | {s.successful:,} | {s.failed:,} | {s.retransmissions:,} | "
            f"{s.setup_ms:.1f} | {s.slow:,} | {s.cpu_percent:.0f} | {s.cpu_ms_per_call:.2f} | "
            f"{s.sipp_cpu_percent:.0f} | {s.memory.rss_mb:.1f} | {s.memory.pss_mb:.1f} |")


def best_clean(steps: Sequence[Step]) -> Step | None:
    clean = [s for s in steps if s.clean]
    return max(clean, key=lambda s: s.rate) if clean else None


def describe_best(name: str, best: Step | None) -> str:
    if best is None:
        return f"{name}: no step without failed calls"
    retrans = (f"with {best.retransmissions:,} retransmissions" if best.retransmissions
               else "without retransmissions")
    return (f"{name}: highest rate with zero failed calls {best.rate:,}/s ({retrans}, "
            f"CPU {best.cpu_percent:.0f}%, {best.cpu_ms_per_call:.2f} ms/call, set-up "
            f"{best.setup_ms:.1f} ms)")


# ------------------------------------------------------------------ main

def sippy_version() -> str:
    try:
        return importlib.metadata.version("sippy")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def pbx_revision() -> str:
    """The commit, and whether pbx/ differs from it (others may be editing it)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=10, check=False)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown commit"
    changed = git("status", "--porcelain", "--", "pbx")
    return f"{commit}{' + uncommitted changes in pbx/' if changed else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: two low steps of 3 s; --hold: 200 calls, settle 5 s")
    parser.add_argument("--only", choices=("pbx", "sippy"))
    parser.add_argument("--steps", help="comma-separated rates, e.g. 50,100,200")
    parser.add_argument("--step-s", type=float, default=12.0, help="length of each step")
    parser.add_argument("--hold-ms", type=int, default=HOLD_MS, help="length of each call")
    parser.add_argument("--pause-s", type=float, default=5.0, help="idle time between steps")
    parser.add_argument("--max-failed-steps", type=int, default=2)
    parser.add_argument("--challenge-rate", type=int, default=200,
                        help="rate of the challenge-only step (PBX only; 0: none)")
    parser.add_argument("--hold", type=int, help="memory with this many calls up at once")
    parser.add_argument("--hold-rate", type=int, default=100, help="--hold: set-up rate")
    parser.add_argument("--settle-s", type=float, default=TRANSACTION_LINGER_S + 3,
                        help="--hold: wait this long for transactions to expire")
    parser.add_argument("--profile", type=int, metavar="RATE",
                        help="one step at RATE with py-spy on the PBX")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    missing = [tool for tool in ("sipp", "taskset") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: apt-get install -y sip-tester util-linux")
    if not TWISTD.exists():
        raise SystemExit(f"no twistd beside {sys.executable}: run from the project's venv")
    names = [args.only] if args.only else ["pbx", "sippy"]
    if args.profile:
        names = ["pbx"]
        if not PY_SPY.exists():
            raise SystemExit(f"no py-spy beside {sys.executable}: pip install py-spy")
    if "sippy" in names and not B2BUA.exists():
        raise SystemExit(f"no b2bua beside {sys.executable}: pip install sippy (or --only pbx)")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs two CPUs: the server on CPU 1, SIPp on CPU 0")

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    work = Path(tempfile.mkdtemp(prefix="bench-calls-"))
    say(f"# bench/calls.py {' '.join(sys.argv[1:])}  ({time.strftime('%Y-%m-%d %H:%M')})")
    say(f"# {machine_note()}; server on CPU {SERVER_CPU}, SIPp on CPU {LOAD_CPU}; "
        f"{load_note()}")
    say(f"# {version_of(['sipp', '-v'])}; sippy {sippy_version()}")
    say(f"# PBX at {pbx_revision()}")
    say(f"# work directory {work}")

    def make(name: str, uas_port: int) -> Server:
        return Pbx(work) if name == "pbx" else Sippy(work, uas_port)

    servers: list[Server] = []
    try:
        uas_port = free_port()
        if args.profile:
            server = Pbx(work)
            servers.append(server)
            profile_run(server, uas_port, args.profile, args.step_s, args.hold_ms, work)
            return
        if args.hold:
            count = min(args.hold, 200) if args.quick else args.hold
            settle_s = 5.0 if args.quick else args.settle_s
            holds: dict[str, Hold | None] = {}
            for name in names:
                server = make(name, uas_port)
                servers.append(server)
                holds[name] = hold_run(server, uas_port, count, args.hold_rate, settle_s, work)
            say(f"\n# {'QUICK SMOKE RUN, not a measurement: ' if args.quick else ''}"
                f"{count:,} calls held, set up at {args.hold_rate}/s, measured {settle_s:.0f} s "
                f"after the last answer; {load_note()}")
            say("| server | answered | failed | idle RSS MB | RSS MB with calls | KB/call RSS "
                "| idle PSS MB | PSS MB with calls | KB/call PSS |")
            say("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            for name, hold in holds.items():
                if hold is None:
                    continue
                say(f"| {name} | {hold.answered:,} | {hold.failed:,} | {hold.idle.rss_mb:.1f} | "
                    f"{hold.loaded.rss_mb:.1f} | {hold.rss_kb_per_call:.1f} | "
                    f"{hold.idle.pss_mb:.1f} | {hold.loaded.pss_mb:.1f} | "
                    f"{hold.pss_kb_per_call:.1f} |")
            pbx_hold, sippy_hold = holds.get("pbx"), holds.get("sippy")
            if pbx_hold and sippy_hold and sippy_hold.rss_kb_per_call > 0:
                say(f"ratio pbx/sippy (RSS per call): "
                    f"{pbx_hold.rss_kb_per_call / sippy_hold.rss_kb_per_call:.2f}")
            return
        steps = ([int(x) for x in args.steps.split(",")] if args.steps
                 else QUICK_STEPS if args.quick else STEPS)
        seconds = 3.0 if args.quick else args.step_s
        challenge_rate = min(args.challenge_rate, 50) if args.quick else args.challenge_rate
        results: dict[str, list[Step]] = {}
        challenge: Step | None = None
        for name in names:
            server = make(name, uas_port)
            servers.append(server)
            results[name], found = rate_run(server, uas_port, steps, seconds, args.hold_ms,
                                            args.pause_s, args.max_failed_steps,
                                            challenge_rate, work)
            challenge = challenge or found
        say(f"\n# {'QUICK SMOKE RUN, not a measurement: ' if args.quick else ''}"
            f"steps of {seconds:.0f} s, calls held {args.hold_ms} ms, SIPp -t u1; "
            f"{load_note()}")
        for name, steps_done in results.items():
            print_steps(name, steps_done, args.hold_ms)
        say()
        if challenge is not None:
            say(f"pbx, challenge only (INVITE, 407, ACK) at {challenge.rate}/s: "
                f"{challenge.cpu_ms_per_call:.2f} ms of CPU each "
                f"({challenge.successful:,} ok, {challenge.failed:,} failed)")
        best = {name: best_clean(steps_done) for name, steps_done in results.items()}
        for name, step in best.items():
            say(describe_best(name, step))
        pbx_best, sippy_best = best.get("pbx"), best.get("sippy")
        if pbx_best is not None and sippy_best is not None:
            say(f"ratio pbx/sippy (highest clean rate): {pbx_best.rate / sippy_best.rate:.2f}; "
                f"CPU per call pbx/sippy at those rates: "
                f"{pbx_best.cpu_ms_per_call / sippy_best.cpu_ms_per_call:.2f}")
    finally:
        for server in servers:
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
