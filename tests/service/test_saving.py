"""Answered 200 means stored, over real sockets: what a phone is told is in the file.

The PBX under the real reactor on 127.0.0.1; the SQLite file is read by a
second connection (`RunningPbx.rows`, `RunningPbx.cdrs`) the moment the
answer arrives, as the next run would read it after ``kill -9``. The fault
is a real one: another program holding SQLite's write lock.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent

from tests.service.conftest import eventually
from tests.service.sipclient import ring_then_answer


@contextlib.contextmanager
def write_lock_held(path: Path) -> Iterator[None]:
    """Another program holds SQLite's write lock (an admin's shell in a transaction)."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()


def logged(events: EventLoggingObserver, start: str) -> list[str]:
    return [text for text in map(formatEvent, events) if text.startswith(start)]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest_twisted.ensureDeferred
async def test_the_binding_is_in_the_file_when_the_200_arrives(
        pbx_factory: Any, transport: str) -> None:
    pbx = await pbx_factory()
    for user in ("1001", "1002", "1003"):
        phone = await pbx.phone(user, transport)

        reply = await phone.register()

        assert reply.status == 200
        [row] = pbx.rows(user)  # read at once: no waiting for a flush
        assert row["contact"] == phone.contact_uri


@pytest_twisted.ensureDeferred
async def test_the_call_record_is_in_the_file_when_the_bye_is_answered(
        pbx_factory: Any) -> None:
    pbx = await pbx_factory()
    caller = await pbx.softphone("1001")
    callee = await pbx.softphone("1002", behaviour=ring_then_answer(0.05))
    outgoing = await caller.call("1002")
    assert (await outgoing.final_response()).status == 200
    incoming = await callee.next_call()
    await incoming.next_request("ACK")

    assert (await outgoing.bye()).status == 200

    [row] = pbx.cdrs()  # read at once
    assert (row["call_id"], row["hangup_by"], row["status"]) == (
        outgoing.call_id, "caller", 200)


@pytest_twisted.ensureDeferred
async def test_a_locked_database_gets_503_then_saving_resumes_by_itself(
        pbx_factory: Any, log_events: EventLoggingObserver) -> None:
    pbx = await pbx_factory()
    phone = await pbx.phone("1001")
    with write_lock_held(pbx.data_dir / "pbx.sqlite3"):
        refused = await phone.register()
    assert refused.status == 503
    assert refused.get("retry-after") == "5"
    assert pbx.rows("1001") == []
    assert len(logged(log_events, "Cannot save to the database")) == 1

    # The lock is gone: the change kept in memory is written by the retry,
    # without the phone asking again, and the recovery is logged once.
    await eventually(pbx.reactor, lambda: len(pbx.rows("1001")) == 1, timeout=3.0)
    assert len(logged(log_events, "Saving to ")) == 1
    assert (await phone.register()).status == 200
    other = await pbx.phone("1002")
    assert (await other.register()).status == 200
    assert [row["aor"] for row in pbx.rows()] == ["1001", "1002"]
    await pbx.stop()
    assert logged(log_events, "Stopped; bindings saved")
    assert len(logged(log_events, "Cannot save to the database")) == 1
