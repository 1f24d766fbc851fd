"""Memory per answered call, in-process: where it goes, by allocation site.

The whole PBX service (`PbxService`, built from a config as `twistd pbx`
builds it, but with no listener: a `task.Clock` for a reactor and the UDP
sender replaced by a list) is driven with the very messages of
`bench/calls.py`'s SIPp scenarios: the callee registers (digest), then for
each call the caller sends INVITE, gets 407, ACKs it, sends the INVITE
again with Proxy-Authorization; the callee answers 180 and 200 with SDP;
the caller ACKs. The calls are held open; the clock is moved on past
64*T1 so the set-up's transactions expire, as the SIPp bench waits 35 s.

What it prints: bytes per call (tracemalloc: live blocks with N calls up
minus idle, divided by N), the top allocation sites by size, and, with
``--end``, what is left once every call has had its BYE (it should be
nothing). ``--traceback`` groups by the calling frames too.

    .venv/bin/python bench/call_memory.py [--calls 2000] [--top 30] [--end]
    .venv/bin/python bench/call_memory.py --rss 100 --calls 5000

No sockets and no threads: figures are reproducible to the byte. They
leave out what only a running process has (the allocator's slack, the
kernel's socket buffers), so they are below the RSS figure of
`bench/calls.py --hold`, which is the one the budget is about.

``--rss RATE`` (no tracemalloc) sets the calls up at RATE a second of the
test clock, as the SIPp bench does, and prints the resident size per call
35 s after the last (idle after the warm-up subtracted), beside the live
blocks: the difference is the set-up's high-water mark, which the
allocator keeps resident once the transactions that filled it are gone.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import sys
import tempfile
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.task import Clock
from twisted.logger import globalLogBeginner

from pbx.config import load_config
from pbx.service import PbxService
from pbx.sip import message
from pbx.sip.digest import Challenge, authorization_for, select_challenge
from pbx.sip.message import Request, Response, parse_message
from pbx.sip.peer import Peer

DOMAIN = "bench.test"
CALLER, CALLEE = "1001", "1002"
PASSWORDS = {CALLER: "bench-1001", CALLEE: "bench-1002"}
CALLER_PEER = Peer("udp", "127.0.0.1", 6001)
CALLEE_PEER = Peer("udp", "127.0.0.1", 6002)
SDP = (b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\n"
       b"c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
SETTLE_S = 35.0


class Harness:
    """The PBX service on a fake clock, and both phones, as SIPp plays them."""

    def __init__(self, workdir: Path) -> None:
        config_path = workdir / "pbx.toml"
        lines = ["[pbx]", f'data_dir = "{workdir}"', "[sip]", f'domain = "{DOMAIN}"',
                 'udp = "127.0.0.1:5060"', "[registrar]",
                 'digest_algorithms = ["MD5", "SHA-256"]']
        for user, password in PASSWORDS.items():
            lines.append(f'[users.{user}]\npassword = "{password}"')
        config_path.write_text("\n".join(lines) + "\n")
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.service = PbxService(load_config(config_path), reactor=self.clock)
        self.sent: list[tuple[bytes, int]] = []
        self.service.connections.udp_send = lambda data, host, port: self.sent.append(
            (data, port))
        self.endpoint = self.service.endpoint
        self._numbers = itertools.count(1)
        self.open: list[str] = []
        """The caller's ACK of each open call (its BYE is made from it): text only,
        allocated here, so that the report leaves it out."""

    # ------------------------------------------------------------ wire

    def deliver(self, data: str | bytes, peer: Peer) -> None:
        raw = data.encode() if isinstance(data, str) else data
        self.endpoint.receive_data(raw, peer, datagram=True)

    def take(self, port: int) -> list[Request | Response]:
        mine = [parse_message(data) for data, to in self.sent if to == port]
        self.sent = [(data, to) for data, to in self.sent if to != port]
        return mine

    def advance(self, seconds: float, step_s: float = 0.5) -> None:
        steps = int(seconds / step_s)
        for _ in range(steps):
            self.clock.advance(step_s)
            self.sent.clear()
        self.service._housekeeping()

    # ---------------------------------------------------------- phones

    def register_callee(self) -> None:
        def register(cseq: int, auth: str = "") -> None:
            self.deliver(
                f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{CALLEE_PEER.port};branch=z9hG4bKreg{cseq};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:{CALLEE}@{DOMAIN}>;tag=reg\r\n"
                f"To: <sip:{CALLEE}@{DOMAIN}>\r\nCall-ID: reg-{CALLEE}\r\nCSeq: {cseq} REGISTER\r\n"
                f"Contact: <sip:{CALLEE}@127.0.0.1:{CALLEE_PEER.port};transport=udp>\r\n"
                f"Expires: 86400\r\n{auth}Content-Length: 0\r\n\r\n", CALLEE_PEER)

        register(1)
        (challenge,) = self.take(CALLEE_PEER.port)
        assert isinstance(challenge, Response) and challenge.status == 401, challenge
        chosen = select_challenge(Challenge.parse(v)
                                  for v in challenge.headers.values("www-authenticate"))
        assert chosen is not None
        credentials = authorization_for(chosen, username=CALLEE, password=PASSWORDS[CALLEE],
                                        method="REGISTER", uri=f"sip:{DOMAIN}", cnonce="c0ffee")
        register(2, f"Authorization: {credentials.to_header_value()}\r\n")
        (ok,) = self.take(CALLEE_PEER.port)
        assert isinstance(ok, Response) and ok.status == 200, ok

    def call(self) -> None:
        """One call up to the caller's ACK: the messages of uac_call_auth.xml and uas_answer.xml."""
        n = next(self._numbers)
        call_id = f"{n}-bench@127.0.0.1"
        uri = f"sip:{CALLEE}@{DOMAIN}"
        common = (f"Max-Forwards: 70\r\n"
                  f"From: \"Caller {CALLER}\" <sip:{CALLER}@{DOMAIN}>;tag={n}\r\nTo: <{uri}>")

        def invite(cseq: int, branch: str, auth: str = "") -> str:
            return (f"INVITE {uri} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:{CALLER_PEER.port};branch={branch};rport\r\n"
                    f"{common}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\n"
                    f"Contact: <sip:{CALLER}@127.0.0.1:{CALLER_PEER.port};transport=udp>\r\n"
                    f"{auth}Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n"
                    ) + SDP.decode()

        first = f"z9hG4bK{n}-1"
        self.deliver(invite(1, first), CALLER_PEER)
        challenge = self.take(CALLER_PEER.port)[-1]
        assert isinstance(challenge, Response) and challenge.status == 407, challenge
        self.deliver(
            f"ACK {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{CALLER_PEER.port};branch={first};rport\r\n"
            f"{common};tag={challenge.to_addr.tag}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\n"
            f"Content-Length: 0\r\n\r\n", CALLER_PEER)
        chosen = select_challenge(Challenge.parse(v)
                                  for v in challenge.headers.values("proxy-authenticate"))
        assert chosen is not None
        credentials = authorization_for(chosen, username=CALLER, password=PASSWORDS[CALLER],
                                        method="INVITE", uri=uri, cnonce=f"cn{n}")
        self.deliver(invite(2, f"z9hG4bK{n}-2",
                            f"Proxy-Authorization: {credentials.to_header_value()}\r\n"),
                     CALLER_PEER)
        (b_invite,) = [m for m in self.take(CALLEE_PEER.port) if isinstance(m, Request)]
        assert b_invite.method == "INVITE"
        to_tag = f"{n}SIPpTag01"

        def answer(status: str, body: bytes) -> bytes:
            head = "".join(f"{name}: {value}\r\n" for name, value in b_invite.headers
                           if name.lower() in ("via", "from", "call-id", "cseq"))
            to = b_invite.headers.get("to")
            extra = "Content-Type: application/sdp\r\n" if body else ""
            return (f"SIP/2.0 {status}\r\n{head}To: {to};tag={to_tag}\r\n"
                    f"Contact: <sip:127.0.0.1:{CALLEE_PEER.port};transport=udp>\r\n"
                    f"{extra}Content-Length: {len(body)}\r\n\r\n").encode() + body

        self.deliver(answer("180 Ringing", b""), CALLEE_PEER)
        self.deliver(answer("200 OK", SDP), CALLEE_PEER)
        self.take(CALLEE_PEER.port)  # our ACK
        ok = [m for m in self.take(CALLER_PEER.port)
              if isinstance(m, Response) and m.status == 200]
        assert ok, "the caller got no 200"
        ack = (f"ACK sip:{CALLEE}@127.0.0.1:5060 SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{CALLER_PEER.port};branch=z9hG4bK{n}-3;rport\r\n"
               f"{common};tag={ok[0].to_addr.tag}\r\nCall-ID: {call_id}\r\nCSeq: 2 ACK\r\n"
               f"Content-Length: 0\r\n\r\n")
        self.deliver(ack, CALLER_PEER)
        self.open.append(ack)

    def bye_all(self) -> None:
        """The caller hangs up every open call."""
        for n, ack in enumerate(self.open, 1):
            bye = (ack.replace("ACK ", "BYE ", 1).replace("CSeq: 2 ACK", "CSeq: 3 BYE")
                   .replace(";branch=", f";branch=z9hG4bKbye{n}x", 1))
            self.deliver(bye, CALLER_PEER)
            self.sent.clear()
        self.open.clear()


