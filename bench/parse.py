"""Parse and serialize rate of the SIP message core, beside the Sippy B2BUA's.

Measures, on one core, messages per second for:
- parse: `parse_message` of the call-flow INVITE (with its SDP) plus the
  typed reads every transaction needs (top Via branch, From tag, To tag,
  CSeq number, Call-ID);
- serialize: `to_bytes` of a parsed message that had a header edited
  (so nothing is served from the received bytes);
and the same with Sippy's classes (`SipRequest(buf)`, `getHFBody` for Via,
From, To, CSeq and Call-ID with branch, tag and CSeq number read;
`str(request)` to serialize). Prints the figures and the ratios.

    .venv/bin/python bench/parse.py [--seconds 3] [--cpu 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

from pbx.sip.message import parse_message

INVITE = (Path(__file__).parent.parent / "tests/data/callflows/2.1-01-invite.sip").read_bytes() \
    if (Path(__file__).parent.parent / "tests/data/callflows/2.1-01-invite.sip").exists() else (
    b"INVITE sip:Marconi@radio.example.org SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP lab.high-voltage.example.org:5060;branch=z9hG4bKfw19b\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: G. Marconi <sip:Marconi@radio.example.org>\r\n"
    b"From: Nikola Tesla <sip:n.tesla@high-voltage.example.org>;tag=76341\r\n"
    b"Call-ID: j2qu348ek2328ws\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Subject: About That Power Outage...\r\n"
    b"Contact: <sip:n.tesla@lab.high-voltage.example.org>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 166\r\n"
    b"\r\n"
    b"v=0\r\n"
    b"o=Tesla 2890844526 2890844526 IN IP4 lab.high-voltage.example.org\r\n"
    b"s=Phone Call\r\n"
    b"c=IN IP4 100.101.102.103\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
)


def rate(work: Callable[[], object], seconds: float) -> float:
    """Calls per second of `work`, best of three runs of `seconds`/3 each."""
    best = 0.0
    for _ in range(3):
        count = 0
        deadline = time.perf_counter() + seconds / 3
        start = time.perf_counter()
        while time.perf_counter() < deadline:
            for _ in range(200):
                work()
            count += 200
        best = max(best, count / (time.perf_counter() - start))
    return best


def ours_parse() -> None:
    message = parse_message(INVITE)
    _ = (message.top_via.branch, message.from_addr.tag, message.to_addr.tag,
         message.cseq.number, message.call_id)


def make_ours_serialize() -> Callable[[], bytes]:
    message = parse_message(INVITE)
    message.headers.set("Max-Forwards", "69")
    return message.to_bytes


def sippy_parse() -> None:
    from sippy.SipRequest import SipRequest

    request = SipRequest(INVITE.decode())
    request.getHFBody("via").getBranch()
    request.getHFBody("from").getTag()
    request.getHFBody("to").getTag()
    request.getHFBody("cseq").getCSeqNum()
    str(request.getHFBody("call-id"))


def make_sippy_serialize() -> Callable[[], str]:
    from sippy.SipRequest import SipRequest

    request = SipRequest(INVITE.decode())
    return lambda: str(request)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    ours_parse()  # warm caches and imports before timing
    sippy_parse()
    figures = {
        "pbx parse": rate(ours_parse, args.seconds),
        "sippy parse": rate(sippy_parse, args.seconds),
        "pbx serialize": rate(make_ours_serialize(), args.seconds),
        "sippy serialize": rate(make_sippy_serialize(), args.seconds),
    }
    print(f"# {time.strftime('%Y-%m-%d')} {platform.python_implementation()} "
          f"{platform.python_version()} on {platform.machine()}, "
          f"message of {len(INVITE)} bytes")
    for name, value in figures.items():
        print(f"{name:16s} {value:10,.0f} messages/s")
    print(f"parse ratio      {figures['pbx parse'] / figures['sippy parse']:.2f}x sippy "
          f"(goal 50,000/s and 1.6x)")
    print(f"serialize ratio  {figures['pbx serialize'] / figures['sippy serialize']:.2f}x "
          f"sippy (goal 100,000/s and 2x)")


if __name__ == "__main__":
    main()
