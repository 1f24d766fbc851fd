"""Reliable provisional responses (RFC 3262): RSeq/RAck, the UAS sender, the UAC tracker.

``now`` is set by hand and T1 is the default 500 ms, so each retransmission
deadline is asserted to the millisecond: T1, 2*T1, 4*T1... after the first
sending, and the give-up at 64*T1.
"""

from __future__ import annotations

import pytest

from pbx.sip.errors import LocalProtocolError, SipParseError
from pbx.sip.message import Request, Response, make_response, parse_message
from pbx.sip.reliable import (
    FIRST_RSEQ_MAX,
    PrackTracker,
    ProvisionalKind,
    RAck,
    ReliableProvisionalSender,
    is_reliable_provisional,
    parse_rseq,
    requires_100rel,
    supports_100rel,
)
from pbx.sip.timers import TimerSettings

# RFC 3262 §7.2's example: RAck: 776656 1 INVITE
FIRST_RSEQ = 776656


def fixed(low: int, high: int) -> int:
    assert (low, high) == (1, FIRST_RSEQ_MAX)
    return FIRST_RSEQ


def invite(*extra: str) -> Request:
    lines = [
        "INVITE sip:1001@pbx.test SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bK776asdhds",
        "Max-Forwards: 70",
        "To: <sip:1001@pbx.test>",
        "From: Bob <sip:bob@biloxi.example.com>;tag=1928301774",
        "Call-ID: a84b4c76e66710",
        "CSeq: 1 INVITE",
        "Contact: <sip:bob@192.0.2.4>",
        *extra,
    ]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


def provisional(status: int = 180, body: bytes = b"") -> Response:
    headers = [("Contact", "<sip:1001@192.0.2.1>")]
    if body:
        headers.append(("Content-Type", "application/sdp"))
    return make_response(invite("Supported: 100rel"), status, to_tag="pbx1",
                         headers=headers, body=body)


def on_the_wire(response: Response) -> Response:
    parsed = parse_message(response.to_bytes())
    assert isinstance(parsed, Response)
    return parsed


def sender() -> ReliableProvisionalSender:
    return ReliableProvisionalSender(randint=fixed)


# ------------------------------------------------------------ header values


def test_rack_of_the_rfc_example_round_trips() -> None:
    rack = RAck.parse("776656 1 INVITE")
    assert rack == RAck(rseq=776656, cseq=1, method="INVITE")
    assert str(rack) == "776656 1 INVITE"
    assert RAck.parse("  776656   1\tINVITE ") == rack


@pytest.mark.parametrize("text", ["776656 1", "776656 1 INVITE extra", "x 1 INVITE",
                                  "0 1 INVITE", "776656 -1 INVITE", "1 1 IN(VITE"])
def test_malformed_rack_is_a_400(text: str) -> None:
    with pytest.raises(SipParseError) as caught:
        RAck.parse(text)
    assert caught.value.status == 400


def test_rseq_bounds() -> None:
    assert parse_rseq("1") == 1
    assert parse_rseq(str(2**32 - 1)) == 2**32 - 1
    for bad in ("0", str(2**32), "12a"):
        with pytest.raises(SipParseError):
            parse_rseq(bad)


def test_100rel_in_supported_or_require() -> None:
    assert supports_100rel(invite("Supported: timer, 100rel"))
    assert not requires_100rel(invite("Supported: 100rel"))
    assert supports_100rel(invite("Require: 100rel")) and requires_100rel(
        invite("Require: 100rel"))
    assert not supports_100rel(invite("Supported: timer"))


# ------------------------------------------------------------ UAS: sending


def test_send_numbers_and_marks_the_response_without_touching_the_original() -> None:
    original = provisional(183, b"v=0\r\n")
    decision = sender().send(original, now=0.0)
    assert not decision.queued and decision.rseq == FIRST_RSEQ
    sent = on_the_wire(decision.response)
    assert sent.headers.get("rseq") == str(FIRST_RSEQ)
    assert sent.require == ["100rel"]
    assert sent.body == b"v=0\r\n" and sent.status == 183
    assert original.headers.get("rseq") is None and original.require == []


def test_default_first_rseq_is_random_in_range() -> None:
    seen = {ReliableProvisionalSender().send(provisional(), 0.0).rseq for _ in range(20)}
    assert all(1 <= rseq <= FIRST_RSEQ_MAX for rseq in seen)
    assert len(seen) > 1


