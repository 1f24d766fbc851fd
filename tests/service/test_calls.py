"""Calls through the back-to-back user agent, as the phones at both ends see them.

Each test registers `Softphone`s, places a call from 1001 and checks what a
user would notice: the codes on the wire, the SDP that arrives at the other
side, the BYEs and CANCELs, and the call detail row in SQLite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent

from tests.service.conftest import PASSWORDS
from tests.service.sipclient import (
    PhoneCall,
    Softphone,
    answer_even_if_cancelled,
    busy,
    direction_of,
    early_media,
    ring_forever,
    ring_then_answer,
)


def dialplan(tmp_path: Path, body: str, name: str = "dialplan.py") -> Path:
    """A dialplan file in tmp_path: `body` is the handler's code, indented by 4."""
    path = tmp_path / name
    path.write_text("from pbx.dialplan import *  # noqa\n\n\nasync def handle_call(call):\n"
                    + "".join(f"    {line}\n" for line in body.strip().splitlines()))
    return path


async def connected(caller: Softphone, callee: Softphone) -> tuple[PhoneCall, PhoneCall]:
    """1001 calls 1002, who answers; both ends once the callee has the ACK."""
    outgoing = await caller.call(callee.user)
    incoming = await callee.next_call()
    assert (await outgoing.final_response()).status == 200
    await incoming.next_request("ACK")
    return outgoing, incoming


# ------------------------------------------------------------- refusals


