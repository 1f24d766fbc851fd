"""``kill -9`` at a random moment: what was answered 200 is on disk after the restart.

SIPp registers a few hundred users at 300 a second (register_auth.xml)
while the test kills the PBX with SIGKILL at a random moment; SIPp's
message trace says which REGISTERs were answered 200. After a restart,
every one of them must be in the bindings table, with the Call-ID of the
REGISTER that was answered. The same for calls: SIPp calls through the PBX
to a SIPp callee, the PBX is killed mid-way, and every call whose BYE was
answered 200 must have its call record (the 200s wait for the group commit:
`pbx.store`).

Three kills of each here, to keep the suite short; bench/kill9.py runs ten
of each with the same functions and prints the counts (docs/benchmarks.md).
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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
)
from tests.service.test_twistd import answer_to_options

pytestmark = [pytest.mark.interop, requires_sipp]

KILLS = 3
REGISTRATIONS_PER_RUN = 600  # at RATE, two seconds: the kill comes before the end
RATE = 300  # registrations per second
KILL_AFTER_S = (0.3, 1.6)  # the random moment, from SIPp's start
CALLS_PER_RUN = 200
CALL_RATE = 50  # calls per second
CALL_HOLD_MS = 200
CALL_KILL_AFTER_S = (0.8, 2.0)
SIPP_TIMEOUT_S = 3  # SIPp's whole run: calls in flight at the kill time out

_TRACED = re.compile(r"^-{20,} [^\n]*\n\w+ message (received|sent)[^\n]*\n\n", re.MULTILINE)


def answered_200(run: SippRun, method: str) -> dict[str, str]:
    """From SIPp's -trace_msg: Call-ID -> To user of every `method` SIPp saw answered 200."""
    pieces = _TRACED.split(run.messages)
    answered = {}
    for direction, message in zip(pieces[1::2], pieces[2::2], strict=True):
        if direction != "received" or not message.startswith("SIP/2.0 200"):
            continue
        headers = {}
        for line in message.splitlines()[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                break
            headers[name.strip().lower()] = value.strip()
        if headers.get("cseq", "").endswith(" " + method):
            to_user = re.search(r"sip:([^@;>]+)@", headers.get("to", ""))
            answered[headers["call-id"]] = to_user.group(1) if to_user else ""
    return answered


def in_background(work: Callable[[], SippRun]) -> Callable[[], SippRun]:
    """Start `work` in a thread; the returned function waits for its result."""
    result: list[SippRun] = []
    thread = threading.Thread(target=lambda: result.append(work()), name="sipp")
    thread.start()

    def finish() -> SippRun:
        thread.join()
        return result[0]

    return finish


def restart(pbx: Pbx) -> None:
    """Start the killed PBX again, and wait until it answers (its reactor runs)."""
    pbx.start()
    assert pbx.process is not None
    assert answer_to_options(pbx.process, pbx.log_path, pbx.sip_port).startswith(
        b"SIP/2.0 200")


@dataclass(frozen=True)
class KillRound:
    killed_after_s: float
    answered: int  # answered 200 before the kill, as SIPp saw it
    missing: list[str]  # of those, what the restarted PBX does not have


def kill_during_registrations(pbx: Pbx, work: Path, users: list[tuple[str, str]],
                              killed_after_s: float) -> KillRound:
    """SIPp registers `users` at `RATE`; SIGKILL after `killed_after_s`; restart; compare."""
    sipp = in_background(lambda: run_sipp(
        work, "register_auth.xml", pbx.sip_port, users=users,
        extra=["-r", str(RATE)], timeout_s=SIPP_TIMEOUT_S))
    time.sleep(killed_after_s)
    pbx.kill()  # SIGKILL
    answered = answered_200(sipp(), "REGISTER")
    restart(pbx)
    stored = {(row["call_id"], row["aor"]) for row in pbx.bindings()}
    missing = sorted(f"{user} ({call_id})" for call_id, user in answered.items()
                     if (call_id, user) not in stored)
    return KillRound(killed_after_s, len(answered), missing)


def kill_during_calls(pbx: Pbx, work: Path, start_sipp: Callable[..., BackgroundSipp],
                      killed_after_s: float) -> KillRound:
    """SIPp calls 1001 -> 1002 at `CALL_RATE`; SIGKILL after `killed_after_s`; restart;
    every call whose BYE was answered 200 must have its record."""
    callee_port = free_port(avoid=(pbx.sip_port, pbx.tls_port))
    registered = run_sipp(work / "register", "register_auth.xml", pbx.sip_port,
                          users=[("1002", USERS["1002"])], local_port=callee_port)
    assert registered.returncode == 0, registered.output + registered.errors
    callee = start_sipp(work / "callee", "uas_answer.xml", callee_port, CALLS_PER_RUN,
                        timeout_s=SIPP_TIMEOUT_S + 5)
    caller = in_background(lambda: run_sipp(
        work / "caller", "uac_call_auth.xml", pbx.sip_port,
        users=[("1001", USERS["1001"], "1002")], calls=CALLS_PER_RUN,
        extra=["-r", str(CALL_RATE), "-d", str(CALL_HOLD_MS)], timeout_s=SIPP_TIMEOUT_S))
    time.sleep(killed_after_s)
    pbx.kill()  # SIGKILL
    ended = answered_200(caller(), "BYE")
    callee.kill()
    restart(pbx)
    recorded = {row["call_id"] for row in pbx.cdrs()}
    return KillRound(killed_after_s, len(ended), sorted(set(ended) - recorded))


def test_every_registration_answered_200_is_there_after_kill_9(
        make_pbx: Callable[..., Pbx], tmp_path: Path) -> None:
    numbers = [f"{20000 + n}" for n in range(KILLS * REGISTRATIONS_PER_RUN)]
    pbx = make_pbx(users={number: f"pw-{number}" for number in numbers})
    moments = random.Random()
    rounds = []
    for kill in range(KILLS):
        users = [(number, f"pw-{number}") for number in
                 numbers[kill * REGISTRATIONS_PER_RUN:(kill + 1) * REGISTRATIONS_PER_RUN]]
        rounds.append(kill_during_registrations(
            pbx, tmp_path / f"sipp{kill}", users, moments.uniform(*KILL_AFTER_S)))

    report = "\n".join(map(str, rounds))
    assert all(not r.missing for r in rounds), report
    # Not vacuous: registrations were answered before each kill, and the kill cut SIPp short.
    assert all(0 < r.answered < REGISTRATIONS_PER_RUN for r in rounds), report


def test_every_call_whose_bye_was_answered_200_has_its_record_after_kill_9(
        make_pbx: Callable[..., Pbx], start_sipp: Callable[..., BackgroundSipp],
        tmp_path: Path) -> None:
    pbx = make_pbx()
    moments = random.Random()
    rounds = [kill_during_calls(pbx, tmp_path / f"run{kill}", start_sipp,
                                moments.uniform(*CALL_KILL_AFTER_S))
              for kill in range(KILLS)]

    report = "\n".join(map(str, rounds))
    assert all(not r.missing for r in rounds), report
    assert all(0 < r.answered < CALLS_PER_RUN for r in rounds), report
