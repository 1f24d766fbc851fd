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
once, about one in ten on the slower machine of 2026-12-04) still lost a
call inside SIPp. A second attempt on a fresh PBX is made only for the one
fault recognised as SIPp's own (`sipp_stumbles`): its error log says it
aborted a call on an unexpected message, and that message is a resend of
one it had already received in that call (its message log shows both), a
retransmission its scenario was not written for. A run that fails in any
other way, and every check of the PBX's side (call records, its resends),
fails at once: a PBX that loses a call a fraction p of the time must not
pass with probability 1-p².
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
    SippRun,
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
"""Runs of the lossy scenario when the first is spoiled by SIPp itself (`SippStumbled`)."""

_ERROR_ENTRY = re.compile(r"^\d{4}-\d{2}-\d{2}\t[\d:.]+\t[\d.]+: ", re.MULTILINE)
_ABORTED_ON_UNEXPECTED = re.compile(
    r"Aborting call on unexpected message for Call-Id '([^']+)': .*?, received '([^\n]*)\n",
    re.DOTALL)
_TRACED_MESSAGE = re.compile(r"^-{20,} [^\n]*\n(\w+) message (received|sent)[^\n]*\n\n",
                             re.MULTILINE)


class SippStumbled(Exception):
    """SIPp aborted calls on retransmissions its scenario did not expect (`sipp_stumbles`)."""


def _header(message: str, name: str) -> str:
    for line in message.splitlines():
        key, colon, value = line.partition(":")
        if colon and key.strip().lower() == name.lower():
            return value.strip()
    return ""


def sipp_stumbles(run: SippRun) -> list[str] | None:
    """SIPp's own fault under loss, read from its -trace_err and -trace_msg files.

    Each entry of its error log must be "Aborting call on unexpected message
    for Call-Id ...", and the message named must be one SIPp had received
    before in that call (same start line, Call-ID and CSeq: a resend the
    scenario could not place), or an ACK for a 200 that SIPp itself sent
    more than once in that call (the PBX must ACK every retransmitted 2xx,
    RFC 3261 §13.2.2.4, and the copy lands while the scenario pauses). Then
    the list of those aborts; None when any entry is something else (a
    timeout, an unexpected message that was no resend, a failure with
    nothing logged), which is not retried.
    """
    entries = [entry for entry in _ERROR_ENTRY.split(run.errors) if entry.strip()]
    if not entries:
        return None
    received: dict[tuple[str, str, str], int] = collections.Counter()
    sent_2xx: dict[tuple[str, str], int] = collections.Counter()  # (Call-ID, CSeq number)
    pieces = _TRACED_MESSAGE.split(run.messages)
    for direction, message in zip(pieces[2::3], pieces[3::3], strict=True):
        start_line = message.split("\n", 1)[0].strip()
        call_id, cseq = _header(message, "Call-ID"), _header(message, "CSeq")
        if direction == "received":
            received[(start_line, call_id, cseq)] += 1
        elif start_line.startswith("SIP/2.0 2") and cseq.endswith(" INVITE"):
            sent_2xx[(call_id, cseq.split()[0])] += 1
    stumbles = []
    for entry in entries:
        aborted = _ABORTED_ON_UNEXPECTED.match(entry)
        if aborted is None:
            return None
        call_id, start_line = aborted.group(1), aborted.group(2).strip()
        key = (start_line, call_id, _header(entry, "CSeq"))
        acked_resent_2xx = (start_line.startswith("ACK ")
                            and sent_2xx[(call_id, key[2].split(" ")[0])] >= 2)
        if received[key] < 2 and not acked_resent_2xx:  # the copy and one before it
            return None
        stumbles.append(f"{call_id}: {start_line} ({key[2]}) resent")
    return stumbles


@pytest.mark.parametrize("lost_percent", [0, 10])
def test_calls_complete_and_are_recorded(
    make_pbx: Callable[..., Pbx], start_sipp: Callable[..., BackgroundSipp], tmp_path: Path,
    lost_percent: int,
) -> None:
    attempts = ATTEMPTS_WITH_LOSS if lost_percent else 1
    for attempt in range(1, attempts + 1):
        work = tmp_path / f"run{attempt}"
        work.mkdir()
        try:
            run_calls(make_pbx, start_sipp, work, lost_percent)
            return
        except SippStumbled as stumbled:
            if attempt == attempts:
                pytest.fail(f"SIPp stumbled in every attempt: {stumbled}")
            print(f"attempt {attempt}: SIPp stumbled ({stumbled}); trying once more")


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
    sipp_ok = (caller.returncode == 0
               and (counts.get("SuccessfulCall"), counts.get("FailedCall")) == (CALLS, 0)
               and answered.counts().get("SuccessfulCall") == CALLS
               and answered.counts().get("FailedCall") == 0)
    if not sipp_ok:
        failed = counts.get("FailedCall", CALLS) + answered.counts().get("FailedCall", CALLS)
        stumbles = [sipp_stumbles(caller), sipp_stumbles(answered)]
        known = [s for s in stumbles if s is not None]
        # Both sides' logs explained (or empty), and no more failed calls than
        # stumbles could spoil: each spoils its call and the other leg of it.
        if (known and all(s is not None or not run.errors
                          for s, run in zip(stumbles, (caller, answered), strict=True))
                and failed <= 2 * sum(len(s) for s in known)):
            raise SippStumbled("; ".join(line for s in known for line in s))
        pytest.fail(f"SIPp calls failed, not in a way recognised as SIPp's own:\n{report}")
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


