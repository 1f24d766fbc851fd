"""Reliable provisional responses to a caller that requires them (RFC 3262), on a test clock."""

from __future__ import annotations

from pbx.core.call import B2buaCall, CallState, DialOutcome, Target
from pbx.sip.message import Request, make_response, parse_message
from pbx.sip.session_timer import negotiate_uas
from tests.unit.test_call_session_timer import CALLEE, CALLER, SDP_B, Services, invite


def ringing_call(services: Services) -> tuple[B2buaCall, list[DialOutcome]]:
    caller_invite = invite("Require: 100rel", "Supported: 100rel")
    call = B2buaCall(services, transaction=object(), invite=caller_invite,  # type: ignore[arg-type]
                peer=CALLER, caller="1001", caller_name=None, dialed="1002",
                session_timer=negotiate_uas(caller_invite))  # type: ignore[arg-type]
    outcomes: list[DialOutcome] = []
    call.dial([Target(request_uri="sip:1002@192.0.2.2", peer=CALLEE, label="1002")], 30,
              outcomes.append)
    (b_invite,) = services.sent("INVITE", CALLEE)
    owner = services.requests[-1][2]
    owner.on_response(make_response(b_invite, 180, to_tag="callee",
                                    headers=[("Contact", "<sip:1002@192.0.2.2>")]))
    return call, outcomes


def prack(call: B2buaCall, rack: str, cseq: int = 2) -> Request:
    message = parse_message((
        "PRACK sip:192.0.2.10:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKprack{cseq}\r\nMax-Forwards: 70\r\n"
        f"From: <sip:1001@pbx.test>;tag=caller\r\nTo: <sip:1002@pbx.test>;tag={call.a.local_tag}"
        f"\r\nCall-ID: caller-call\r\nCSeq: {cseq} PRACK\r\nRAck: {rack}\r\n"
        "Content-Length: 0\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


def test_ringing_is_sent_reliably_and_resent_until_pracked() -> None:
    services = Services()
    call, _ = ringing_call(services)
    ringing = services.responses[-1]
    assert ringing.status == 180 and "100rel" in ringing.require
    rseq = int(ringing.headers.get("RSeq") or 0)
    assert rseq > 0
    services.clock.advance(0.5)  # T1: sent again
    assert [r.status for r in services.responses].count(180) == 2

    call.in_dialog_request(call.a, object(), prack(call, f"{rseq} 1 INVITE"))  # type: ignore[arg-type]
    assert services.responses[-1].status == 200  # the PRACK's 200
    sent = len(services.responses)
    services.clock.advance(10)
    assert len(services.responses) == sent  # no more 180s
    assert not call.ended


def test_a_prack_for_another_rseq_is_481_and_the_180_goes_on() -> None:
    services = Services()
    call, _ = ringing_call(services)
    rseq = int(services.responses[-1].headers.get("RSeq") or 0)
    call.in_dialog_request(call.a, object(), prack(call, f"{rseq + 7} 1 INVITE"))  # type: ignore[arg-type]
    assert services.responses[-1].status == 481
    services.clock.advance(1.5)
    assert services.responses[-1].status == 180


def test_the_early_dialog_becomes_the_call_when_answered() -> None:
    services = Services()
    call, outcomes = ringing_call(services)
    early = call.a.dialog
    assert early is not None
    rseq = int(services.responses[-1].headers.get("RSeq") or 0)
    call.in_dialog_request(call.a, object(), prack(call, f"{rseq} 1 INVITE"))  # type: ignore[arg-type]
    (b_invite,) = services.sent("INVITE", CALLEE)
    owner = next(o for r, p, o in services.requests if r is b_invite)
    owner.on_response(parse_message(make_response(
        b_invite, 200, to_tag="callee", headers=[("Contact", "<sip:1002@192.0.2.2>"),
                                                 ("Content-Type", "application/sdp")],
        body=SDP_B).to_bytes()))  # type: ignore[arg-type]
    assert services.responses[-1].status == 200
    assert call.state is CallState.ANSWERED and outcomes[0].answered
    assert call.a.dialog is early


def test_no_prack_at_all_fails_the_call_with_500() -> None:
    services = Services()
    call, outcomes = ringing_call(services)
    services.clock.advance(64 * 0.5 + 0.1)
    assert call.ended
    assert services.responses[-1].status == 500
    assert outcomes and not outcomes[0].answered
