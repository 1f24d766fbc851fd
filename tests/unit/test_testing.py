"""pbx.testing plays a dialplan on the PBX's own call logic, not on a copy of its rules.

What a dialplan author would notice: the result each dial returns, the
final status the caller's phone gets, which phones were rung, what the
INVITEs they got carried, and how long the PBX's clock ran. Each test here
is a case where a scripted double of the PBX would have to re-implement a
rule of the core (§16.7 ranking, who is registered, the dial timer, where
a SIP URI goes) and could get it wrong; tests/service/test_testing_agrees.py
checks the same dialplan on a live PBX over real sockets.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred

from pbx.dialplan import (
    Answered,
    Busy,
    Call,
    Declined,
    DialResult,
    Failed,
    Handler,
    NoAnswer,
    Unavailable,
)
from pbx.testing import FakeCall, FakeUsers, Rings, run

OFFICE = ["1001", "1002", "1003"]


def ring_group(results: list[DialResult], *targets: str, timeout_s: float = 20) -> Handler:
    """A dialplan that rings `targets` at once and keeps what the dial returned."""

    async def handler(call: Call) -> None:
        results.append(await call.dial(*targets, timeout_s=timeout_s))

    return handler


def test_busy_and_not_registered_is_busy_as_in_the_pbx() -> None:
    # Issue 21's example: only 1002's phone rings; 1003 has none.
    results: list[DialResult] = []
    call = FakeCall(dialed="600", caller="1001", users=OFFICE, answers={"1002": Busy()})
    run(ring_group(results, "1002", "1003"), call)
    assert results == [Busy(486)]
    assert call.final_status == 486
    assert call.rang == {"1002": ["sip:1002@127.0.0.1:5100;transport=udp"]}


def test_an_extension_listed_as_unregistered_has_no_phone_even_if_scripted() -> None:
    results: list[DialResult] = []
    call = FakeCall(dialed="1002", caller="1001",
                    users=FakeUsers(OFFICE, unregistered=["1002"]),
                    answers={"1002": Answered("1002")})
    run(ring_group(results, "1002"), call)
    assert results == [Unavailable(480)]
    assert call.final_status == 480
    assert call.rang == {}


def test_the_handler_sees_who_is_registered_as_the_pbx_does() -> None:
    seen: list[bool] = []

    async def handler(call: Call) -> None:
        seen.extend(call.users.is_registered(user) for user in OFFICE)
        await call.reject(480)

    run(handler, FakeCall(dialed="1002", caller="1003", users=OFFICE,
                          answers={"1001": Busy()}))
    assert seen == [True, False, False]  # 1002 and 1003: users with no phone


def test_a_ring_group_waits_for_the_one_still_ringing_until_the_dial_timeout() -> None:
    results: list[DialResult] = []
    call = FakeCall(dialed="600", caller="1001", users=OFFICE,
                    answers={"1002": Busy(), "1003": NoAnswer()})
    run(ring_group(results, "1002", "1003", timeout_s=7.5), call)
    assert results == [NoAnswer()]
    assert call.final_status == 408
    assert call.elapsed_s == 7.5  # the PBX's dial timer, on its own clock


@pytest.mark.parametrize(("timeout_s", "result", "status", "elapsed_s"), [
    (20, NoAnswer(), 408, 20),  # the PBX cancels it first
    (30, Answered("1002"), 200, 25),
])
def test_a_phone_picking_up_late_is_too_late_for_a_short_dial(
        timeout_s: float, result: DialResult, status: int, elapsed_s: float) -> None:
    results: list[DialResult] = []
    call = FakeCall(dialed="1002", caller="1001", users=OFFICE,
                    answers={"1002": Rings(25, Answered("1002"))})
    run(ring_group(results, "1002", timeout_s=timeout_s), call)
    assert results == [result]
    assert (call.final_status, call.elapsed_s) == (status, elapsed_s)


def test_a_phone_turning_busy_after_ringing_ends_a_hunt_step_early() -> None:
    async def hunt(call: Call) -> None:
        await call.dial("1002", "1003", timeout_s=10, sequential=True)

    call = FakeCall(dialed="601", caller="1001", users=OFFICE,
                    answers={"1002": Rings(3, Busy()), "1003": Answered("1003")})
    run(hunt, call)
    assert [attempt.result for attempt in call.attempts] == [Busy(486), Answered("1003")]
    assert (call.connected_to, call.elapsed_s) == ("1003", 3)


def test_a_sip_uri_nobody_answers_at_rings_until_the_timeout() -> None:
    results: list[DialResult] = []
    call = FakeCall(dialed="9", caller="1001")
    run(ring_group(results, "sip:2000@192.0.2.7", timeout_s=5), call)
    assert results == [NoAnswer()]
    assert call.final_status == 408
    assert call.elapsed_s == 5


def test_a_sip_uri_can_be_scripted_like_an_extension() -> None:
    results: list[DialResult] = []
    call = FakeCall(dialed="9", caller="1001",
                    answers={"sip:2000@192.0.2.7": Answered("sip:2000@192.0.2.7")})
    run(ring_group(results, "sip:2000@192.0.2.7"), call)
    assert results == [Answered("sip:2000@192.0.2.7")]
    assert call.connected_to == "sip:2000@192.0.2.7"
    assert call.rang == {"sip:2000@192.0.2.7": ["sip:2000@192.0.2.7"]}


def test_the_first_phone_to_answer_wins_and_the_other_is_cancelled() -> None:
    results: list[DialResult] = []
    call = FakeCall(dialed="600", caller="1001", users=OFFICE,
                    answers={"1002": NoAnswer(), "1003": Answered("1003")})
    run(ring_group(results, "1002", "1003"), call)
    assert results == [Answered("1003")]
    assert (call.final_status, call.connected_to) == (200, "1003")
    assert call.requests_to("1002") == ["INVITE", "CANCEL", "ACK"]  # the ACK of its 487
    assert call.requests_to("1003") == ["INVITE", "ACK"]


def test_a_decline_outranks_busy_and_503_is_told_as_500() -> None:
    declined: list[DialResult] = []
    call = FakeCall(dialed="600", caller="1001", users=OFFICE,
                    answers={"1002": Busy(), "1003": Declined()})
    run(ring_group(declined, "1002", "1003"), call)
    assert (declined, call.final_status) == ([Declined(603)], 603)

    overloaded: list[DialResult] = []
    call = FakeCall(dialed="1002", caller="1001", users=OFFICE,
                    answers={"1002": Failed(503, "Overloaded")})
    run(ring_group(overloaded, "1002"), call)
    assert (overloaded, call.final_status) == ([Failed(503, "Overloaded")], 500)


def test_headers_are_the_invites_as_the_pbx_received_them() -> None:
    seen: list[str] = []

    async def handler(call: Call) -> None:
        seen.extend([call.headers["Subject"], call.headers["subject"], call.headers["f"]])
        await call.reject(486)

    run(handler, FakeCall(dialed="1002", caller="1003", headers={"Subject": "lunch?"}))
    assert seen[:2] == ["lunch?", "lunch?"]
    assert "<sip:1003@pbx.test>" in seen[2]


def test_outgoing_headers_reach_the_phones_rung() -> None:
    async def handler(call: Call) -> None:
        call.outgoing_headers["Alert-Info"] = "<http://pbx.test/ring2>"
        await call.dial("1002")

    call = FakeCall(dialed="1002", caller="1003", users=OFFICE,
                    answers={"1002": Answered("1002")})
    run(handler, call)
    [invite] = call.invites_to("1002")
    assert invite["alert-info"] == "<http://pbx.test/ring2>"
    assert '<sip:1003@pbx.test>' in invite["from"]


def test_the_caller_hanging_up_ends_the_dial_with_487() -> None:
    after: list[str] = []

    async def handler(call: Call) -> None:
        await call.dial("1002")
        after.append("dialplan went on")

    call = FakeCall(dialed="1002", caller="1003", users=OFFICE, caller_hangs_up_on="1002")
    run(handler, call)
    assert after == []  # the await raised CallEnded
    assert call.hung_up and call.final_status == 487
    assert call.requests_to("1002") == ["INVITE", "CANCEL", "ACK"]  # the ACK of its 487


def test_an_exception_in_the_handler_is_raised_and_the_caller_got_500() -> None:
    async def handler(call: Call) -> None:
        raise LookupError("no such route table")

    call = FakeCall(dialed="1002", caller="1003")
    with pytest.raises(LookupError, match="no such route table"):
        run(handler, call)
    assert call.final_status == 500


def test_a_handler_waiting_for_something_else_is_reported() -> None:
    async def handler(call: Call) -> None:
        await Deferred()  # never fires

    with pytest.raises(RuntimeError, match="did not finish"):
        run(handler, FakeCall(dialed="1002", caller="1003"), limit_s=60)


def test_running_a_call_again_starts_over() -> None:
    call = FakeCall(dialed="1002", caller="1003", users=OFFICE, answers={"1002": Busy()})
    handler = ring_group([], "1002")
    run(handler, call)
    run(handler, call)
    assert call.dialed_targets == [("1002",)]
    assert call.final_status == 486


def test_a_fake_call_does_nothing_outside_run() -> None:
    call = FakeCall(dialed="1002", caller="1003")
    with pytest.raises(RuntimeError, match="run"):
        call.final_status  # noqa: B018


def test_the_callee_is_shown_the_configured_name_of_the_caller() -> None:
    call = FakeCall(dialed="1002", caller="1001", caller_name="desk phone",
                    users=FakeUsers(OFFICE, names={"1001": "Alice Reception"}),
                    answers={"1002": Answered("1002")})
    run(ring_group([], "1002"), call)
    [invite] = call.invites_to("1002")
    assert invite["from"].startswith('"Alice Reception" <sip:1001@pbx.test>')
    assert call.caller.display_name == "Alice Reception"


def test_the_callers_own_phone_is_never_rung() -> None:
    call = FakeCall(dialed="600", caller="1002", users=OFFICE,
                    answers={"1002": Answered("1002"), "1003": Busy()})
    run(ring_group([], "1002", "1003"), call)
    assert call.requests_to("1002") == []
    assert call.dialed_targets == [("1003",)]
    assert call.final_status == 486
