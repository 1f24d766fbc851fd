"""A flood of unauthenticated INVITEs from one address, a second client served: PBX and Kamailio.

Each server runs pinned to CPU 1 (`taskset -c 1`), all the load on CPU 0,
on loopback (the method of /work/shared/notes/peers.md and the process
helpers of bench/register.py and bench/calls.py):

* The flood: a Python sender (this file, ``--send-flood``) bound to
  127.0.0.2, a source address of its own, sends INVITEs without
  credentials, each a new call with an SDP offer as a scanner's or SIPp's
  are, at a fixed rate for the step, and never ACKs. It counts the bytes it
  sent and the bytes that came back: their ratio is the amplification
  (what a spoofed source would aim at a victim).
* The second client, on 127.0.0.1: SIPp registering users r000..r049
  (tests/interop/scenarios/register_auth.xml, REGISTER, 401, REGISTER with
  an MD5 digest, 200) at ``--register-rate``, and SIPp calling 1002 as 1001
  (uac_call_auth.xml: INVITE, 407, ACK, INVITE with credentials, 200, ACK,
  a 1 s hold, BYE) at ``--call-rate``; a third SIPp (uas_answer.xml),
  registered as 1002 first, answers. Its answered share is what SIPp
  completed of what it started (registrations and calls), and its answer
  time the time from a call's first INVITE to the 200 of its second
  (SIPp's rtd, every call's in -trace_rtt): with the 407 round trip and
  the callee's answer in it, as a phone's user waits.
* The servers: the PBX (`twistd -n pbx`, its log in a file, one info line
  per request answered, and the shipped [security] defaults: 2,000
  messages per source within 2 s, then 30 s dropped), and Kamailio 5.6 with
  bench/kamailio/kamailio-proxy.cfg (pike at the same figures, stateless
  proxy_challenge, credentials in an htable, the call relayed with tm).

The rates rise through ``--rates`` (0, that is no flood, first), ``--step-s``
each; per step and server: the server's CPU (its process group's utime +
stime over the step), its resident memory (the highest of samples every
0.5 s), the amplification, what share of the flood was answered, and the
second client's answered share and 99th-percentile answer time. After
the last step, the flood stops and the server's memory is read again
``--after-s`` later, beside its idle memory before the first step. The
PBX's log is searched for garbage-collection pauses (it reports those of
50 ms or more, `pbx.memory.GC_PAUSE_REPORTED_S`) and the flood's security lines.

    .venv/bin/python bench/flood.py [--quick] [--only pbx|kamailio] [--step-s 30]
        [--rates 0,1000,2000,5000,10000,20000] [--after-s 60] [--pbx-source-limit N]

Needs sipp (sip-tester) and `apt-get install -y kamailio
kamailio-sqlite-modules`. Every process it starts is in its own process
group and is killed on the way out, however the run ends.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calls import (
    PASSWORDS,
    finish,
    read_sipp_stats,
    register_callee,
    sipp,
    wait_bound,
    write_caller_csv,
)
from register import (
    DOMAIN,
    LOAD_CPU,
    REPO,
    TWISTD,
    Server,
    free_port,
    group_cpu_s,
    group_memory,
    kill_group,
    load_note,
    machine_note,
    say,
    version_of,
)
from register import Kamailio as RegistrarKamailio

KAMAILIO_CFG = REPO / "bench/kamailio/kamailio-proxy.cfg"
FLOOD_HOST = "127.0.0.2"
RATES = (0, 1000, 2000, 5000, 10000, 20000)
QUICK_RATES = (0, 1000, 5000)
REGISTER_USERS = [(f"r{index:03d}", f"bench-r{index:03d}") for index in range(50)]
USERS = [*PASSWORDS.items(), *REGISTER_USERS]
SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
       "m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
       "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n")


# ----------------------------------------------------------------- flood

def send_flood(port: int, rate: int, seconds: float) -> dict[str, int]:
    """Send `rate` INVITEs/s to 127.0.0.1:`port` for `seconds` from FLOOD_HOST.

    Runs in its own process (``--send-flood``) on the load CPU. Every INVITE
    is a new call (Call-ID, branch, From tag); nothing is ever ACKed.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((FLOOD_HOST, 0))
    sock.setblocking(False)
    local = sock.getsockname()[1]
    template = (
        "INVITE sip:1002@pbx.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {FLOOD_HOST}:{local};branch=z9hG4bK-fl%d;rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:1001@pbx.test>;tag=fl%d\r\n"
        "To: <sip:1002@pbx.test>\r\n"
        f"Call-ID: flood-%d@{FLOOD_HOST}\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <sip:1001@{FLOOD_HOST}:{local}>\r\n"
        "User-Agent: flood\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n{SDP}")
    sent = sent_bytes = received = received_bytes = 0
    started = time.monotonic()
    end = started + seconds
    target = ("127.0.0.1", port)
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - started) * rate)
        while sent < due:
            data = (template % (sent, sent, sent)).encode()
            with contextlib.suppress(BlockingIOError):
                sock.sendto(data, target)
                sent_bytes += len(data)
            sent += 1
        with contextlib.suppress(BlockingIOError):
            while True:
                received_bytes += len(sock.recv(65535))
                received += 1
        time.sleep(0.002)
    drain_until = time.monotonic() + 2.0  # answers still on their way
    while time.monotonic() < drain_until:
        try:
            received_bytes += len(sock.recv(65535))
            received += 1
        except BlockingIOError:
            time.sleep(0.01)
    return {"sent": sent, "sent_bytes": sent_bytes, "received": received,
            "received_bytes": received_bytes}


