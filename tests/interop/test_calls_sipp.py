"""Calls from a SIPp caller through the real PBX to a SIPp callee, with and without loss.

The callee (1002) registers from a port with register_auth.xml, then a
second SIPp answers on that same port with uas_answer.xml (180, 200 with
SDP, ACK, BYE). The caller (1001) plays uac_call_auth.xml: INVITE, 407,
ACK, INVITE with an MD5 digest, 200, ACK, a pause, BYE. The PBX offers MD5
first: SIPp answers only the first challenge, and only MD5.

With ``-lost 10`` each SIPp drops one packet in ten, in both directions.
Every call must still complete: the PBX's transactions resend what went
missing (Timer A for its INVITE to the callee, Timer E for its BYE, the
server transactions' answers to the caller's resent requests) and its 2xx
to the caller is resent until the caller's ACK arrives (RFC 3261 §13.3.1.4).
The PBX's debug log shows it resending (`pbx_resends`).

SIPp 3.6.1 itself stumbles over some of those resends, so the scenarios
help it (see their comments): uas_answer.xml expects a resent INVITE, and
uac_call_auth.xml ties the BYE's 200 to the BYE by transaction, so that a
resent 200 for the INVITE is not taken for it. Some runs (one in fifty
once, about one in ten on the slower machine of 2026-12-04) still lose a
call inside SIPp (it stops answering a call whose 180 and ACK were both
dropped); the PBX side of those calls was correct each time it was checked
(its 2xx resent at 0.5, 1, 2, 4, 4 ... s). So the lossy run gets a second
attempt on a fresh PBX (`ATTEMPTS_WITH_LOSS`); a PBX that loses calls
fails both.
"""

from __future__ import annotations

import collections
import re
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

_SENT = re.compile(r"\[pbx\.sip\.wire#debug\] Sent to (\S+):\n((?:\t.*\n)+)")

CALLS = 20
RATE = 5  # calls per second
HOLD_MS = 1000  # how long each call stays up (SIPp -d)


ATTEMPTS_WITH_LOSS = 2
"""Runs of the lossy scenario before it counts as failed.

SIPp 3.6.1 sometimes stops answering a call of its own under loss (see
above; seen in about one run in ten on 2026-12-04): a second run, with a
fresh PBX, tells that apart from a PBX that loses calls, which fails both.
"""


@pytest.mark.parametrize("lost_percent", [0, 10])
def test_calls_complete_and_are_recorded(
    make_pbx: Callable[..., Pbx], start_sipp: Callable[..., BackgroundSipp], tmp_path: Path,
    lost_percent: int,
) -> None:
    attempts = ATTEMPTS_WITH_LOSS if lost_percent else 1
    for attempt in range(1, attempts + 1):
        try:
            work = tmp_path / f"run{attempt}"
            work.mkdir()
            run_calls(make_pbx, start_sipp, work, lost_percent)
            return
        except AssertionError:
            if attempt == attempts:
                raise
            print(f"attempt {attempt} failed (SIPp under loss?); trying once more")


def run_calls(
    make_pbx: Callable[..., Pbx], start_sipp: Callable[..., BackgroundSipp], tmp_path: Path,
    lost_percent: int,
) -> None:
    pbx = make_pbx(debug=True)  # every SIP message in pbx.log, for the failure message
    callee_port = free_port(avoid=(pbx.sip_port, pbx.tls_port))
    registered = run_sipp(tmp_path / "register", "register_auth.xml", pbx.sip_port,
                          users=[("1002", USERS["1002"])], local_port=callee_port)
    assert registered.returncode == 0, registered.output + registered.errors
    loss = ["-lost", str(lost_percent)] if lost_percent else []
    # Lost packets cost up to a few seconds of retransmission each: bound generously.
    timeout_s = 25 if lost_percent else 15
    callee = start_sipp(tmp_path / "callee", "uas_answer.xml", callee_port, CALLS,
                        extra=loss, timeout_s=timeout_s + 10)

    caller = run_sipp(
        tmp_path / "caller", "uac_call_auth.xml", pbx.sip_port,
        users=[("1001", USERS["1001"], "1002")], calls=CALLS,
        extra=["-r", str(RATE), "-d", str(HOLD_MS), *loss], timeout_s=timeout_s)
    answered = callee.finish()

    counts = caller.counts()
    report = f"{caller.output}\n{caller.errors}\ncallee:\n{answered.output}\n{answered.errors}"
    assert caller.returncode == 0, report
    assert (counts["SuccessfulCall"], counts["FailedCall"]) == (CALLS, 0), report
    assert answered.counts()["SuccessfulCall"] == CALLS, report
    assert answered.counts()["FailedCall"] == 0, report
    if lost_percent:  # the loss did happen, and was made good by resending on both sides
        assert counts["Retransmissions"] + answered.counts()["Retransmissions"] > 0, report
        assert pbx_resends(pbx.log()), "the PBX never had to send anything twice"

    def all_recorded() -> list[dict[str, object]] | None:
        rows = pbx.cdrs()
        return rows if len(rows) >= CALLS else None

    rows = wait_for(all_recorded, 5.0, f"{CALLS} call detail records")
    assert isinstance(rows, list)
    assert len(rows) == counts["SuccessfulCall"]
    assert {(r["answered_by"], r["hangup_by"], r["status"]) for r in rows} == {
        ("1002", "caller", 200)}
    # One record per call the caller made, each for one of its Call-IDs.
    assert len({r["call_id"] for r in rows}) == CALLS
    assert all(float(r["duration_s"]) >= HOLD_MS / 1000 - 0.05 for r in rows)  # type: ignore[arg-type]


def pbx_resends(log: str) -> collections.Counter[str]:
    """How often the PBX sent each kind of message again, from its debug log.

    The same bytes to the same peer twice: a transaction's retransmission
    (INVITE, BYE, a final response) or the 2xx resent until the ACK came.
    Keyed by the start line and the CSeq method.
    """
    sent = collections.Counter(_SENT.findall(log))
    resends: collections.Counter[str] = collections.Counter()
    for (_peer, message), count in sent.items():
        if count > 1:
            lines = message.splitlines()
            cseq = next((line.split()[-1] for line in lines if line.startswith("\tCSeq:")), "?")
            resends[f"{lines[0].strip()} ({cseq})"] += count - 1
    return resends
