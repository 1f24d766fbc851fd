"""A third-party registration (RFC 3261 §10.2) through the real PBX, with SIPp on both ends.

A helper SIPp registers 1002 from one port, with digest authentication,
naming in its Contact another port of the same host where a SIPp answering
machine (uas_answer.xml) waits; the helper then exits. A SIPp caller makes
calls to 1002 through the PBX. Every INVITE must reach the answering
machine, not the socket the REGISTER came from, which is closed by then:
sent there, no call would ever be answered.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.interop.conftest import (
    USERS,
    BackgroundSipp,
    Pbx,
    free_port,
    requires_sipp,
    run_sipp,
    wait_for,
)

pytestmark = [pytest.mark.interop, requires_sipp]

CALLS = 50
RATE = 10  # calls per second
HOLD_MS = 500  # how long each call stays up (SIPp -d)


def test_calls_to_a_contact_registered_from_another_socket_reach_it(
    make_pbx: Callable[..., Pbx], start_sipp: Callable[..., BackgroundSipp], tmp_path: Path,
) -> None:
    pbx = make_pbx(debug=True)  # every SIP message in pbx.log, for the failure message
    answering_port = free_port(avoid=(pbx.sip_port, pbx.tls_port))
    registering_port = free_port(avoid=(pbx.sip_port, pbx.tls_port, answering_port))
    registered = run_sipp(tmp_path / "register", "register_third_party.xml", pbx.sip_port,
                          users=[("1002", USERS["1002"], str(answering_port))],
                          local_port=registering_port)
    assert registered.returncode == 0, registered.output + registered.errors
    assert f"Contact: <sip:1002@127.0.0.1:{answering_port};" in registered.messages

    answering = start_sipp(tmp_path / "answering", "uas_answer.xml", answering_port, CALLS,
                           timeout_s=40)
    caller = run_sipp(
        tmp_path / "caller", "uac_call_auth.xml", pbx.sip_port,
        users=[("1001", USERS["1001"], "1002")], calls=CALLS,
        extra=["-r", str(RATE), "-d", str(HOLD_MS)], timeout_s=30)
    answered = answering.finish()

    counts = caller.counts()
    report = f"{caller.output}\n{caller.errors}\nanswering:\n{answered.output}\n{answered.errors}"
    assert caller.returncode == 0, report
    assert (counts["SuccessfulCall"], counts["FailedCall"]) == (CALLS, 0), report
    assert (answered.counts()["SuccessfulCall"], answered.counts()["FailedCall"]) == (
        CALLS, 0), report
    # Nothing went to the socket the REGISTER came from.
    assert f"Sent to udp:127.0.0.1:{registering_port}:\n\tINVITE" not in pbx.log()

    def all_recorded() -> list[dict[str, object]] | None:
        rows = pbx.cdrs()
        return rows if len(rows) >= CALLS else None

    rows = wait_for(all_recorded, 5.0, f"{CALLS} call detail records")
    assert isinstance(rows, list)
    assert {(r["answered_by"], r["status"]) for r in rows} == {("1002", 200)}