# --------------------------------------------------------------- servers

SOURCE_LIMIT: int | None = None
"""The PBX's [security] max_messages_per_source; set from --pbx-source-limit (None: default)."""


class Pbx(Server):
    name = "pbx"

    def prepare(self) -> None:
        self.port = free_port()
        self.data_dir = self.workdir / "pbx-data"
        lines = [
            "[pbx]", f'data_dir = "{self.data_dir}"',
            "[sip]", f'domain = "{DOMAIN}"', f'udp = "127.0.0.1:{self.port}"',
            # SIPp answers only the first challenge, and only MD5.
            "[registrar]", 'digest_algorithms = ["MD5", "SHA-256"]',
            # [security] as shipped (unless --pbx-source-limit says otherwise).
            "[security]", f'log_file = "{self.workdir / "security.log"}"',
            *([f"max_messages_per_source = {SOURCE_LIMIT}"] if SOURCE_LIMIT is not None
              else []),
        ]
        for user, password in self.users:
            lines.append(f'[users.{user}]\npassword = "{password}"')
        self.config = self.workdir / "pbx.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = self.workdir / "pbx.log"

    def command(self) -> list[str]:
        return [str(TWISTD), "-n", "--pidfile", str(self.workdir / "pbx.pid"),
                "--logfile", str(self.log), "pbx", "--config", str(self.config)]

    def notes(self) -> list[str]:
        # twistd rotates its log file every megabyte: read them all.
        text = "".join(path.read_text(errors="replace")
                       for path in sorted(self.workdir.glob(f"{self.log.name}*")))
        pauses = [line for line in text.splitlines() if "Garbage collection" in line]
        security = self.workdir / "security.log"
        floods = ([line for line in security.read_text().splitlines() if " flood " in line]
                  if security.exists() else [])
        mode = next((line.split("SIP core and registrar: ", 1)[1] for line in text.splitlines()
                     if "SIP core and registrar: " in line), "unknown")
        return [f"hot path: {mode}",
                f"garbage-collection pauses of 50 ms or more logged: {len(pauses)}"
                + "".join(f"\n    {line}" for line in pauses[:5]),
                f"'Flood over' (memory handed back) logged: "
                f"{text.count('Flood over')} times",
                f"flood lines in the security log: {len(floods)}"
                + "".join(f"\n    {line}" for line in floods[:3])]


class Kamailio(RegistrarKamailio):
    """bench/register.py's Kamailio, run as an authenticating proxy with pike."""

    config = KAMAILIO_CFG

    def notes(self) -> list[str]:
        return []


# ----------------------------------------------------------------- steps

@dataclass(frozen=True)
class Step:
    rate: int
    flood: dict[str, int]
    cpu_percent: float
    rss_mb: float  # the highest sample during the step
    calls: int
    calls_ok: int
    registrations: int
    registrations_ok: int
    p99_ms: float | None  # calls: first INVITE to the 200 of the second
    wall_s: float

    @property
    def amplification(self) -> float:
        sent = self.flood.get("sent_bytes", 0)
        return self.flood.get("received_bytes", 0) / sent if sent else 0.0

    @property
    def flood_answered(self) -> float:
        sent = self.flood.get("sent", 0)
        return self.flood.get("received", 0) / sent if sent else 0.0

    @property
    def answered_share(self) -> float:
        started = self.calls + self.registrations
        return (self.calls_ok + self.registrations_ok) / started if started else 0.0