@pytest_twisted.ensureDeferred
async def test_invite_is_challenged_then_refused_for_another_users_credentials(
        pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    caller = await pbx.softphone("1001")
    await pbx.softphone("1002")

    plain = await caller.call("1002", authenticate=False)
    challenge = await plain.final_response()
    assert challenge.status == 407
    assert challenge.get("proxy-authenticate").startswith("Digest ")
    assert "www-authenticate" not in challenge

    borrowed = await caller.call("1002", credentials=("1002", PASSWORDS["1002"]))
    assert (await borrowed.final_response()).status == 403


@pytest_twisted.ensureDeferred
async def test_unknown_callee_is_404_and_unregistered_callee_is_480(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    caller = await pbx.softphone("1001")

    unknown = await caller.call("4711")
    assert (await unknown.final_response()).status == 404
    away = await caller.call("1002")  # a user, but no phone registered
    assert (await away.final_response()).status == 480

    rows = await pbx.cdrs_when(2)
    assert [(row["dialed"], row["status"], row["hangup_by"]) for row in rows] == [
        ("4711", 404, "pbx"), ("1002", 480, "pbx")]


# ------------------------------------------------------- answered calls


@pytest_twisted.ensureDeferred
async def test_call_is_connected_and_the_caller_hangs_up(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    caller = await pbx.softphone("1001")
    callee = await pbx.softphone("1002", behaviour=ring_then_answer(0.1))

    outgoing = await caller.call("1002")
    assert (await outgoing.next_response()).status == 100  # at once, before any ringing
    incoming = await callee.next_call()
    ringing = await outgoing.next_response()
    assert ringing.status == 180
    answer = await outgoing.next_response()
    assert answer.status == 200
    # The callee's SDP answer reaches the caller, and the caller's offer the callee.
    assert answer.body == callee.sdp()
    assert answer.get("content-type") == "application/sdp"
    assert incoming.invite is not None and incoming.invite.body == caller.sdp()
    assert answer.to_tag == ringing.to_tag and answer.contact_uri
    ack = await incoming.next_request("ACK")
    # A B2BUA: the callee's leg is a dialog of its own.
    assert incoming.call_id != outgoing.call_id
    assert incoming.invite.from_tag != outgoing.local_tag
    assert incoming.local_tag != answer.to_tag
    assert ack.to_tag == incoming.local_tag and ack.from_tag == incoming.remote_tag

    await outgoing.pause(0.1)
    assert (await outgoing.bye()).status == 200
    bye = await incoming.next_request("BYE")
    assert bye.call_id == incoming.call_id and bye.to_tag == incoming.local_tag

    row, = await pbx.cdrs_when(1)
    assert row["call_id"] == outgoing.call_id
    assert (row["caller"], row["dialed"], row["answered_by"]) == ("1001", "1002", "1002")
    assert (row["hangup_by"], row["status"]) == ("caller", 200)
    assert row["duration_s"] > 0
    assert row["started_at"] < row["answered_at"] < row["ended_at"]


@pytest_twisted.ensureDeferred
async def test_callee_hangs_up_over_tcp(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    caller = await pbx.softphone("1001")
    callee = await pbx.softphone("1002", "tcp")
    outgoing, incoming = await connected(caller, callee)
    assert incoming.invite is not None
    assert "SIP/2.0/TCP" in (incoming.invite.get("via") or "")

    assert (await incoming.bye()).status == 200
    bye = await outgoing.next_request("BYE")
    # In the caller's own dialog: its Call-ID, its tag as the To tag.
    assert bye.call_id == outgoing.call_id
    assert bye.to_tag == outgoing.local_tag and bye.from_tag == outgoing.remote_tag

    row, = await pbx.cdrs_when(1)
    assert (row["answered_by"], row["hangup_by"], row["status"]) == ("1002", "callee", 200)


@pytest_twisted.ensureDeferred
async def test_a_phone_gone_from_tcp_is_unreachable_at_once(pbx_factory: Any) -> None:
    """The PBX cannot connect back to it: the caller hears 480 now, not after the timeout."""
    pbx = await pbx_factory()
    caller = await pbx.softphone("1001")
    callee = await pbx.softphone("1002", "tcp")
    await callee.link.close()  # the phone's connection, and its listening port, are gone

    outgoing = await caller.call("1002")
    # Waiting past the dial timeout (30 s) on purpose: a dial that runs out of
    # time ends 408 (test_no_answer_cancels_the_callee_and_gives_the_caller_408),
    # so a 480 is the PBX giving up on the phone it cannot reach, however
    # slow the machine.
    answer = await outgoing.final_response(timeout=60)
    assert answer.status == 480
    row, = await pbx.cdrs_when(1)
    assert (row["answered_by"], row["status"]) == (None, 480)


@pytest_twisted.ensureDeferred
async def test_session_timers_are_negotiated_with_both_phones(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    caller = await pbx.softphone("1001")
    callee = await pbx.softphone("1002")

    # RFC 4028 §6: an interval below the minimum is refused with the minimum.
    short = await caller.call("1002", invite_headers=[
        ("Supported", "timer"), ("Session-Expires", "60")])
    refused = await short.final_response()
    assert (refused.status, refused.get("Min-SE")) == (422, "90")

    outgoing = await caller.call("1002", invite_headers=[
        ("Supported", "timer"), ("Session-Expires", "600;refresher=uac")])
    incoming = await callee.next_call()
    assert incoming.invite is not None
    assert "timer" in (incoming.invite.get("Supported") or "")
    assert incoming.invite.get("Session-Expires") == "1800"
    answer = await outgoing.final_response()
    assert answer.status == 200
    assert answer.get("Session-Expires") == "600;refresher=uac"
    assert "timer" in (answer.get("Require") or "")
    assert (await outgoing.bye()).status == 200


@pytest_twisted.ensureDeferred
async def test_busy_callee(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    caller = await pbx.softphone("1001")
    await pbx.softphone("1002", behaviour=busy)

    outgoing = await caller.call("1002")
    assert (await outgoing.final_response()).status == 486

    row, = await pbx.cdrs_when(1)
    assert (row["status"], row["answered_by"], row["duration_s"]) == (486, None, 0)
    assert row["hangup_by"] == "callee"  # the busy phone ended it, not the PBX


@pytest_twisted.ensureDeferred
async def test_a_callees_503_reaches_the_caller_as_500(pbx_factory: Any) -> None:
    async def overloaded(call: PhoneCall) -> None:
        call.respond(call.invite, 503)

    pbx = await pbx_factory()
    caller = await pbx.softphone("1001")
    await pbx.softphone("1002", behaviour=overloaded)

    # A 503 would tell the caller that the PBX itself is overloaded (§16.7 step 6).
    outgoing = await caller.call("1002")
    assert (await outgoing.final_response()).status == 500

# ------------------------------------------------------- unanswered calls


@pytest_twisted.ensureDeferred
async def test_no_answer_cancels_the_callee_and_gives_the_caller_408(
        pbx_factory: Any, tmp_path: Path) -> None:
    plan = dialplan(tmp_path, "await call.dial(call.dialed, timeout_s=1)")
    pbx = await pbx_factory({"dialplan": {"module": str(plan)}})
    caller = await pbx.softphone("1001")
    callee = await pbx.softphone("1002", behaviour=ring_forever)

    dialled_at = pbx.reactor.seconds()
    outgoing = await caller.call("1002")
    incoming = await callee.next_call()
    await incoming.next_request("CANCEL")
    # Not before the dialplan's second (a timer never fires early). That it is
    # that second and not later is the clock-driven tests' (tests/unit).
    assert pbx.reactor.seconds() - dialled_at >= 1.0
    assert incoming.invite_final == 487
    await incoming.next_request("ACK")  # the PBX ACKs the 487
    assert (await outgoing.final_response()).status == 408

    row, = await pbx.cdrs_when(1)
    assert (row["status"], row["answered_by"], row["hangup_by"]) == (408, None, "pbx")


@pytest_twisted.ensureDeferred
async def test_no_answer_forwards_to_another_user(pbx_factory: Any, tmp_path: Path) -> None:
    plan = dialplan(tmp_path, """
result = await call.dial(call.dialed, timeout_s=0.5)
if isinstance(result, NoAnswer):
    await call.forward("1003")
""")
    pbx = await pbx_factory({"dialplan": {"module": str(plan)}})
    caller = await pbx.softphone("1001")
    callee = await pbx.softphone("1002", behaviour=ring_forever)
    colleague = await pbx.softphone("1003")

    outgoing = await caller.call("1002")
    first = await callee.next_call()
    await first.next_request("CANCEL")
    second = await colleague.next_call()
    answer = await outgoing.final_response()
    assert answer.status == 200 and answer.body == colleague.sdp()
    await second.next_request("ACK")
    assert (await outgoing.bye()).status == 200
    await second.next_request("BYE")

    row, = await pbx.cdrs_when(1)
    assert row["answered_by"] == "1003"
    assert row["targets"] == '["1002", "1003"]'


@pytest_twisted.ensureDeferred
async def test_headers_the_dialplan_sets_reach_the_callee(pbx_factory: Any,
                                                           tmp_path: Path) -> None:
    plan = dialplan(tmp_path, """
call.outgoing_headers["Alert-Info"] = "<http://pbx.test/ring/sales>"
await call.dial(call.dialed, timeout_s=5)
""")
    pbx = await pbx_factory({"dialplan": {"module": str(plan)}})
    caller = await pbx.softphone("1001")
    callee = await pbx.softphone("1002")
    outgoing = await caller.call("1002")
    incoming = await callee.next_call()
    assert incoming.invite.get("Alert-Info") == "<http://pbx.test/ring/sales>"
    assert (await outgoing.final_response()).status == 200
    assert (await outgoing.bye()).status == 200


@pytest_twisted.ensureDeferred
async def test_the_callee_sees_the_callers_configured_name_and_the_cdr_keeps_it(
        pbx_factory: Any, tmp_path: Path) -> None:
    # RFC 3261 quoted-string: quotes and backslashes escaped, UTF-8 as it is.
    name = 'Zoë "Zed" O\\Brien'
    plan = dialplan(tmp_path, """
call.outgoing_headers["X-Caller-Name"] = call.caller.display_name or "none"
await call.dial(call.dialed, timeout_s=5)
""")
    pbx = await pbx_factory({"dialplan": {"module": str(plan)},
                             "users": {"1001": {"name": name}}})
    alice = await pbx.softphone("1001")
    bob = await pbx.softphone("1002")

    # The configured name wins over the one the phone shows.
    outgoing = await alice.call("1002", display_name="desk phone")
    incoming = await bob.next_call()
    assert incoming.invite is not None
    sent_from = incoming.invite.get("from") or ""
    assert sent_from.startswith('"Zoë \\"Zed\\" O\\\\Brien" <sip:1001@pbx.test>;tag=')
    assert incoming.invite.get("X-Caller-Name") == name
    assert (await outgoing.final_response()).status == 200
    assert (await outgoing.bye()).status == 200

    # With no name configured, the phone's own.
    outgoing = await bob.call("1001", display_name="Bob at home")
    incoming = await alice.next_call()
    assert incoming.invite is not None
    assert (incoming.invite.get("from") or "").startswith('"Bob at home" <sip:1002@pbx.test>;')
    assert (await outgoing.final_response()).status == 200
    assert (await outgoing.bye()).status == 200

    rows = await pbx.cdrs_when(2)
    assert [(row["caller"], row["caller_name"]) for row in rows] == [
        ("1001", name), ("1002", "Bob at home")]


@pytest_twisted.ensureDeferred
async def test_a_late_answer_after_the_dialplan_moved_on_is_hung_up(
        pbx_factory: Any, tmp_path: Path, log_events: EventLoggingObserver) -> None:
    plan = dialplan(tmp_path, """
result = await call.dial(call.dialed, timeout_s=0.5)
if isinstance(result, NoAnswer):
    result = await call.forward("1003")
    assert result == Answered("1003"), result
""")
    pbx = await pbx_factory({"dialplan": {"module": str(plan)}})
    caller = await pbx.softphone("1001")
    callee = await pbx.softphone("1002", behaviour=answer_even_if_cancelled)
    colleague = await pbx.softphone("1003", behaviour=ring_then_answer(0.3))

    outgoing = await caller.call("1002")
    late = await callee.next_call()
    await late.next_request("CANCEL")
    assert late.invite_final == 200  # picked up just as the PBX gave up on it
    await late.next_request("ACK")
    await late.next_request("BYE")

    forwarded = await colleague.next_call()
    answer = await outgoing.final_response()
    assert answer.body == colleague.sdp()
    await forwarded.next_request("ACK")
    assert (await outgoing.bye()).status == 200
    await forwarded.next_request("BYE")
    row, = await pbx.cdrs_when(1)
    assert row["answered_by"] == "1003"
    assert not [event for event in log_events if "log_failure" in event]  # its assert held

@pytest_twisted.ensureDeferred
async def test_caller_cancels_while_it_rings(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    caller = await pbx.softphone("1001")
    callee = await pbx.softphone("1002", behaviour=ring_forever)

    outgoing = await caller.call("1002")
    incoming = await callee.next_call()
    while (await outgoing.next_response()).status != 180:
        pass
    outgoing.cancel()

    # 200 for the CANCEL, 487 for the INVITE, in whichever order.
    answers = {(reply.status, reply.cseq[1])
               for reply in [await outgoing.next_response() for _ in range(2)]}
    await incoming.next_request("CANCEL")
    assert incoming.invite_final == 487
    assert answers == {(200, "CANCEL"), (487, "INVITE")}

    row, = await pbx.cdrs_when(1)
    assert (row["status"], row["hangup_by"], row["answered_by"]) == (487, "caller", None)


@pytest_twisted.ensureDeferred
async def test_late_offer_the_callers_ack_carries_the_answer(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    caller = await pbx.softphone("1001")
    callee = await pbx.softphone("1002", behaviour=ring_then_answer(0))

    outgoing = await caller.call("1002", body=b"")  # no offer: the callee makes it
    outgoing.auto_ack = False
    incoming = await callee.next_call()
    assert incoming.invite is not None and incoming.invite.body == b""
    offer = await outgoing.final_response()
    assert offer.body == callee.sdp()
    # The callee's 2xx is retransmitted while the caller thinks (the PBX
    # cannot ACK it yet: the answer is in the caller's ACK).
    incoming.resend_answer()
    await outgoing.pause(0.1)
    outgoing.ack_body = caller.sdp()
    outgoing.ack(offer)

    ack = await incoming.next_request("ACK")
    assert ack.body == caller.sdp()
    assert [request.method for request in incoming.received] == ["INVITE", "ACK"]
    assert (await outgoing.bye()).status == 200
    await incoming.next_request("BYE")

# ---------------------------------------------------- forks, early media


@pytest_twisted.ensureDeferred
async def test_both_phones_of_a_user_ring_and_the_other_is_cancelled(
        pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    caller = await pbx.softphone("1001")
    desk = await pbx.softphone("1002", behaviour=ring_then_answer(0.2))
    mobile = await pbx.softphone("1002", behaviour=ring_forever)

    outgoing = await caller.call("1002")
    answered, cancelled = await desk.next_call(), await mobile.next_call()
    assert answered.call_id != cancelled.call_id
    assert (await outgoing.final_response()).body == desk.sdp()
    await cancelled.next_request("CANCEL")
    assert cancelled.invite_final == 487
    await answered.next_request("ACK")

    assert (await answered.bye()).status == 200
    await outgoing.next_request("BYE")
    row, = await pbx.cdrs_when(1)
    assert (row["answered_by"], row["hangup_by"], row["targets"]) == (
        "1002", "callee", '["1002", "1002"]')


@pytest_twisted.ensureDeferred
async def test_a_late_answer_from_the_cancelled_phone_is_acked_and_hung_up(
        pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    caller = await pbx.softphone("1001")
    desk = await pbx.softphone("1002", behaviour=ring_then_answer(0.2))
    mobile = await pbx.softphone("1002", behaviour=answer_even_if_cancelled)

    outgoing = await caller.call("1002")
    answered, late = await desk.next_call(), await mobile.next_call()
    assert (await outgoing.final_response()).body == desk.sdp()
    await late.next_request("CANCEL")
    assert late.invite_final == 200  # picked up as the CANCEL crossed
    ack = await late.next_request("ACK")
    assert ack.to_tag == late.local_tag
    bye = await late.next_request("BYE")
    assert bye.call_id == late.call_id

    # The call itself goes on with the desk phone.
    await answered.next_request("ACK")
    assert answered.received[-1].method == "ACK"
    assert (await outgoing.bye()).status == 200
    await answered.next_request("BYE")


@pytest_twisted.ensureDeferred
async def test_early_media_reaches_the_caller(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    caller = await pbx.softphone("1001")
    callee = await pbx.softphone("1002", behaviour=early_media)

    outgoing = await caller.call("1002")
    incoming = await callee.next_call()
    while (progress := await outgoing.next_response()).status == 100:
        pass
    assert progress.status == 183
    assert progress.body == callee.sdp()
    assert progress.get("content-type") == "application/sdp"

    incoming.answer()
    answer = await outgoing.final_response()
    assert answer.status == 200 and answer.to_tag == progress.to_tag
    await incoming.next_request("ACK")


# -------------------------------------------------- requests in the call


@pytest.mark.parametrize("side", ["callee", "caller"])
@pytest_twisted.ensureDeferred
async def test_hold_and_resume(pbx_factory: Any, side: str) -> None:
    pbx = await pbx_factory()
    caller = await pbx.softphone("1001")
    callee = await pbx.softphone("1002")
    outgoing, incoming = await connected(caller, callee)
    holder, held = (incoming, outgoing) if side == "callee" else (outgoing, incoming)

    cseqs: list[int] = []
    for direction, answered in (("sendonly", "recvonly"), ("sendrecv", "sendrecv")):
        holder.request("INVITE", body=holder.sdp(direction, version=len(cseqs) + 2))
        reinvite = await held.next_request("INVITE")
        # In the other phone's own dialog: its Call-ID and tags, the PBX's CSeq going up.
        assert reinvite.call_id == held.call_id
        assert reinvite.to_tag == held.local_tag
        assert reinvite.from_tag == held.remote_tag
        assert direction_of(reinvite.body) == direction
        cseqs.append(reinvite.cseq[0])
        reply = await holder.final_response()
        assert reply.status == 200
        assert direction_of(reply.body) == answered  # the other phone's answer, relayed
        assert reply.body == held.sdp(answered, 2)
        assert reply.contact_uri  # a 2xx to an INVITE names its Contact (§12.1.1)
        await held.next_request("ACK")  # the PBX ACKs the answer it relays
    assert cseqs[0] < cseqs[1]
    # The call is still up: hang up from the caller.
    assert (await outgoing.bye()).status == 200
    await incoming.next_request("BYE")


@pytest_twisted.ensureDeferred
async def test_second_reinvite_while_one_is_pending_is_491(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    caller = await pbx.softphone("1001")
    callee = await pbx.softphone("1002")
    outgoing, incoming = await connected(caller, callee)
    outgoing.answers["INVITE"] = None  # the caller's user takes their time

    first = incoming.request("INVITE", body=callee.sdp("sendonly", 2))
    held = await outgoing.next_request("INVITE")
    second = incoming.request("INVITE", body=callee.sdp("inactive", 3))
    glare = await incoming.final_response()
    assert (glare.status, glare.cseq) == (491, (second, "INVITE"))

    outgoing.respond(held, 200, body=caller.sdp("recvonly", 2))
    reply = await incoming.final_response()
    assert (reply.status, reply.cseq) == (200, (first, "INVITE"))
    assert direction_of(reply.body) == "recvonly"


@pytest_twisted.ensureDeferred
async def test_info_is_relayed_both_ways(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    caller = await pbx.softphone("1001")
    callee = await pbx.softphone("1002")
    outgoing, incoming = await connected(caller, callee)
    dtmf = b"Signal=5\r\nDuration=160\r\n"

    outgoing.request("INFO", body=dtmf, content_type="application/dtmf-relay")
    info = await incoming.next_request("INFO")
    assert info.body == dtmf
    assert info.get("content-type") == "application/dtmf-relay"
    assert info.call_id == incoming.call_id
    assert (await outgoing.final_response()).status == 200

    incoming.request("INFO", body=dtmf, content_type="application/dtmf-relay")
    assert (await outgoing.next_request("INFO")).body == dtmf
    assert (await incoming.final_response()).status == 200


@pytest.mark.parametrize("answer", [481, None], ids=["481", "no-answer"])
@pytest_twisted.ensureDeferred
async def test_a_request_the_callee_has_lost_ends_the_call(
        pbx_factory: Any, answer: int | None) -> None:
    pbx = await pbx_factory({"sip": {"t1_ms": 50}} if answer is None else {})
    caller = await pbx.softphone("1001")
    callee = await pbx.softphone("1002")
    outgoing, incoming = await connected(caller, callee)
    incoming.answers["INFO"] = answer

    outgoing.request("INFO", body=b"Signal=1\r\n", content_type="application/dtmf-relay")
    await incoming.next_request("INFO")
    reply = await outgoing.final_response(timeout=5)
    assert reply.status == (481 if answer else 408)
    await outgoing.next_request("BYE")

    row, = await pbx.cdrs_when(1)
    assert (row["hangup_by"], row["status"]) == ("pbx", 200)


# ------------------------------------------------------------ the caller


@pytest_twisted.ensureDeferred
async def test_answer_is_retransmitted_until_acked_then_the_call_ends(
        pbx_factory: Any) -> None:
    pbx = await pbx_factory({"sip": {"t1_ms": 50, "t2_ms": 400}})
    caller = await pbx.softphone("1001")
    callee = await pbx.softphone("1002", behaviour=ring_then_answer(0))

    outgoing = await caller.call("1002")
    outgoing.auto_ack = False  # the caller's ACKs get lost
    incoming = await callee.next_call()
    bye = await incoming.next_request("BYE", timeout=5)  # after 64*T1 = 3.2 s
    answers = [reply for reply in outgoing.responses.pending if reply.status == 200]
    assert len(answers) >= 5
    assert {reply.raw for reply in answers} == {answers[0].raw}  # the same 200, again
    assert bye.call_id == incoming.call_id
    await outgoing.next_request("BYE")

    row, = await pbx.cdrs_when(1)
    assert (row["hangup_by"], row["answered_by"]) == ("pbx", "1002")
    assert row["reason"] == "No ACK from the caller"


# ------------------------------------------------------------ dialplans


@pytest_twisted.ensureDeferred
async def test_a_dialplan_that_raises_fails_the_call_and_the_pbx_carries_on(
        pbx_factory: Any, tmp_path: Path, log_events: EventLoggingObserver) -> None:
    plan = dialplan(tmp_path, """
if call.dialed == "13":
    raise LookupError("no such floor")
await call.dial(call.dialed)
""")
    pbx = await pbx_factory({"dialplan": {"module": str(plan)}})
    caller = await pbx.softphone("1001")
    await pbx.softphone("1002")

    unlucky = await caller.call("13")
    assert (await unlucky.final_response()).status == 500
    failures = [event for event in log_events if "log_failure" in event]
    assert len(failures) == 1
    assert failures[0]["call_id"] == unlucky.call_id
    assert unlucky.call_id in formatEvent(failures[0])
    assert isinstance(failures[0]["log_failure"].value, LookupError)
    assert "no such floor" in failures[0]["log_failure"].getTraceback()

    fine = await caller.call("1002")
    assert (await fine.final_response()).status == 200
    assert (await fine.bye()).status == 200
    rows = await pbx.cdrs_when(2)
    assert [(row["dialed"], row["status"]) for row in rows] == [("13", 500), ("1002", 200)]


@pytest_twisted.ensureDeferred
async def test_stopping_the_pbx_hangs_up_its_calls(pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    caller = await pbx.softphone("1001")
    callee = await pbx.softphone("1002")
    ringing = await pbx.softphone("1003", behaviour=ring_forever)
    outgoing, incoming = await connected(caller, callee)
    unanswered = await caller.call("1003")
    waiting = await ringing.next_call()
    while (await unanswered.next_response()).status != 180:
        pass  # the PBX may CANCEL only once the phone has answered something (§9.1)

    pbx.running = False
    await pbx.service.stopService()

    await outgoing.next_request("BYE")
    await incoming.next_request("BYE")
    await waiting.next_request("CANCEL")
    assert (await unanswered.final_response()).status == 480
    rows = {row["dialed"]: row for row in pbx.cdrs()}  # written by the last flush
    assert (rows["1002"]["hangup_by"], rows["1003"]["hangup_by"]) == ("pbx", "pbx")
