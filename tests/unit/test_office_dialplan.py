"""Tests of dialplans/office.py with pbx.testing: how a dialplan author tests routes.

No network, no reactor: `FakeCall` scripts what each phone does and
records what the dialplan did; `run` drives the real handler.
"""

from __future__ import annotations

import pytest

from pbx.dialplan import Answered, Busy, Declined, NoAnswer, Unavailable
from pbx.testing import FakeCall, load_dialplan, run

USERS = ["1001", "1002", "1003"]
# Relative to where pytest runs, else to this file's folder and its parents:
# the repository's file whether pytest runs from the repository or from tests/.
handler = load_dialplan("dialplans/office.py")


def test_an_extension_that_answers_is_connected() -> None:
    call = FakeCall(dialed="1002", caller="1003", users=USERS,
                    answers={"1002": Answered("1002")})
    run(handler, call)
    assert call.dialed_targets == [("1002",)]
    assert call.attempts[0].timeout_s == 20
    assert call.connected_to == "1002"
    assert call.final_status == 200


@pytest.mark.parametrize("outcome", [Busy(), NoAnswer()])
def test_busy_or_unanswered_extension_forwards_to_reception(outcome: object) -> None:
    call = FakeCall(dialed="1002", caller="1003", users=USERS,
                    answers={"1002": outcome, "1001": Answered("1001")})  # type: ignore[dict-item]
    run(handler, call)
    assert call.dialed_targets == [("1002",), ("1001",)]
    assert call.connected_to == "1001"


@pytest.mark.parametrize(("outcome", "status"), [(Busy(), 486), (NoAnswer(), 408)])
def test_reception_calling_a_busy_or_unanswered_extension_is_not_rung_and_hears_it(
        outcome: object, status: int) -> None:
    call = FakeCall(dialed="1003", caller="1001", users=USERS,
                    answers={"1003": outcome, "1001": Answered("1001")})  # type: ignore[dict-item]
    run(handler, call)
    assert call.dialed_targets == [("1003",), ()]  # the forward rang nobody
    assert isinstance(call.attempts[1].result, Unavailable)
    assert call.connected_to is None
    assert call.final_status == status


@pytest.mark.parametrize("reception", [NoAnswer(), Unavailable(480)])
def test_busy_callee_then_reception_not_taking_it_is_busy_for_the_caller(
        reception: object) -> None:
    # As on a live PBX (tests/service/test_office_dialplan.py): the best of both.
    call = FakeCall(dialed="1003", caller="1002", users=USERS,
                    answers={"1003": Busy(), "1001": reception})  # type: ignore[dict-item]
    run(handler, call)
    assert call.dialed_targets == [("1003",), ("1001",)]
    assert call.final_status == 486


def test_calling_ones_own_extension_rings_nobody_and_is_480() -> None:
    call = FakeCall(dialed="1002", caller="1002", users=USERS,
                    answers={"1002": Answered("1002"), "1001": Answered("1001")})
    run(handler, call)
    assert call.dialed_targets == [()]  # not forwarded to reception either
    assert call.connected_to is None
    assert call.final_status == 480


def test_busy_reception_is_not_forwarded_to_itself() -> None:
    call = FakeCall(dialed="1001", caller="1002", users=USERS, answers={"1001": Busy()})
    run(handler, call)
    assert call.dialed_targets == [("1001",)]
    assert call.final_status == 486


def test_unregistered_extension_gives_the_caller_480() -> None:
    call = FakeCall(dialed="1003", caller="1002", users=USERS)
    run(handler, call)
    assert call.dialed_targets == [("1003",)]
    assert call.final_status == 480


def test_unknown_extension_is_404_without_ringing_anyone() -> None:
    call = FakeCall(dialed="1099", caller="1002", users=USERS)
    run(handler, call)
    assert call.dialed_targets == []
    assert call.rejected == (404, "No such extension")


def test_sales_rings_everyone_at_once_and_falls_back_to_reception() -> None:
    call = FakeCall(dialed="600", caller="1004", users=[*USERS, "1004"],
                    answers={"1002": NoAnswer(), "1003": Busy(), "1001": Answered("1001")})
    run(handler, call)
    assert call.dialed_targets == [("1002", "1003"), ("1001",)]
    assert call.connected_to == "1001"


def test_sales_called_by_reception_does_not_fall_back_to_the_caller() -> None:
    call = FakeCall(dialed="600", caller="1001", users=USERS,
                    answers={"1002": NoAnswer(), "1003": Busy(), "1001": Answered("1001")})
    run(handler, call)
    assert call.dialed_targets == [("1002", "1003"), ()]
    assert call.connected_to is None
    assert call.final_status == 408  # one rang until the time ran out: no answer


def test_a_member_calling_the_ring_group_rings_only_the_others() -> None:
    call = FakeCall(dialed="600", caller="1002", users=USERS,
                    answers={"1003": Answered("1003")})
    run(handler, call)
    assert call.dialed_targets == [("1003",)]
    assert call.connected_to == "1003"


def test_a_member_calling_the_hunt_is_skipped_in_it() -> None:
    call = FakeCall(dialed="601", caller="1003", users=USERS,
                    answers={"1002": Busy(), "1003": Answered("1003")})
    run(handler, call)
    assert call.dialed_targets == [("1002",)]
    assert call.final_status == 486


def test_support_hunts_one_after_another_until_someone_answers() -> None:
    call = FakeCall(dialed="601", caller="1001", users=USERS,
                    answers={"1003": NoAnswer(), "1002": Answered("1002")})
    run(handler, call)
    assert call.dialed_targets == [("1003",), ("1002",)]
    assert [a.timeout_s for a in call.attempts] == [10, 10]
    assert call.connected_to == "1002"


def test_refused_number_is_declined_with_a_reason() -> None:
    call = FakeCall(dialed="666", caller="1001", users=USERS)
    run(handler, call)
    assert call.rejected == (603, "This number is not in service")
    assert call.final_status == 603


def test_other_numbers_have_no_route() -> None:
    call = FakeCall(dialed="0800123456", caller="1001", users=USERS)
    run(handler, call)
    assert call.final_status == 404


def test_caller_hanging_up_while_ringing_stops_the_dialplan() -> None:
    call = FakeCall(dialed="1002", caller="1003", users=USERS,
                    answers={"1001": Answered("1001")}, caller_hangs_up_on="1002")
    run(handler, call)
    assert call.dialed_targets == [("1002",)]  # no forward to a caller who is gone
    assert call.final_status == 487


def test_declined_call_is_not_forwarded() -> None:
    call = FakeCall(dialed="1002", caller="1003", users=USERS,
                    answers={"1002": Declined()})
    run(handler, call)
    assert call.final_status == 603
    assert isinstance(call.attempts[0].result, Declined)
    assert not isinstance(call.attempts[0].result, Unavailable)
