"""CPU per authenticated registration inside the PBX, with no sockets and no reactor.

`bench/register.py` measures the whole server against Kamailio; this script
isolates what the Python code costs, so a change to the REGISTER path can be
judged in seconds and profiled. It builds the real `PbxService` objects (on
a `twisted.internet.task.Clock`, listeners not started), captures what the
endpoint sends, and plays SIPp's register_auth.xml exchange for N users in
turn: REGISTER, 401, REGISTER with an MD5 digest, 200. Only the time spent
inside `SipEndpoint.receive_data` and in advancing the clock (where the group
commit runs and sends the 200s that waited for it) is counted (CPU time of
the thread, so a busy machine disturbs it less); building the requests is not.

With ``--store`` the service saves to a real SQLite file in ``--data-dir``
as it does when started: every 200 then waits for the group commit that
writes its binding (`pbx.store.GroupCommit`), and the commits are counted.
(Run against the code before group commit, with ``PYTHONPATH=that/checkout``,
it flushes every 0.2 s of the clock as that code did.) Without it no binding
is written, which isolates the Python code of the REGISTER path.

    .venv/bin/python bench/register_cpu.py [--registrations 20000] [--store] [--profile]

It prints microseconds per registration (two requests, two responses) and,
with --profile, the top of a cProfile listing of the same run.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import sys
import time
from pathlib import Path

from twisted.internet.task import Clock, LoopingCall

from pbx.config import parse_config
from pbx.service import FLUSH_INTERVAL_S, PbxService, _tune_garbage_collector
from pbx.sip.digest import Challenge, authorization_for, parse_auth_params
from pbx.sip.peer import Peer
from pbx.store import DATABASE_FILENAME, BindingWriter, Store

DOMAIN = "pbx.test"
SIPP = Peer("udp", "127.0.0.1", 5061)


def build_service(users: int, data_dir: Path, source_limit: int, *,
                  store: bool = False) -> PbxService:
    config = parse_config({
        "pbx": {"data_dir": str(data_dir), "log_requests": False},
        "sip": {"domain": DOMAIN, "udp": "127.0.0.1:5060"},
        "registrar": {"digest_algorithms": ["MD5"]},
        # Every registration comes from one address: the per-source limit is
        # counted (what it costs is measured) but set far above the load.
        "security": {"max_messages_per_source": source_limit},
        "users": {f"u{i:04d}": {"password": f"pw{i:04d}"} for i in range(users)},
    }, str(data_dir / "pbx.toml"))
    service = PbxService(config, reactor=Clock())
    if store:
        for stale in data_dir.glob(DATABASE_FILENAME + "*"):
            stale.unlink()
        opened = Store.open(data_dir / DATABASE_FILENAME)
        if hasattr(service, "_start_saving"):
            service._start_saving(opened)  # as start-up does
        else:  # the code before group commit (607c6c0), to compare with
            service.writer = BindingWriter(opened)
            service.endpoint.writer = service.writer.changes
        # startService's periodic flush: the only writer before group commit,
        # a safety net since.
        flush = LoopingCall(service._flush)
        flush.clock = service.reactor
        flush.start(FLUSH_INTERVAL_S, now=False)
    return service


def register(user: str, call: int, cseq: int, authorization: str | None) -> bytes:
    lines = [
        f"REGISTER sip:{DOMAIN} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{call}-{cseq};rport",
        "Max-Forwards: 70",
        f"From: <sip:{user}@{DOMAIN}>;tag={call}",
        f"To: <sip:{user}@{DOMAIN}>",
        f"Call-ID: {call}-1@127.0.0.1",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <sip:{user}@127.0.0.1:5061;transport=UDP>",
    ]
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    lines += ["Expires: 3600", "User-Agent: sipp", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def challenge_of(response: bytes) -> Challenge:
    for line in response.split(b"\r\n"):
        if line.lower().startswith(b"www-authenticate:"):
            _, params = parse_auth_params(line.split(b":", 1)[1].strip().decode())
            return Challenge(realm=params["realm"], nonce=params["nonce"],
                             algorithm=params.get("algorithm", "MD5"),
                             qop=tuple(params.get("qop", "").split(",")),
                             opaque=params.get("opaque"))
    raise SystemExit(f"no challenge in:\n{response.decode()}")


def run(service: PbxService, registrations: int, users: int,
        first_call: int = 0) -> tuple[float, float]:
    """CPU seconds inside the endpoint: (in all, of which on the unauthenticated first REGISTER)."""
    sent: list[bytes] = []
    oks: list[bytes] = []

    def send(data: bytes, host: str, port: int) -> None:
        (oks if data.startswith(b"SIP/2.0 200") else sent).append(data)

    service.connections.udp_send = send
    receive = service.endpoint.receive_data
    clock: Clock = service.reactor
    counter = time.thread_time  # CPU time: other processes on the core do not count
    spent = 0.0
    challenging = 0.0
    for n in range(first_call, first_call + registrations):  # new Call-IDs and branches
        user = f"u{n % users:04d}"
        started = counter()
        clock.advance(0.0002)  # a group commit is due every ten registrations or so
        spent += counter() - started
        sent.clear()
        first = register(user, n, 1, None)
        started = counter()
        receive(first, SIPP, datagram=True)
        elapsed = counter() - started
        spent += elapsed
        challenging += elapsed
        challenge = challenge_of(sent[-1])
        credentials = authorization_for(
            challenge, username=user, password=f"pw{n % users:04d}", method="REGISTER",
            uri=f"sip:{DOMAIN}", cnonce=f"c{n}")
        second = register(user, n, 2, credentials.to_header_value())
        sent.clear()
        started = counter()
        receive(second, SIPP, datagram=True)
        spent += counter() - started
        if sent:
            raise SystemExit(f"registration {n} failed:\n{sent[-1].decode()}")
    started = counter()
    clock.advance(1.0)  # the last group
    spent += counter() - started
    if len(oks) != registrations:
        raise SystemExit(f"{registrations - len(oks)} registrations not answered 200")
    return spent, challenging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registrations", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--profile", choices=("tottime", "cumulative"), nargs="?",
                        const="tottime", help="print a cProfile listing sorted this way")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/pbx-register-cpu"))
    parser.add_argument("--source-limit", type=int, default=100_000_000,
                        help="[security] max_messages_per_source (0: the limit off, not counted)")
    parser.add_argument("--store", action="store_true",
                        help="save to SQLite with group commits, as the started service does")
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    service = build_service(args.users, args.data_dir, args.source_limit, store=args.store)
    _tune_garbage_collector()
    run(service, min(2000, args.registrations), args.users)  # warm up
    gc.collect()
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        spent, challenging = run(service, args.registrations, args.users,
                                 first_call=1_000_000)
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stdout).sort_stats(args.profile).print_stats(45)
    else:
        spent, challenging = run(service, args.registrations, args.users,
                                 first_call=1_000_000)
    per = spent / args.registrations * 1e6
    print(f"{args.registrations} registrations: {per:.1f} µs each inside the endpoint "
          f"({1e6 / per:,.0f}/s on one core before I/O), of which the first REGISTER "
          f"and its 401 {challenging / args.registrations * 1e6:.1f} µs")
    group = getattr(service, "group", None)  # None before group commit (to compare)
    if group is not None and group.commits:
        done = args.registrations + min(2000, args.registrations)  # with the warm-up
        print(f"saved to SQLite in {group.commits:,} group commits, "
              f"{done / group.commits:.1f} registrations each")


if __name__ == "__main__":
    main()
