"""Session timers on a call (RFC 4028), on a test clock: a vanished phone ends its call.

The real `B2buaCall` and `LegTimer` run against recording `CallServices`; time
is Twisted's `task.Clock`, so minutes pass in microseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.task import Clock

from pbx.core.call import B2buaCall, CallState, DialOutcome, Target
from pbx.core.owners import ResponseOwner
from pbx.sip.dialog import Dialog
from pbx.sip.message import Request, Response, make_response, parse_message
from pbx.sip.peer import Peer
from pbx.sip.session_timer import negotiate_uas

CALLER = Peer("udp", "192.0.2.1", 5060)
CALLEE = Peer("udp", "192.0.2.2", 5060)
SDP_A = b"v=0\r\no=a 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n" \
        b"m=audio 4000 RTP/AVP 0\r\n"
SDP_B = SDP_A.replace(b"192.0.2.1", b"192.0.2.2").replace(b"4000", b"5000")


class Services:
    """Records what the call sends; time is a Clock."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.responses: list[Response] = []
        self.requests: list[tuple[Request, Peer, ResponseOwner]] = []
        self.acks: list[Request] = []
        self.ended: list[B2buaCall] = []
        self._n = 0
        self.domain = "pbx.test"
        self.t1_s = 0.5
        self.t2_s = 4.0

    def now(self) -> float:
        return self.clock.seconds()

    def respond(self, transaction: Any, response: Response) -> None:
        self.responses.append(response)

    def send_request(self, request: Request, peer: Peer, owner: ResponseOwner) -> Any:
        self.requests.append((request, peer, owner))
        return object()

    def send_ack(self, request: Request, peer: Peer) -> None:
        self.acks.append(request)

    def cancel(self, transaction: Any) -> None:
        return None

    def call_later(self, delay_s: float, work: Callable[[], None]) -> Any:
        return self.clock.callLater(delay_s, work)

    def via_for(self, peer: Peer) -> str:
        self._n += 1
        return f"SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKpbx{self._n};rport"

    def contact_for(self, peer: Peer, user: str | None) -> str:
        return f"<sip:{user + '@' if user else ''}192.0.2.10:5060;transport=udp>"

    def new_tag(self) -> str:
        self._n += 1
        return f"tag{self._n}"

    def new_call_id(self) -> str:
        self._n += 1
        return f"pbx-call-{self._n}"

    def register_dialog(self, dialog: Dialog, leg: Any) -> None:
        return None

    def forget_dialog(self, dialog: Dialog) -> None:
        return None

    def callee_ringing(self, call: B2buaCall, callee: str) -> None:
        pass

    def callee_answered(self, call: B2buaCall, callee: str) -> None:
        pass

    def call_ended(self, call: B2buaCall) -> None:
        self.ended.append(call)

    def sent(self, method: str, peer: Peer) -> list[Request]:
        return [r for r, p, _ in self.requests if r.method == method and p == peer]


def invite(*headers: str) -> Request:
    lines = [
        "INVITE sip:1002@pbx.test SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKcaller1;rport",
        "Max-Forwards: 70",
        "From: <sip:1001@pbx.test>;tag=caller",
        "To: <sip:1002@pbx.test>",
        "Call-ID: caller-call",
        "CSeq: 1 INVITE",
        "Contact: <sip:1001@192.0.2.1:5060>",
        *headers,
        "Content-Type: application/sdp",
        f"Content-Length: {len(SDP_A)}",
    ]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode() + SDP_A)
    assert isinstance(message, Request)
    return message


def connected_call(services: Services, caller_invite: Request,
                   callee_headers: list[tuple[str, str]]) -> B2buaCall:
    """A call answered by the callee, with the timers each side negotiated."""
    decision = negotiate_uas(caller_invite)
    call = B2buaCall(services, transaction=object(), invite=caller_invite,  # type: ignore[arg-type]
                peer=CALLER, caller="1001", caller_name=None, dialed="1002",
                session_timer=decision)  # type: ignore[arg-type]
    outcomes: list[DialOutcome] = []
    call.dial([Target(request_uri="sip:1002@192.0.2.2", peer=CALLEE, label="1002")], 30,
              outcomes.append)
    (b_invite,) = services.sent("INVITE", CALLEE)
    owner = services.requests[-1][2]
    answer = make_response(b_invite, 200, to_tag="callee", headers=[
        ("Contact", "<sip:1002@192.0.2.2:5060>"), *callee_headers,
        ("Content-Type", "application/sdp")], body=SDP_B)
    owner.on_response(parse_message(answer.to_bytes()))  # type: ignore[arg-type]
    assert call.state is CallState.ANSWERED and outcomes[0].answered
    ack = parse_message(
        b"ACK sip:192.0.2.10:5060 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKack1\r\nMax-Forwards: 70\r\n"
        b"From: <sip:1001@pbx.test>;tag=caller\r\nTo: <sip:1002@pbx.test>;tag="
        + call.a.local_tag.encode() + b"\r\nCall-ID: caller-call\r\nCSeq: 1 ACK\r\n"
        b"Content-Length: 0\r\n\r\n")
    assert isinstance(ack, Request)
    call.a_ack(ack)
    return call