def percentile(values: Sequence[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def rtt_values(work: Path, tag: str) -> list[float]:
    """The response times (ms) in SIPp's -trace_rtt file of the caller, moved aside."""
    values = []
    for path in work.glob("uac_call_auth_*_rtt.csv"):
        lines = path.read_text(errors="replace").splitlines()
        header = [name.strip().lower() for name in lines[0].split(";")] if lines else []
        column = next((i for i, name in enumerate(header) if name.startswith("response")), 1)
        for line in lines[1:]:
            with contextlib.suppress(ValueError, IndexError):
                values.append(float(line.split(";")[column]))
        path.rename(work / f"{tag}.rtt.csv")
    return values


class MemoryWatch(threading.Thread):
    """The server's RSS every 0.5 s; the highest seen."""

    def __init__(self, pgid: int) -> None:
        super().__init__(daemon=True)
        self.pgid = pgid
        self.highest = 0.0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.highest = max(self.highest, group_memory(self.pgid).rss_mb)
            self.stopped.wait(0.5)


def run_step(server: Server, uas_port: int, rate: int, seconds: float, call_rate: int,
             register_rate: int, work: Path) -> Step:
    tag = f"{server.name}-{rate}"
    call_count = max(1, int(call_rate * seconds))
    register_count = max(1, int(register_rate * seconds))
    timeout_s = int(seconds + 30)
    users = work / "registering.csv"
    users.write_text("SEQUENTIAL\n" + "".join(f"{u};{p};{DOMAIN}\n" for u, p in REGISTER_USERS))
    watch = MemoryWatch(server.pgid)
    watch.start()
    cpu_before = group_cpu_s(server.pgid)
    started = time.monotonic()
    flooder = None
    if rate:
        flooder = subprocess.Popen(
            ["taskset", "-c", str(LOAD_CPU), sys.executable, __file__, "--send-flood",
             f"{server.port},{rate},{seconds}"],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
    caller, caller_stats = sipp(
        work, f"{tag}-uac", "uac_call_auth.xml", local_port=free_port(),
        remote_port=server.port, csv_path=write_caller_csv(work / "caller.csv"),
        calls=call_count, limit=call_rate * 10, timeout_s=timeout_s,
        extra=["-r", str(call_rate), "-d", "1000", "-trace_rtt", "-rtt_freq", "1"])
    registrar, register_stats = sipp(
        work, f"{tag}-reg", "register_auth.xml", local_port=free_port(),
        remote_port=server.port, csv_path=users, calls=register_count,
        limit=register_rate * 10, timeout_s=timeout_s, extra=["-r", str(register_rate)])
    flood: dict[str, int] = {}
    if flooder is not None:
        try:
            output, _ = flooder.communicate(timeout=seconds + 30)
            flood = json.loads(output.decode().strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError):
            kill_group(flooder, grace_s=1)
    finish(caller, timeout_s + 10)
    finish(registrar, timeout_s + 10)
    wall_s = time.monotonic() - started
    cpu_s = group_cpu_s(server.pgid) - cpu_before
    watch.stopped.set()
    watch.join()
    calls = read_sipp_stats(caller_stats)
    registrations = read_sipp_stats(register_stats)
    return Step(rate=rate, flood=flood, cpu_percent=100 * cpu_s / wall_s, rss_mb=watch.highest,
                calls=max(calls.created, call_count), calls_ok=calls.successful,
                registrations=max(registrations.created, register_count),
                registrations_ok=registrations.successful,
                p99_ms=percentile(rtt_values(work, tag), 0.99), wall_s=wall_s)


@dataclass(frozen=True)
class Run:
    name: str
    idle_rss_mb: float
    steps: list[Step]
    after_rss_mb: float
    notes: list[str]


def server_run(server: Server, rates: Sequence[int], seconds: float, call_rate: int,
               register_rate: int, after_s: float, work: Path) -> Run:
    uas_port = free_port()
    server.start(timeout_s=60)
    try:
        register_callee(server, uas_port, work)
        uas, _ = sipp(work, f"{server.name}-uas", "uas_answer.xml", local_port=uas_port,
                      remote_port=None, csv_path=None, calls=10**9, limit=10**6,
                      timeout_s=10**6)
        try:
            wait_bound(uas, uas_port)
            time.sleep(2.0)
            idle = group_memory(server.pgid).rss_mb
            steps = []
            for rate in rates:
                step = run_step(server, uas_port, rate, seconds, call_rate, register_rate,
                                work)
                say(f"  {server.name} {describe(step)}")
                steps.append(step)
            say(f"  {server.name}: flood over; memory again in {after_s:g} s")
            time.sleep(after_s)
            after = group_memory(server.pgid).rss_mb
        finally:
            kill_group(uas, grace_s=2)
        notes = server.notes() if isinstance(server, (Pbx, Kamailio)) else []
        return Run(server.name, idle, steps, after, notes)
    finally:
        server.stop()


def describe(step: Step) -> str:
    p99 = "-" if step.p99_ms is None else f"{step.p99_ms:.0f} ms"
    return (f"{step.rate:>6}/s: CPU {step.cpu_percent:5.1f}%, RSS {step.rss_mb:6.1f} MB, "
            f"amplification {step.amplification:.2f}, flood answered "
            f"{100 * step.flood_answered:5.1f}%, second client {step.calls_ok}/{step.calls} "
            f"calls {step.registrations_ok}/{step.registrations} registrations, p99 {p99}")


def print_table(runs: Sequence[Run]) -> None:
    say("\n| server | flood/s | CPU % | RSS MB (peak) | bytes out/in | flood answered | "
        "2nd client answered | calls ok | registrations ok | p99 call set-up |")
    say("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for run in runs:
        for step in run.steps:
            p99 = "-" if step.p99_ms is None else f"{step.p99_ms:.0f} ms"
            say(f"| {run.name} | {step.rate:,} | {step.cpu_percent:.1f} | {step.rss_mb:.1f} | "
                f"{step.amplification:.2f} | {100 * step.flood_answered:.1f}% | "
                f"{100 * step.answered_share:.1f}% | {step.calls_ok}/{step.calls} | "
                f"{step.registrations_ok}/{step.registrations} | {p99} |")
    say("\n| server | RSS idle MB | RSS peak MB | RSS after MB | after / idle |")
    say("| --- | ---: | ---: | ---: | ---: |")
    for run in runs:
        peak = max((step.rss_mb for step in run.steps), default=0.0)
        say(f"| {run.name} | {run.idle_rss_mb:.1f} | {peak:.1f} | {run.after_rss_mb:.1f} | "
            f"{run.after_rss_mb / run.idle_rss_mb:.2f} |")
    by_name = {run.name: run for run in runs}
    if "pbx" in by_name and "kamailio" in by_name:
        say("\nratios pbx / kamailio, per flood rate (CPU, p99):")
        for mine, theirs in zip(by_name["pbx"].steps, by_name["kamailio"].steps, strict=False):
            cpu = mine.cpu_percent / theirs.cpu_percent if theirs.cpu_percent else float("nan")
            p99 = (mine.p99_ms / theirs.p99_ms if mine.p99_ms and theirs.p99_ms
                   else float("nan"))
            say(f"  {mine.rate:>6}/s: CPU {cpu:.2f}, p99 {p99:.2f}, answered "
                f"{100 * mine.answered_share:.1f}% vs {100 * theirs.answered_share:.1f}%")
    for run in runs:
        for note in run.notes:
            say(f"{run.name}: {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="rates 0,1000,5000; 5 s each")
    parser.add_argument("--only", choices=("pbx", "kamailio"))
    parser.add_argument("--rates", help="flood rates per second, comma-separated")
    parser.add_argument("--step-s", type=float, default=30.0)
    parser.add_argument("--after-s", type=float, default=60.0)
    parser.add_argument("--call-rate", type=int, default=10, help="second client's calls/s")
    parser.add_argument("--register-rate", type=int, default=20,
                        help="second client's registrations/s")
    parser.add_argument("--pbx-source-limit", type=int,
                        help="the PBX's max_messages_per_source (0: off, to see what the "
                             "stateless 407 alone does); default: as shipped")
    parser.add_argument("--send-flood", help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if args.send_flood:
        port, rate, seconds = args.send_flood.split(",")
        print(json.dumps(send_flood(int(port), int(rate), float(seconds))), flush=True)
        return
    global SOURCE_LIMIT
    SOURCE_LIMIT = args.pbx_source_limit
    rates = (tuple(int(r) for r in args.rates.split(",")) if args.rates
             else QUICK_RATES if args.quick else RATES)
    seconds = 5.0 if args.quick and args.step_s == 30.0 else args.step_s
    after_s = 10.0 if args.quick and args.after_s == 60.0 else args.after_s
    for tool in ("sipp", "taskset") + (("kamailio",) if args.only != "pbx" else ()):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    work = Path(tempfile.mkdtemp(prefix="flood-bench-"))
    say(f"bench/flood.py {' '.join(sys.argv[1:])}")
    say(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine_note()}; "
        f"{load_note()}; {version_of(['kamailio', '-v'])}; work in {work}")
    if SOURCE_LIMIT is not None:
        say(f"the PBX's [security] max_messages_per_source = {SOURCE_LIMIT}")
    say(f"flood rates {', '.join(map(str, rates))}/s, {seconds:g} s each; second client "
        f"{args.call_rate} calls/s + {args.register_rate} registrations/s; memory "
        f"{after_s:g} s after")

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    runs = []
    servers: list[Server] = []
    if args.only != "kamailio":
        servers.append(Pbx(work, USERS))
    if args.only != "pbx":
        servers.append(Kamailio(work, USERS))
    try:
        for server in servers:
            say(f"\n{server.name}:")
            runs.append(server_run(server, rates, seconds, args.call_rate, args.register_rate,
                                   after_s, work))
    finally:
        for server in servers:
            server.stop()
    print_table(runs)
    if not args.keep:
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
