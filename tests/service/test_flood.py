"""One address floods the PBX with INVITEs it never authenticates (issue 20, item 3).

Over real UDP on 127.0.0.1: the flood comes from 127.0.0.2 (a loopback
address of its own, as another host would be), the phones that must keep
being served from 127.0.0.1. What is asserted is what either side sees on
the wire: one 407 per INVITE and nothing re-sent, the very same bytes for a
retransmission, silence for the ACK, the answers the others get, and the
security log's line; and the transaction table, which a flood must not fill.
"""

from __future__ import annotations

import os
from typing import Any

import pytest_twisted

from tests.service.conftest import ticks
from tests.service.sipclient import Link, parse_reply

FLOOD_HOST = "127.0.0.2"
SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
       b"m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
       b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n")


def flood_invite(link: Link, index: int, *, method: str = "INVITE",
                 to_tag: str | None = None, branch: str | None = None) -> bytes:
    """An INVITE without credentials, as a scanner or SIPp sends them (with an offer)."""
    port = link.local_port  # type: ignore[attr-defined]
    branch = branch or f"z9hG4bK-flood-{index}-{os.urandom(3).hex()}"
    body = SDP if method == "INVITE" else b""
    lines = [
        f"{method} sip:1002@pbx.test SIP/2.0",
        f"Via: SIP/2.0/UDP {FLOOD_HOST}:{port};branch={branch};rport",
        "Max-Forwards: 70",
        "From: <sip:1001@pbx.test>;tag=flood",
        "To: <sip:1002@pbx.test>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: flood-{index}@{FLOOD_HOST}",
        f"CSeq: 1 {method}",
        f"Contact: <sip:1001@{FLOOD_HOST}:{port}>",
        "User-Agent: flood",
        *(["Content-Type: application/sdp"] if body else []),
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def frames(link: Link, count: int) -> list[bytes]:
    return [await link.next_frame() for _ in range(count)]


@pytest_twisted.ensureDeferred
async def test_unauthenticated_invites_are_answered_statelessly_and_others_are_served(
        pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    layer = pbx.service.layer
    caller = await pbx.softphone("1001")
    callee = await pbx.softphone("1002")
    flood = await pbx.link("udp", local_host=FLOOD_HOST)
    sent = received = 0
    invites: list[bytes] = []
    answers: list[bytes] = []
    for burst in range(3):
        batch = [flood_invite(flood, burst * 100 + i) for i in range(100)]
        for data in batch:
            flood.send(data)
        sent += sum(map(len, batch))
        # Another address is served while the burst is being answered.
        options = await caller.phone.request("OPTIONS")
        assert options.status == 200
        got = await frames(flood, len(batch))
        received += sum(map(len, got))
        assert [parse_reply(frame).status for frame in got] == [407] * len(batch)
        invites += batch
        answers += got
        # No INVITE server transaction is kept for a challenge.
        assert len(layer) == 0
    await caller.register()
    call = await caller.call(callee.user)
    incoming = await callee.next_call()
    assert (await call.final_response()).status == 200
    await incoming.next_request("ACK")
    await call.bye()

    # A retransmission of an INVITE gets the very same bytes (the echo), one each.
    by_call_id = {parse_reply(answer).call_id: answer for answer in answers}
    held = len(layer)  # the call's last transactions, if any
    for data in invites[-20:]:
        flood.send(data)
        sent += len(data)
        echo = await flood.next_frame()
        received += len(echo)
        assert echo == by_call_id[parse_reply(echo).call_id]
    assert len(layer) <= held

    # The ACK to a 407 (same branch, To tag of the 407) is absorbed: no answer.
    for answer in answers[:20]:
        reply = parse_reply(answer)
        index = int(reply.call_id.split("-")[1].split("@")[0])
        ack = flood_invite(flood, index, method="ACK", to_tag=reply.to_tag, branch=reply.branch)
        flood.send(ack)
        sent += len(ack)
    # Nothing re-sent either: a kept transaction's Timer G would repeat each 407 at 0.5 s.
    await flood.silence(1.2)
    assert received / sent <= 1.5, f"amplification {received / sent:.2f}"


@pytest_twisted.ensureDeferred
async def test_a_source_over_its_limit_is_dropped_and_reported_once(pbx_factory: Any) -> None:
    pbx = await pbx_factory({"security": {"max_messages_per_source": 50,
                                          "source_window_s": 30, "source_block_s": 60}})
    phone = await pbx.phone("1001")
    flood = await pbx.link("udp", local_host=FLOOD_HOST)
    for index in range(200):
        flood.send(flood_invite(flood, index))
    got = await frames(flood, 50)
    assert {parse_reply(frame).status for frame in got} == {407}
    await flood.silence(0.5)  # the other 150 dropped, unanswered
    # Another address is not touched: its OPTIONS and REGISTERs are answered.
    assert (await phone.request("OPTIONS")).status == 200
    assert (await phone.register()).status == 200
    await ticks(pbx.reactor, 0.1)
    lines = [line for line in pbx.security_log.read_text().splitlines() if " flood " in line]
    assert len(lines) == 1, lines
    assert f"pbx security flood from {FLOOD_HOST} user=- reason=" in lines[0]
    assert pbx.service.limiter.is_blocked(FLOOD_HOST, pbx.reactor.seconds())
