"""One dialplan, two PBXs: pbx.testing's in memory, and a live one over real sockets.

The same dialplan file is run through `pbx.testing` (scripted phones) and
through a started PBX whose phones are `Softphone`s on 127.0.0.1; what the
dialplan noted (who is registered, what each dial returned) and the final
status the caller's phone received must be the same. The dialplan rings
two targets at once and, when neither answers, forwards to 1001
(reception): the cases of issue 21 (a busy phone and an extension with no
phone registered), their neighbours, and a SIP URI where nothing answers.
A copy of the PBX's rules (pbx.testing before issue 21) got four of the
six wrong: who is registered, the answering target, the dead trunk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.protocol import DatagramProtocol

from pbx.dialplan import Answered, Busy, Declined, DialResult, NoAnswer
from pbx.testing import FakeCall, load_dialplan, run
from tests.service.conftest import PASSWORDS
from tests.service.sipclient import (
    Behaviour,
    PhoneCall,
    busy,
    ring_forever,
    ring_then_answer,
)

RING_S = 0.5
"""The dialplan's dial timeout: real seconds on the live PBX, none in pbx.testing."""
DIALPLAN = """\
from pathlib import Path

from pbx.dialplan import Answered, Call

NOTES = Path(__file__).with_suffix(".results")


def note(result: object) -> None:
    with NOTES.open("a") as notes:
        notes.write(repr(result) + "\\n")


async def handle_call(call: Call) -> None:
    note(tuple(call.users.is_registered(user) for user in ("1001", "1002", "1003")))
    result = await call.dial(*{targets!r}, timeout_s={ring_s})
    note(result)
    if not isinstance(result, Answered):
        note(await call.forward("1001", timeout_s={ring_s}))
"""
TRUNK = "sip:2000@127.0.0.1:{port}"
"""A SIP URI the dialplan rings where nothing ever answers (a dead trunk)."""


async def declines(call: PhoneCall) -> None:
    call.respond(call.invite, 603)


PHONES: dict[str, tuple[DialResult, Behaviour]] = {
    "busy": (Busy(), busy),
    "declines": (Declined(), declines),
    "rings": (NoAnswer(), ring_forever),
    "answers": (Answered("-"), ring_then_answer(0.01)),
}
"""What a phone does: as pbx.testing scripts it, and as a live softphone behaves."""

SCENARIOS: dict[str, tuple[dict[str, str], tuple[str, ...], list[str], int]] = {
    # name: (the phones registered and what they do; what the dialplan rings at once;
    #        the dialplan's notes; the status the caller's phone gets)
    "busy, unregistered": (
        {"1002": "busy"}, ("1002", "1003"),
        ["(False, True, False)", "Busy(status=486)", "Unavailable(status=480)"], 486),
    "unregistered, no answer": (  # §16.7 over the call: 480 outranks the dial's 408
        {"1003": "rings"}, ("1002", "1003"),
        ["(False, False, True)", "NoAnswer()", "Unavailable(status=480)"], 480),
    "declines, busy": (
        {"1002": "declines", "1003": "busy", "1001": "busy"}, ("1002", "1003"),
        ["(True, True, True)", "Declined(status=603)", "Busy(status=486)"], 603),
    "busy, then reception answers": (
        {"1002": "busy", "1001": "answers"}, ("1002", "1003"),
        ["(True, True, False)", "Busy(status=486)", "Answered(target='1001')"], 200),
    "no answer, then reception busy": (
        {"1002": "rings", "1003": "busy", "1001": "busy"}, ("1002", "1003"),
        ["(True, True, True)", "NoAnswer()", "Busy(status=486)"], 486),
    "busy, and a trunk that never answers": (
        {"1002": "busy", "1001": "busy"}, ("1002", TRUNK),
        ["(True, True, False)", "NoAnswer()", "Busy(status=486)"], 486),
}


def notes_of(plan: Path) -> list[str]:
    notes = plan.with_suffix(".results")
    lines = notes.read_text().splitlines()
    notes.unlink()
    return lines


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest_twisted.ensureDeferred
async def test_the_same_dialplan_gives_the_same_results_in_pbx_testing_and_in_the_pbx(
        scenario: str, pbx_factory: Any, reactor: Any, tmp_path: Path) -> None:
    phones, targets, expected_notes, expected_status = SCENARIOS[scenario]
    trunk = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")  # never answers
    ringing = tuple(target.format(port=trunk.getHost().port) for target in targets)
    plan = tmp_path / "ring_group.py"
    plan.write_text(DIALPLAN.format(targets=ringing, ring_s=RING_S))
    try:
        in_memory, live = await both_ways(plan, phones, pbx_factory)
    finally:
        await trunk.stopListening()
    assert in_memory == live
    assert live == (expected_notes, expected_status)


async def both_ways(plan: Path, phones: dict[str, str],
                    pbx_factory: Any) -> tuple[tuple[list[str], int], tuple[list[str], int]]:
    """The dialplan's notes and the caller's final status: in pbx.testing, then live."""
    # In memory, with pbx.testing.
    call = FakeCall(dialed="600", caller="1004", users=["1001", "1002", "1003", "1004"],
                    answers={user: PHONES[kind][0] for user, kind in phones.items()})
    run(load_dialplan(plan), call)
    in_memory = (notes_of(plan), call.final_status)

    # Live, over UDP on 127.0.0.1.
    pbx = await pbx_factory({"dialplan": {"module": str(plan)},
                             "users": {"1004": {"password": PASSWORDS["1004"]}}})
    for user, kind in phones.items():
        await pbx.softphone(user, behaviour=PHONES[kind][1])
    caller = await pbx.softphone("1004", register=False)
    outgoing = await caller.call("600")
    final = await outgoing.final_response()
    if final.status == 200:
        assert (await outgoing.bye()).status == 200
    return in_memory, (notes_of(plan), final.status)