# ------------------------------------------- what counts as SIPp's own fault

_INVITE = """INVITE sip:1002@127.0.0.1:5070;transport=UDP SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1
Call-ID: call-1@pbx.test
CSeq: 1 INVITE
Content-Length: 0
"""
_NOT_FOUND = """SIP/2.0 481 Call/Transaction Does Not Exist
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK2
Call-ID: call-1@pbx.test
CSeq: 2 BYE
Content-Length: 0
"""


def traced(*messages: str) -> str:
    """A -trace_msg file in SIPp 3.6's layout: each message SIPp received."""
    return "".join(f"----------------------------------------------- 2026-12-07 21:04:24.2\n"
                   f"UDP message received [{len(m)}] bytes :\n\n{m}\n" for m in messages)


def aborted_on(message: str) -> str:
    """A -trace_err entry as SIPp 3.6 writes it when a call gets a message it cannot place."""
    return ("2026-12-07\t21:04:25.100000\t1796677465.100000: Aborting call on unexpected "
            "message for Call-Id 'call-1@pbx.test': while expecting 'ACK' (index 4), "
            f"received '{message}'\n")


def sipp_run(errors: str, messages: str) -> SippRun:
    return SippRun(returncode=1, output="", errors=errors, messages=messages, logs="")


def test_an_abort_on_a_resent_invite_is_sipps_own_fault() -> None:
    run = sipp_run(aborted_on(_INVITE), traced(_INVITE, _INVITE))
    assert sipp_stumbles(run) == [
        "call-1@pbx.test: INVITE sip:1002@127.0.0.1:5070;transport=UDP SIP/2.0 (1 INVITE) resent"]


_OK = """SIP/2.0 200 OK
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1
Call-ID: call-1@pbx.test
CSeq: 1 INVITE
Content-Length: 0
"""
_ACK = """ACK sip:1002@127.0.0.1:5070;transport=udp SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK3
Call-ID: call-1@pbx.test
CSeq: 1 ACK
Content-Length: 0
"""


def sent(*messages: str) -> str:
    """Like `traced`, for messages SIPp sent."""
    return "".join(f"----------------------------------------------- 2026-12-07 21:04:24.2\n"
                   f"UDP message sent ({len(m)} bytes):\n\n{m}\n" for m in messages)


def test_an_abort_on_the_ack_of_a_resent_200_is_sipps_own_fault() -> None:
    """The answering SIPp resent its 200 (lost), the PBX ACKed each copy, as it must."""
    run = sipp_run(aborted_on(_ACK), traced(_INVITE) + sent(_OK, _OK) + traced(_ACK))
    assert sipp_stumbles(run) == [
        "call-1@pbx.test: ACK sip:1002@127.0.0.1:5070;transport=udp SIP/2.0 (1 ACK) resent"]


def test_an_abort_on_an_ack_after_a_single_200_is_not() -> None:
    run = sipp_run(aborted_on(_ACK), traced(_INVITE) + sent(_OK) + traced(_ACK))
    assert sipp_stumbles(run) is None


def test_an_abort_on_a_message_seen_once_is_not() -> None:
    """The PBX sent something SIPp's scenario does not allow: the PBX's fault, not retried."""
    run = sipp_run(aborted_on(_NOT_FOUND), traced(_INVITE, _NOT_FOUND))
    assert sipp_stumbles(run) is None


def test_other_errors_and_silent_failures_are_not() -> None:
    timeout = ("2026-12-07\t21:04:25.1\t1796677465.1: Call-Id: call-1@pbx.test, receive "
               "timeout on message 4 without label to jump to (ontimeout attribute): "
               "aborting call\n")
    assert sipp_stumbles(sipp_run(timeout, traced(_INVITE))) is None
    assert sipp_stumbles(sipp_run(aborted_on(_INVITE) + timeout,
                                  traced(_INVITE, _INVITE))) is None
    assert sipp_stumbles(sipp_run("", traced(_INVITE))) is None