def _snapshot(*, keep_caches: bool) -> tracemalloc.Snapshot:
    if not keep_caches:
        # Typed values shared by text between messages: bounded (4,096 of
        # each), so not a cost per call, but at a few thousand calls they
        # would look like one.
        message._NAME_ADDRS.clear()
        message._CSEQS.clear()
    gc.collect()
    return tracemalloc.take_snapshot().filter_traces((
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        tracemalloc.Filter(False, "<unknown>"),
        tracemalloc.Filter(False, __file__),  # the phones' side
    ))


def _report(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, calls: int,
            top: int, key: str, title: str) -> None:
    stats = after.compare_to(before, key)
    total = sum(s.size_diff for s in stats)
    blocks = sum(s.count_diff for s in stats)
    print(f"\n{title}: {total / calls:,.0f} bytes per call in {blocks / calls:.1f} blocks")
    for stat in stats[:top]:
        if stat.size_diff == 0:
            break
        frames = stat.traceback.format(limit=None if key == "traceback" else 1)
        where = frames[0].strip() if key != "traceback" else "\n      ".join(
            line.strip() for line in frames if line.strip())
        print(f"  {stat.size_diff / calls:8,.0f} B {stat.count_diff / calls:6.2f} blk  {where}")


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _resident(calls: int, rate: float) -> None:
    """Resident size per call with the set-up paced as in `bench/calls.py --hold`."""
    with tempfile.TemporaryDirectory(prefix="call-memory-") as workdir:
        harness = Harness(Path(workdir))
        harness.register_callee()
        for _ in range(100):
            harness.call()
        harness.bye_all()
        harness.advance(SETTLE_S)
        gc.collect()
        gc.freeze()  # as the service does once started (`pbx.service`)
        idle_mb, idle_blocks = _rss_mb(), sys.getallocatedblocks()
        for _ in range(calls):
            harness.call()
            harness.clock.advance(1 / rate)
            harness.sent.clear()
        peak_mb = _rss_mb()
        harness.advance(SETTLE_S)
        gc.collect()
        held_mb, held_blocks = _rss_mb(), sys.getallocatedblocks()
        assert len(harness.service.calls) == calls
        print(f"{calls} calls set up at {rate:g}/s: idle {idle_mb:.1f} MB, at the last answer "
              f"{peak_mb:.1f} MB, {SETTLE_S:.0f} s later {held_mb:.1f} MB resident: "
              f"{(held_mb - idle_mb) * 1e3 / calls:.1f} KB a call, of which "
              f"{(held_blocks - idle_blocks) / calls:.1f} live blocks a call")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--frames", type=int, default=12, help="traceback depth kept")
    parser.add_argument("--traceback", action="store_true", help="group by traceback too")
    parser.add_argument("--end", action="store_true", help="then end the calls and report")
    parser.add_argument("--keep-caches", action="store_true",
                        help="leave the parser's bounded caches of typed values in the figure")
    parser.add_argument("--rss", type=float, metavar="RATE",
                        help="resident size per call, calls set up at RATE per second")
    args = parser.parse_args()

    # Log events go nowhere, as twistd's go to a file: left alone, Twisted
    # would buffer them (up to 65,536) until logging begins.
    globalLogBeginner.beginLoggingTo([lambda event: None], discardBuffer=True,
                                     redirectStandardIO=False)
    if args.rss:
        _resident(args.calls, args.rss)
        return
    with tempfile.TemporaryDirectory(prefix="call-memory-") as workdir:
        tracemalloc.start(args.frames)
        harness = Harness(Path(workdir))
        harness.register_callee()
        for _ in range(100):  # warm-up: caches, pools, interned strings
            harness.call()
        harness.bye_all()
        harness.advance(SETTLE_S)
        keep = args.keep_caches
        idle = _snapshot(keep_caches=keep)
        for _ in range(args.calls):
            harness.call()
        harness.advance(SETTLE_S)
        assert len(harness.service.calls) == args.calls, len(harness.service.calls)
        loaded = _snapshot(keep_caches=keep)
        ended = None
        if args.end:
            harness.bye_all()
            harness.advance(SETTLE_S)
            assert len(harness.service.calls) == 0
            harness.service.cdr_queue.rows.clear()  # written to SQLite by the service
            ended = _snapshot(keep_caches=keep)
        # Printing reads source lines into linecache: only after the snapshots.
        print(f"{args.calls} answered calls held open, {SETTLE_S:.0f} s after set-up"
              f"{'' if keep else ' (parse caches emptied)'}")
        _report(idle, loaded, args.calls, args.top, "lineno", "by line")
        if args.traceback:
            _report(idle, loaded, args.calls, args.top, "traceback", "by traceback")
        if ended is not None:
            _report(idle, ended, args.calls, args.top, "lineno",
                    "after every BYE, left per call")


if __name__ == "__main__":
    main()
