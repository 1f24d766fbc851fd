"""CPU per call through the B2BUA inside the PBX, with no sockets and no reactor.

`bench/calls.py` measures the whole server against the Sippy B2BUA; this
script isolates what the Python code of the call path costs, so that a
change to it (the media seam, say) can be judged in seconds. It builds the
real `PbxService` (on a `twisted.internet.task.Clock`, listeners not
started), captures what the endpoint sends, registers the callee once and
plays bench/calls.py's call N times, each with its own Call-ID: INVITE,
407, ACK, INVITE with an MD5 digest, 100; the callee's 180 and 200 with
SDP, the PBX's ACK and 200 to the caller; the caller's ACK; the caller's
BYE, relayed, and the callee's 200. Only the time inside
`SipEndpoint.receive_data` and in advancing the clock (timers, the
transactions' expiry) is counted, as thread CPU time; building the
messages and the digest is not.

``--media pass-through`` gives every call a `PassThroughMedia` session (the
seam's cost when a plugin sets a factory that changes nothing);
``--media none`` (the default) is the PBX as shipped, and also runs on code
from before the seam (``PYTHONPATH=that/checkout``) to compare with.

    .venv/bin/python bench/call_cpu.py [--calls 5000] [--media none|pass-through] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import sys
import time
from pathlib import Path

from twisted.internet.task import Clock

from pbx.config import parse_config
from pbx.service import PbxService, _tune_garbage_collector
from pbx.sip.digest import Challenge, authorization_for, select_challenge
from pbx.sip.message import Request, Response, parse_message
from pbx.sip.peer import Peer

DOMAIN = "pbx.test"
CALLER = Peer("udp", "127.0.0.1", 6001)
CALLEE = Peer("udp", "127.0.0.1", 6002)
PASSWORDS = {"1001": "secret-1001", "1002": "secret-1002"}
SDP = (b"v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\n"
       b"c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


class Office:
    """The service, what it sends by destination port, and the CPU spent inside it."""

    def __init__(self, data_dir: Path) -> None:
        config = parse_config({
            "pbx": {"data_dir": str(data_dir), "log_requests": False},
            "sip": {"domain": DOMAIN, "udp": "127.0.0.1:5060"},
            "registrar": {"digest_algorithms": ["MD5"]},
            "security": {"max_messages_per_source": 100_000_000},
            "users": {user: {"password": password} for user, password in PASSWORDS.items()},
        }, str(data_dir / "pbx.toml"))
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.service = PbxService(config, reactor=self.clock)
        self.sent: dict[int, list[bytes]] = {CALLER.port: [], CALLEE.port: []}
        self.service.connections.udp_send = lambda data, host, port: self.sent[port].append(
            data)
        self.spent = 0.0

    def deliver(self, data: bytes, peer: Peer) -> None:
        counter = time.thread_time
        started = counter()
        self.service.endpoint.receive_data(data, peer, datagram=True)
        self.spent += counter() - started

    def advance(self, seconds: float) -> None:
        counter = time.thread_time
        started = counter()
        self.clock.advance(seconds)
        self.spent += counter() - started

    def take(self, peer: Peer) -> list[Request | Response]:
        taken, self.sent[peer.port] = self.sent[peer.port], []
        return [parse_message(data) for data in taken]


def challenge_in(messages: list[Request | Response], header: str) -> Challenge:
    (response,) = [m for m in messages if isinstance(m, Response) and m.status in (401, 407)]
    chosen = select_challenge(Challenge.parse(v) for v in response.headers.values(header))
    assert chosen is not None
    return chosen


def register_callee(office: Office) -> None:
    def register(cseq: int, auth: str = "") -> None:
        office.deliver((
            f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:6002;branch=z9hG4bKreg{cseq};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:1002@{DOMAIN}>;tag=r\r\n"
            f"To: <sip:1002@{DOMAIN}>\r\nCall-ID: reg-1002\r\nCSeq: {cseq} REGISTER\r\n"
            f"Contact: <sip:1002@127.0.0.1:6002;transport=udp>\r\nExpires: 3600\r\n"
            f"{auth}Content-Length: 0\r\n\r\n").encode(), CALLEE)

    register(1)
    credentials = authorization_for(challenge_in(office.take(CALLEE), "www-authenticate"),
                                    username="1002", password=PASSWORDS["1002"],
                                    method="REGISTER", uri=f"sip:{DOMAIN}", cnonce="cn")
    register(2, f"Authorization: {credentials.to_header_value()}\r\n")
    office.take(CALLEE)


def caller_request(n: int, method: str, cseq: int, branch: str, *, to_tag: str = "",
                   extra: str = "", body: bytes = b"") -> bytes:
    to = f"<sip:1002@{DOMAIN}>" + (f";tag={to_tag}" if to_tag else "")
    content_type = "Content-Type: application/sdp\r\n" if body else ""
    return (f"{method} sip:1002@{DOMAIN} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:6001;branch=z9hG4bK{branch}-{n};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:1001@{DOMAIN}>;tag=caller-{n}\r\n"
            f"To: {to}\r\nCall-ID: call-{n}@127.0.0.1\r\nCSeq: {cseq} {method}\r\n"
            f"Contact: <sip:1001@127.0.0.1:6001;transport=udp>\r\n{extra}{content_type}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def callee_response(request: Request, status: int, body: bytes = b"") -> bytes:
    head = "".join(f"{name}: {value}\r\n" for name, value in request.headers
                   if name.lower() in ("via", "from", "call-id", "cseq"))
    to = request.headers.get("to") or ""
    if ";tag=" not in to:
        to += ";tag=callee"
    content_type = "Content-Type: application/sdp\r\n" if body else ""
    return (f"SIP/2.0 {status} Whatever\r\n{head}To: {to}\r\n"
            f"Contact: <sip:127.0.0.1:6002;transport=udp>\r\n{content_type}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def one_call(office: Office, n: int) -> None:
    office.deliver(caller_request(n, "INVITE", 1, "inv1", body=SDP), CALLER)
    challenge = challenge_in(replies := office.take(CALLER), "proxy-authenticate")
    to_tag = replies[0].to_addr.tag or ""
    office.deliver(caller_request(n, "ACK", 1, "inv1", to_tag=to_tag), CALLER)
    credentials = authorization_for(challenge, username="1001", password=PASSWORDS["1001"],
                                    method="INVITE", uri=f"sip:1002@{DOMAIN}", cnonce=f"c{n}")
    office.deliver(caller_request(
        n, "INVITE", 2, "inv2", body=SDP,
        extra=f"Proxy-Authorization: {credentials.to_header_value()}\r\n"), CALLER)
    (invite,) = office.take(CALLEE)
    assert isinstance(invite, Request) and invite.method == "INVITE", invite
    office.deliver(callee_response(invite, 180), CALLEE)
    office.deliver(callee_response(invite, 200, SDP), CALLEE)
    office.take(CALLEE)  # the ACK
    ok = [m for m in office.take(CALLER) if isinstance(m, Response) and m.status == 200]
    if not ok:
        raise SystemExit(f"call {n} was not answered")
    to_tag = ok[0].to_addr.tag or ""
    office.deliver(caller_request(n, "ACK", 2, "ack2", to_tag=to_tag), CALLER)
    office.deliver(caller_request(n, "BYE", 3, "bye3", to_tag=to_tag), CALLER)
    (bye,) = office.take(CALLEE)
    assert isinstance(bye, Request) and bye.method == "BYE", bye
    office.deliver(callee_response(bye, 200), CALLEE)
    office.take(CALLER)
    office.advance(0.01)  # 100 calls a second of the clock: transactions expire as they go


def run(office: Office, calls: int, first: int) -> float:
    office.spent = 0.0
    for n in range(first, first + calls):
        one_call(office, n)
    office.advance(40.0)  # every transaction of the last calls is over
    if len(office.service.calls) != 0:
        raise SystemExit(f"{len(office.service.calls)} calls did not end")
    return office.spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--media", choices=("none", "pass-through"), default="none")
    parser.add_argument("--profile", choices=("tottime", "cumulative"), nargs="?",
                        const="tottime", help="print a cProfile listing sorted this way")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/pbx-call-cpu"))
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    office = Office(args.data_dir)
    if args.media == "pass-through":
        from pbx.media.seam import PassThroughMedia

        office.service.calls.media_factory = lambda call: PassThroughMedia()
    register_callee(office)
    _tune_garbage_collector()
    run(office, min(1000, args.calls), 0)  # warm up
    gc.collect()
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        spent = run(office, args.calls, 1_000_000)
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stdout).sort_stats(args.profile).print_stats(45)
    else:
        spent = run(office, args.calls, 1_000_000)
    per = spent / args.calls * 1e6
    print(f"{args.calls} calls (media: {args.media}): {per:.1f} µs each inside the PBX "
          f"({1e6 / per:,.0f}/s on one core before I/O)")


if __name__ == "__main__":
    main()