def test_retransmissions_double_from_t1_and_give_up_at_64_t1() -> None:
    reliable = sender()
    first = reliable.send(provisional(), now=10.0).response
    deadlines: list[float] = []
    resent: list[Response] = []
    while (deadline := reliable.next_deadline()) is not None:
        deadlines.append(deadline)
        resent += reliable.handle_timer(deadline)
    # 10 + 0.5, +1, +2, +4, +8, +16; the next would be at 73.5, past 10 + 32.
    assert deadlines == [10.5, 11.5, 13.5, 17.5, 25.5, 41.5, 42.0]
    assert len(resent) == 6 and all(r is first for r in resent)
    assert reliable.timed_out
    assert reliable.handle_timer(100.0) == []


def test_t1_comes_from_the_timer_settings() -> None:
    reliable = ReliableProvisionalSender(timers=TimerSettings(t1_s=1.0, t2_s=4.0),
                                         randint=fixed)
    reliable.send(provisional(), now=0.0)
    assert reliable.next_deadline() == 1.0


def test_nothing_is_resent_before_its_time_and_a_late_timer_catches_up() -> None:
    reliable = sender()
    reliable.send(provisional(), now=0.0)
    assert reliable.handle_timer(0.49) == []
    assert reliable.next_deadline() == 0.5
    assert len(reliable.handle_timer(4.0)) == 1  # 0.5, 1.5 and 3.5 were missed: sent once
    assert reliable.next_deadline() == 7.5


def test_matching_prack_stops_retransmission() -> None:
    reliable = sender()
    reliable.send(provisional(), now=0.0)
    assert reliable.receive_prack(RAck(rseq=FIRST_RSEQ, cseq=1, method="INVITE"), now=0.8)
    assert reliable.next_deadline() is None
    assert reliable.handle_timer(50.0) == []
    assert not reliable.timed_out
    # The same PRACK again (a new transaction) no longer matches anything: 481.
    assert not reliable.receive_prack(RAck(rseq=FIRST_RSEQ, cseq=1, method="INVITE"), 0.9)


@pytest.mark.parametrize("rack", [
    RAck(rseq=FIRST_RSEQ + 1, cseq=1, method="INVITE"),
    RAck(rseq=FIRST_RSEQ, cseq=2, method="INVITE"),
    RAck(rseq=FIRST_RSEQ, cseq=1, method="invite"),
])
def test_a_prack_for_something_else_is_481_and_retransmission_goes_on(rack: RAck) -> None:
    reliable = sender()
    reliable.send(provisional(), now=0.0)
    assert not reliable.receive_prack(rack, now=0.2)
    assert reliable.next_deadline() == 0.5


def test_one_unacknowledged_at_a_time_the_next_goes_out_on_the_prack() -> None:
    reliable = sender()
    ringing = reliable.send(provisional(180), now=0.0)
    progress = reliable.send(provisional(183, b"v=0\r\n"), now=0.1)
    assert progress.queued and progress.rseq == FIRST_RSEQ + 1
    assert reliable.take_outgoing() == []
    assert reliable.handle_timer(0.5) == [ringing.response]  # only the first is resent
    assert reliable.receive_prack(RAck(rseq=FIRST_RSEQ, cseq=1, method="INVITE"), now=2.0)
    assert reliable.take_outgoing() == [progress.response]
    assert reliable.take_outgoing() == []
    assert reliable.outstanding_rseq == FIRST_RSEQ + 1
    assert reliable.next_deadline() == 2.5  # its timers start when it is sent


def test_final_response_stops_resending_but_a_late_prack_still_matches() -> None:
    reliable = sender()
    reliable.send(provisional(180), now=0.0)
    reliable.send(provisional(183), now=0.1)
    reliable.final_sent()
    assert reliable.next_deadline() is None and reliable.handle_timer(10.0) == []
    assert reliable.receive_prack(RAck(rseq=FIRST_RSEQ, cseq=1, method="INVITE"), now=1.0)
    assert reliable.take_outgoing() == []  # the queued 183 died with the final response
    with pytest.raises(LocalProtocolError):
        reliable.send(provisional(180), now=2.0)