def test_the_callee_is_offered_a_session_timer() -> None:
    services = Services()
    connected_call(services, invite(), [])
    (b_invite,) = services.sent("INVITE", CALLEE)
    assert "timer" in b_invite.supported
    assert b_invite.headers.get("Session-Expires") == "1800"
    assert b_invite.headers.get("Min-SE") == "90"


def test_caller_asking_for_refresher_uac_is_told_so_and_watched() -> None:
    services = Services()
    caller_invite = invite("Supported: timer", "Session-Expires: 90;refresher=uac")
    call = connected_call(services, caller_invite, [])
    answer = services.responses[-1]
    assert answer.status == 200
    assert answer.headers.get("Session-Expires") == "90;refresher=uac"
    assert "timer" in answer.require

    # The caller never refreshes: at 90 - min(32, 90/3) = 60 s the PBX gives up.
    services.clock.advance(59.9)
    assert not call.ended
    services.clock.advance(0.2)
    assert call.ended
    assert services.sent("BYE", CALLER) and services.sent("BYE", CALLEE)
    assert call.record.hangup_by == "pbx"
    assert "session timer" in (call.record.reason or "")


def test_a_refresh_from_the_caller_keeps_the_call_up() -> None:
    services = Services()
    caller_invite = invite("Supported: timer", "Session-Expires: 90;refresher=uac")
    call = connected_call(services, caller_invite, [])
    assert call.a.dialog is not None
    services.clock.advance(45)
    refresh = parse_message(
        b"UPDATE sip:192.0.2.10:5060 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKupd1\r\nMax-Forwards: 70\r\n"
        b"From: <sip:1001@pbx.test>;tag=caller\r\nTo: <sip:1002@pbx.test>;tag="
        + call.a.local_tag.encode() + b"\r\nCall-ID: caller-call\r\nCSeq: 2 UPDATE\r\n"
        b"Contact: <sip:1001@192.0.2.1:5060>\r\nSupported: timer\r\n"
        b"Session-Expires: 90;refresher=uac\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(refresh, Request)
    call.in_dialog_request(call.a, object(), refresh)  # type: ignore[arg-type]
    relayed, peer, owner = services.requests[-1]
    assert (relayed.method, peer) == ("UPDATE", CALLEE)
    owner.on_response(make_response(relayed, 200, to_tag=None))
    ok = services.responses[-1]
    assert ok.status == 200 and ok.headers.get("Session-Expires") == "90;refresher=uac"

    services.clock.advance(30)  # 75 s after the answer: past the first deadline
    assert not call.ended
    services.clock.advance(31)  # 61 s after the refresh
    assert call.ended


def test_the_pbx_refreshes_a_callee_and_ends_the_call_when_it_is_gone() -> None:
    services = Services()
    # The callee lets the PBX refresh (refresher=uac: the PBX is its UAC) and allows UPDATE.
    call = connected_call(services, invite(), [
        ("Session-Expires", "120;refresher=uac"), ("Require", "timer"),
        ("Allow", "INVITE, ACK, BYE, CANCEL, UPDATE")])
    services.clock.advance(59)
    assert not services.sent("UPDATE", CALLEE)
    services.clock.advance(1.1)  # half the interval
    (update,) = services.sent("UPDATE", CALLEE)
    assert update.headers.get("Session-Expires") == "120;refresher=uac"
    owner = services.requests[-1][2]
    owner.on_response(make_response(update, 200, to_tag=None,
                                    headers=[("Session-Expires", "120;refresher=uac")]))
    assert not call.ended

    services.clock.advance(60.1)  # the next refresh goes out; the phone is gone
    second = services.sent("UPDATE", CALLEE)[-1]
    assert second is not update
    services.requests[-1][2].on_failure(408)
    assert call.ended
    assert services.sent("BYE", CALLER)
    assert "refresh not answered" in (call.record.reason or "")


def test_a_caller_without_timer_support_is_refreshed_with_a_reinvite_of_the_same_sdp() -> None:
    services = Services()
    call = connected_call(services, invite(), [])
    answer = services.responses[-1]
    assert answer.headers.get("Session-Expires") == "1800;refresher=uas"  # the PBX refreshes
    services.clock.advance(900.1)
    reinvites = services.sent("INVITE", CALLER)
    assert len(reinvites) == 1
    assert reinvites[0].body == SDP_B  # what the caller was last given
    owner = services.requests[-1][2]
    owner.on_response(make_response(reinvites[0], 481, to_tag=None))
    assert call.ended
