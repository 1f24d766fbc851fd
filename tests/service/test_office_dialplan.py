"""The shipped dialplans/office.py on a live PBX, as the office's phones see it.

The PBX is configured with the repository's own file (not a copy made for
the test), and every phone is a `Softphone` on a real socket: the ring
group (600) rings everyone at once, the hunt (601) one after another, a
busy extension goes to reception, and the caller hears what happened.
Reception is 1001, sales 1002 and 1003, support 1003 then 1002.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted

from tests.service.conftest import RunningPbx
from tests.service.sipclient import PhoneCall, Softphone, busy, ring_forever

OFFICE = Path(__file__).parents[2] / "dialplans" / "office.py"


async def office(pbx_factory: Any) -> RunningPbx:
    pbx: RunningPbx = await pbx_factory({"dialplan": {"module": str(OFFICE)}})
    return pbx


async def declines(call: PhoneCall) -> None:
    call.respond(call.invite, 603)


def nobody_called(phone: Softphone) -> bool:
    """The phone has not been sent a single INVITE."""
    return not phone.incoming.pending and not any(
        call.invite is not None for call in phone.calls.values())


# ------------------------------------------- the caller is never called back


@pytest_twisted.ensureDeferred
async def test_reception_calling_a_busy_extension_hears_busy_and_is_not_rung(
        pbx_factory: Any) -> None:
    pbx = await office(pbx_factory)
    reception = await pbx.softphone("1001")
    await pbx.softphone("1003", behaviour=busy)

    outgoing = await reception.call("1003")
    # At once: not after 20 s of the reception's own phone ringing (then 408).
    assert (await outgoing.final_response()).status == 486
    assert nobody_called(reception)

    row, = await pbx.cdrs_when(1)
    assert (row["status"], row["targets"], row["hangup_by"]) == (486, '["1003"]', "callee")


@pytest_twisted.ensureDeferred
async def test_reception_calling_an_extension_that_declines_hears_603(
        pbx_factory: Any) -> None:
    pbx = await office(pbx_factory)
    reception = await pbx.softphone("1001")
    await pbx.softphone("1003", behaviour=declines)

    outgoing = await reception.call("1003")
    assert (await outgoing.final_response()).status == 603
    assert nobody_called(reception)


@pytest_twisted.ensureDeferred
async def test_reception_calling_a_busy_sales_group_hears_busy_and_is_not_rung(
        pbx_factory: Any) -> None:
    pbx = await office(pbx_factory)
    reception = await pbx.softphone("1001")
    await pbx.softphone("1002", behaviour=busy)
    await pbx.softphone("1003", behaviour=busy)

    outgoing = await reception.call("600")
    assert (await outgoing.final_response()).status == 486
    assert nobody_called(reception)
    row, = await pbx.cdrs_when(1)
    assert (row["status"], row["targets"]) == (486, '["1002", "1003"]')


@pytest_twisted.ensureDeferred
async def test_a_busy_extension_forwards_to_reception_when_someone_else_calls(
        pbx_factory: Any) -> None:
    pbx = await office(pbx_factory)
    reception = await pbx.softphone("1001", behaviour=ring_forever)
    caller = await pbx.softphone("1002")
    await pbx.softphone("1003", behaviour=busy)

    outgoing = await caller.call("1003")
    forwarded = await reception.next_call()
    assert forwarded.invite is not None
    assert "<sip:1002@pbx.test>" in (forwarded.invite.get("from") or "")
    forwarded.answer()
    answer = await outgoing.final_response()
    assert answer.status == 200 and answer.body == reception.sdp()
    await forwarded.next_request("ACK")
    assert (await outgoing.bye()).status == 200
    await forwarded.next_request("BYE")

    row, = await pbx.cdrs_when(1)
    assert (row["answered_by"], row["targets"]) == ("1001", '["1003", "1001"]')


@pytest_twisted.ensureDeferred
async def test_a_busy_extension_stays_busy_when_reception_does_not_take_the_call(
        pbx_factory: Any) -> None:
    async def do_not_disturb(call: PhoneCall) -> None:
        call.respond(call.invite, 480)

    pbx = await office(pbx_factory)
    await pbx.softphone("1001", behaviour=do_not_disturb)
    caller = await pbx.softphone("1002")
    await pbx.softphone("1003", behaviour=busy)

    outgoing = await caller.call("1003")
    # The best of both (RFC 3261 §16.7): busy, not reception's 480.
    assert (await outgoing.final_response()).status == 486
    row, = await pbx.cdrs_when(1)
    assert (row["status"], row["targets"], row["hangup_by"]) == (
        486, '["1003", "1001"]', "callee")


@pytest_twisted.ensureDeferred
async def test_calling_ones_own_extension_rings_none_of_ones_phones(pbx_factory: Any) -> None:
    pbx = await office(pbx_factory)
    desk = await pbx.softphone("1002")
    mobile = await pbx.softphone("1002")
    await pbx.softphone("1001")

    outgoing = await desk.call("1002")
    assert (await outgoing.final_response()).status == 480
    assert nobody_called(desk) and nobody_called(mobile)
    row, = await pbx.cdrs_when(1)
    assert (row["status"], row["targets"]) == (480, "[]")  # nor is reception rung


# ------------------------------------------------------ groups and numbers


@pytest_twisted.ensureDeferred
async def test_sales_rings_both_at_once_and_the_other_is_cancelled(pbx_factory: Any) -> None:
    pbx = await office(pbx_factory)
    caller = await pbx.softphone("1001")
    bob = await pbx.softphone("1002", behaviour=ring_forever)
    carol = await pbx.softphone("1003", behaviour=ring_forever)

    outgoing = await caller.call("600")
    # Both ring before either has answered: all at once.
    rung_bob, rung_carol = await bob.next_call(), await carol.next_call()
    rung_carol.answer()
    answer = await outgoing.final_response()
    assert answer.status == 200 and answer.body == carol.sdp()
    await rung_carol.next_request("ACK")
    await rung_bob.next_request("CANCEL")
    assert rung_bob.invite_final == 487
    assert (await outgoing.bye()).status == 200
    await rung_carol.next_request("BYE")

    row, = await pbx.cdrs_when(1)
    assert (row["dialed"], row["answered_by"], row["targets"]) == (
        "600", "1003", '["1002", "1003"]')


@pytest_twisted.ensureDeferred
async def test_support_rings_1003_first_then_1002(pbx_factory: Any) -> None:
    pbx = await office(pbx_factory)
    caller = await pbx.softphone("1001")
    bob = await pbx.softphone("1002", behaviour=ring_forever)
    carol = await pbx.softphone("1003", behaviour=ring_forever)

    outgoing = await caller.call("601")
    first = await carol.next_call()
    assert nobody_called(bob)  # one after another: 1002 waits its turn
    # Carol's phone gives up on the call (as it would after the dialplan's
    # 10 s of ringing, without the test waiting for them): the hunt moves on.
    first.respond(first.invite, 480)
    second = await bob.next_call()
    second.answer()
    answer = await outgoing.final_response()
    assert answer.status == 200 and answer.body == bob.sdp()
    await second.next_request("ACK")
    assert (await outgoing.bye()).status == 200
    await second.next_request("BYE")

    row, = await pbx.cdrs_when(1)
    assert (row["answered_by"], row["targets"]) == ("1002", '["1003", "1002"]')


@pytest_twisted.ensureDeferred
async def test_the_refused_number_is_603_and_an_unknown_extension_404(
        pbx_factory: Any) -> None:
    pbx = await office(pbx_factory)
    caller = await pbx.softphone("1001")

    refused = await caller.call("666")
    declined = await refused.final_response()
    assert (declined.status, declined.reason) == (603, "This number is not in service")
    unknown = await caller.call("1099")
    missing = await unknown.final_response()
    assert (missing.status, missing.reason) == (404, "No such extension")

    rows = await pbx.cdrs_when(2)
    assert [(row["dialed"], row["status"], row["targets"]) for row in rows] == [
        ("666", 603, "[]"), ("1099", 404, "[]")]