def test_a_2xx_waits_for_the_prack_of_a_1xx_with_sdp() -> None:
    reliable = sender()
    assert reliable.may_send_final(200)
    reliable.send(provisional(183, b"v=0\r\n"), now=0.0)
    assert not reliable.may_send_final(200)
    assert reliable.may_send_final(486)  # a failure may go at once
    reliable.receive_prack(RAck(rseq=FIRST_RSEQ, cseq=1, method="INVITE"), now=0.3)
    assert reliable.may_send_final(200)
    without_sdp = sender()
    without_sdp.send(provisional(180), now=0.0)
    assert without_sdp.may_send_final(200)


def test_only_101_to_199_can_be_reliable_and_the_first_rseq_must_be_in_range() -> None:
    with pytest.raises(LocalProtocolError):
        sender().send(provisional(100), now=0.0)
    with pytest.raises(LocalProtocolError):
        sender().send(make_response(invite(), 200, to_tag="pbx1"), now=0.0)
    with pytest.raises(LocalProtocolError):
        ReliableProvisionalSender(randint=lambda low, high: 0).send(provisional(), 0.0)
    with pytest.raises(LocalProtocolError):
        ReliableProvisionalSender(randint=lambda low, high: 2**31).send(provisional(), 0.0)


# ------------------------------------------------------------ UAC: tracking


def reliable_180(rseq: int, status: int = 180) -> Response:
    response = make_response(invite("Supported: 100rel"), status, to_tag="pbx1",
                             headers=[("Require", "100rel"), ("RSeq", str(rseq))])
    return on_the_wire(response)


def test_uac_pracks_in_order_and_ignores_retransmissions_and_gaps() -> None:
    tracker = PrackTracker()
    first = tracker.receive_provisional(reliable_180(FIRST_RSEQ))
    assert first.kind is ProvisionalKind.NEW
    assert str(first.rack) == "776656 1 INVITE"
    # §4: a retransmission is not PRACKed again.
    assert tracker.receive_provisional(reliable_180(FIRST_RSEQ)).kind is \
        ProvisionalKind.RETRANSMISSION
    # A gap: MUST NOT be PRACKed nor processed.
    gap = tracker.receive_provisional(reliable_180(FIRST_RSEQ + 2, 183))
    assert gap.kind is ProvisionalKind.OUT_OF_ORDER and gap.rack is None
    assert tracker.last_rseq == FIRST_RSEQ
    assert tracker.receive_provisional(reliable_180(FIRST_RSEQ + 1, 183)).kind is \
        ProvisionalKind.NEW
    assert tracker.receive_provisional(reliable_180(FIRST_RSEQ + 2, 183)).kind is \
        ProvisionalKind.NEW
    assert tracker.last_rseq == FIRST_RSEQ + 2


def test_uac_unreliable_provisionals_need_no_prack() -> None:
    tracker = PrackTracker()
    plain = on_the_wire(make_response(invite(), 180, to_tag="pbx1"))
    assert tracker.receive_provisional(plain).kind is ProvisionalKind.UNRELIABLE
    # §4: on a 100 the 100rel tag MUST be ignored.
    trying = reliable_180(5, status=100)
    assert not is_reliable_provisional(trying)
    assert tracker.receive_provisional(trying).kind is ProvisionalKind.UNRELIABLE
    assert tracker.last_rseq is None


def test_uac_reliable_provisional_without_rseq_is_malformed() -> None:
    broken = on_the_wire(make_response(invite(), 183, to_tag="pbx1",
                                       headers=[("Require", "100rel")]))
    with pytest.raises(SipParseError):
        PrackTracker().receive_provisional(broken)


def test_sender_and_tracker_agree_over_the_wire() -> None:
    reliable = sender()
    tracker = PrackTracker()
    reliable.send(provisional(180), now=0.0)
    reliable.send(provisional(183), now=0.1)
    third = reliable.send(provisional(180), now=0.2)
    assert third.queued and third.response.headers.get("rseq") == str(FIRST_RSEQ + 2)
    kinds: list[ProvisionalKind] = []
    outgoing = reliable.handle_timer(0.5)  # the first one, resent: the UAC lost it
    while outgoing:
        for response in outgoing:
            verdict = tracker.receive_provisional(on_the_wire(response))
            kinds.append(verdict.kind)
            assert verdict.rack is not None
            assert reliable.receive_prack(RAck.parse(str(verdict.rack)), now=1.0)
        outgoing = reliable.take_outgoing()
    assert kinds == [ProvisionalKind.NEW] * 3
    assert tracker.last_rseq == FIRST_RSEQ + 2
    assert reliable.outstanding_rseq is None and reliable.next_deadline() is None
