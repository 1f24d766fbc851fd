"""Answered 200 means stored: the group commit, on the PBX's own clock.

The whole service on a `Clock` with no sockets, its store a real SQLite
file: a REGISTER's 200 and a BYE's 200 are captured as they leave, and at
that moment the file is read by a second connection, as another program
(or the PBX after ``kill -9``) would read it. Faults are real ones: another
connection holding SQLite's write lock.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from pbx.config import parse_config
from pbx.core.location import Binding
from pbx.service import PbxService
from pbx.sip.digest import Challenge, authorization_for, select_challenge
from pbx.sip.message import Response, parse_message
from pbx.sip.peer import Peer
from pbx.store import (
    DATABASE_FILENAME,
    GROUP_COMMIT_WINDOW_S,
    INSERT_CDR,
    RETRY_INTERVAL_S,
    BindingWriter,
    GroupCommit,
    Store,
    StoreError,
)
from tests.unit.test_call_memory import CALLER, Office

DOMAIN = "pbx.test"
PASSWORDS = {f"{1000 + n}": f"pw-{1000 + n}" for n in range(1, 6)}


def rows_on_disk(path: Path, query: str) -> list[tuple[object, ...]]:
    """What another program (or the next run) reads from the file right now."""
    with contextlib.closing(sqlite3.connect(path)) as other:
        return other.execute(query).fetchall()


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


@pytest.fixture
def log_events() -> Iterator[EventLoggingObserver]:
    events = EventLoggingObserver()
    globalLogPublisher.addObserver(events)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events)


def messages(events: EventLoggingObserver, start: str) -> list[str]:
    from twisted.logger import formatEvent

    return [text for text in map(formatEvent, events) if text.startswith(start)]


class Registrar:
    """The service on a Clock, saving to a real file, and phones registering to it."""

    def __init__(self, tmp_path: Path) -> None:
        config = parse_config({
            "pbx": {"data_dir": str(tmp_path / "data"), "log_requests": False},
            "sip": {"domain": DOMAIN, "udp": "127.0.0.1:5060"},
            "registrar": {"digest_algorithms": ["MD5"]},
            "users": {user: {"password": password} for user, password in PASSWORDS.items()},
        }, str(tmp_path / "pbx.toml"))
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.service = PbxService(config, reactor=self.clock)
        self.path = tmp_path / "data" / DATABASE_FILENAME
        self.store = Store.open(self.path)
        self.service._start_saving(self.store)  # what starting the service does
        self.answers: list[tuple[Response, list[tuple[object, ...]]]] = []
        """Every answer sent, with the binding rows on disk at the moment it left."""
        self.service.connections.udp_send = self._sent

    def _sent(self, data: bytes, host: str, port: int) -> None:
        answer = parse_message(data)
        assert isinstance(answer, Response)
        self.answers.append((answer, rows_on_disk(self.path, "SELECT aor, cseq FROM bindings")))

    def send_register(self, user: str, port: int) -> None:
        """REGISTER, its 401 (answered at once), and the REGISTER with credentials."""
        def register(cseq: int, auth: str = "") -> None:
            self.service.endpoint.receive_data((
                f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{user}-{cseq};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=r{user}\r\n"
                f"To: <sip:{user}@{DOMAIN}>\r\nCall-ID: reg-{user}\r\nCSeq: {cseq} REGISTER\r\n"
                f"Contact: <sip:{user}@127.0.0.1:{port};transport=udp>\r\nExpires: 3600\r\n"
                f"{auth}Content-Length: 0\r\n\r\n").encode(), Peer("udp", "127.0.0.1", port),
                datagram=True)

        register(1)
        challenge, _ = self.answers.pop()
        assert challenge.status == 401
        chosen = select_challenge(Challenge.parse(v)
                                  for v in challenge.headers.values("www-authenticate"))
        assert chosen is not None
        credentials = authorization_for(chosen, username=user, password=PASSWORDS[user],
                                        method="REGISTER", uri=f"sip:{DOMAIN}", cnonce="cn")
        register(2, f"Authorization: {credentials.to_header_value()}\r\n")


def test_a_200_to_register_leaves_only_once_its_binding_is_on_disk(tmp_path: Path) -> None:
    registrar = Registrar(tmp_path)
    users = ["1001", "1002", "1003"]
    for number, user in enumerate(users):
        registrar.send_register(user, 6000 + number)
    assert registrar.answers == []  # nothing answered before the commit

    registrar.clock.advance(GROUP_COMMIT_WINDOW_S)

    assert [answer.status for answer, _ in registrar.answers] == [200, 200, 200]
    for answer, on_disk in registrar.answers:
        assert (answer.to_addr.sip_user, 2) in on_disk
    assert registrar.service.group is not None
    assert registrar.service.group.commits == 1  # the three rode in one transaction


def test_a_register_that_cannot_be_stored_gets_503_and_is_saved_when_the_lock_goes(
        tmp_path: Path, log_events: EventLoggingObserver) -> None:
    registrar = Registrar(tmp_path)
    with write_lock_held(registrar.path):
        registrar.send_register("1001", 6001)
        registrar.clock.advance(GROUP_COMMIT_WINDOW_S)
        registrar.send_register("1002", 6002)  # waits for the retry
        registrar.clock.advance(RETRY_INTERVAL_S)

    [(first, _), (second, _)] = registrar.answers
    for answer in (first, second):
        assert (answer.status, answer.reason) == (503, "Registration not stored")
        assert answer.headers.get("Retry-After") == "5"
    assert len(messages(log_events, "Cannot save to the database")) == 1
    assert "database is locked" in messages(log_events, "Cannot save to the database")[0]

    # The lock is gone: the next attempt writes what was kept in memory.
    registrar.clock.advance(RETRY_INTERVAL_S)
    assert sorted(rows_on_disk(registrar.path, "SELECT aor, cseq FROM bindings")) == [
        ("1001", 2), ("1002", 2)]
    assert len(messages(log_events, "Saving to ")) == 1
    # ... and a REGISTER is answered 200 again.
    registrar.answers.clear()
    registrar.send_register("1003", 6003)
    registrar.clock.advance(GROUP_COMMIT_WINDOW_S)
    assert [answer.status for answer, _ in registrar.answers] == [200]


def test_a_register_held_during_a_short_lock_gets_200_after_the_retry(tmp_path: Path) -> None:
    """Held answers wait for the next attempt, so a lock held a moment delays, not fails."""
    registrar = Registrar(tmp_path)
    with write_lock_held(registrar.path):
        registrar.send_register("1001", 6001)
        registrar.clock.advance(GROUP_COMMIT_WINDOW_S)  # fails: 1001 gets its 503
        registrar.send_register("1002", 6002)
    registrar.clock.advance(RETRY_INTERVAL_S)

    assert [(answer.to_addr.sip_user, answer.status) for answer, _ in registrar.answers] == [
        ("1001", 503), ("1002", 200)]
    assert ("1002", 2) in registrar.answers[-1][1]


def test_a_failure_is_logged_when_it_starts_while_it_lasts_and_when_it_ends(
        tmp_path: Path, log_events: EventLoggingObserver) -> None:
    clock = Clock()
    with Store.open(tmp_path / DATABASE_FILENAME) as store:
        writer = BindingWriter(store)
        # A retry every 10 s: each failed attempt waits out SQLite's busy timeout for real.
        group = GroupCommit(store, clock, retry_s=10, report_every_s=60)
        group.join(writer)
        writer.changes.record_update(make_binding("1001"))
        group.schedule()
        with write_lock_held(store.path):
            for _ in range(13):  # two minutes of failing
                clock.advance(10)
            assert group.failing
            assert writer.pending == 1
            failures = messages(log_events, "Cannot save to the database")
            still = messages(log_events, "Still cannot save to the database")
        clock.advance(10)

        assert len(failures) == 1
        assert len(still) == 2  # after 60 s and after 120 s, not after each attempt
        assert "for 60 s now" in still[0] and "for 120 s now" in still[1]
        [recovered] = messages(log_events, "Saving to ")
        assert "works again after 130.0 s and 13 failed attempt(s)" in recovered
        assert not group.failing
        assert rows_on_disk(store.path, "SELECT aor FROM bindings") == [("1001",)]
        clock.advance(600)
        assert len(messages(log_events, "Still cannot save")) == 2


def test_when_stored_fires_after_the_commit_or_fails_with_store_error(tmp_path: Path) -> None:
    """The API a plugin's store uses: rows in the group's transaction, and an awaitable."""
    clock = Clock()
    with Store.open(tmp_path / DATABASE_FILENAME) as store:
        group = GroupCommit(store, clock)
        queue = group.rows(INSERT_CDR)
        queue.append(cdr_row("plugin-1"))
        stored = group.when_stored()
        results: list[object] = []
        stored.addBoth(results.append)
        assert results == []
        clock.advance(GROUP_COMMIT_WINDOW_S)
        assert results == [None]
        assert rows_on_disk(store.path, "SELECT call_id FROM cdr") == [("plugin-1",)]

        with write_lock_held(store.path):
            queue.append(cdr_row("plugin-2"))
            failed = group.when_stored()
            failed.addErrback(lambda failure: results.append(failure.value))
            clock.advance(GROUP_COMMIT_WINDOW_S)
        assert isinstance(results[-1], StoreError)
        assert queue.pending == 1  # kept for the retry
        clock.advance(RETRY_INTERVAL_S)
        assert rows_on_disk(store.path, "SELECT call_id FROM cdr") == [
            ("plugin-1",), ("plugin-2",)]


def test_rows_kept_while_writing_fails_are_bounded(
        tmp_path: Path, log_events: EventLoggingObserver) -> None:
    clock = Clock()
    with Store.open(tmp_path / DATABASE_FILENAME) as store:
        group = GroupCommit(store, clock)
        queue = group.rows(INSERT_CDR, limit=3)
        for number in range(5):
            queue.append(cdr_row(f"call-{number}"))
        assert [row[0] for row in queue.rows] == ["call-2", "call-3", "call-4"]
        assert queue.dropped == 2
        assert len(messages(log_events, "Dropped 1 unsaved row(s)")) == 1


def test_a_bye_is_answered_200_only_once_the_call_record_is_on_disk(tmp_path: Path) -> None:
    office = Office(tmp_path)
    office.register_callee()
    path = tmp_path / DATABASE_FILENAME
    store = Store.open(path)
    office.service._start_saving(store)
    office.dial()
    to_tag = office.answer()
    office.take(CALLER)

    cdrs_when_sent: list[list[tuple[object, ...]]] = []
    capture = office.service.connections.udp_send

    def sent(data: bytes, host: str, port: int) -> None:
        if data.startswith(b"SIP/2.0 200") and b"BYE" in data.split(b"CSeq:", 1)[1][:20]:
            cdrs_when_sent.append(rows_on_disk(path, "SELECT call_id, hangup_by FROM cdr"))
        assert capture is not None
        capture(data, host, port)

    office.service.connections.udp_send = sent
    office.deliver(office.caller_request("BYE", 3, "bye3", to_tag=to_tag), CALLER)
    assert office.responses(CALLER, 200) == []  # held for the commit
    office.clock.advance(GROUP_COMMIT_WINDOW_S)

    [bye_ok] = office.responses(CALLER, 200)
    assert bye_ok.headers.get("CSeq") == "3 BYE"
    assert cdrs_when_sent == [[("call-1@127.0.0.1", "caller")]]
    store.close()


def make_binding(aor: str) -> Binding:
    return Binding(
        aor=aor, contact=f"sip:{aor}@10.0.0.5", expires_at=5000.0, q=None, call_id="c",
        cseq=1, transport="udp", source_host="10.0.0.5", source_port=5060, connection_id=None,
        instance_id=None, reg_id=None, user_agent=None, updated_at=1000.0)


def cdr_row(call_id: str) -> tuple[object, ...]:
    return (call_id, "1001", None, "1002", "[]", None, 1.0, None, 2.0, 0.0, "caller", 480,
            None)
