"""The SQLite store on real files: schema, round trips across reopen, batching, refusals."""

from __future__ import annotations

import sqlite3
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from pbx.core.location import Binding, LocationService
from pbx.store import (
    BUSY_TIMEOUT_MS,
    CDR_COLUMNS,
    DATABASE_FILENAME,
    INSERT_CDR,
    MIGRATIONS,
    PAGE_SIZE,
    WAL_AUTOCHECKPOINT_BYTES,
    BindingWriter,
    RowQueue,
    Store,
    StoreError,
)

NOW = 1_000.0


def make_binding(**overrides: Any) -> Binding:
    values: dict[str, Any] = {
        "aor": "1001",
        "contact": "sip:1001@10.0.0.5:5070;transport=tcp",
        "expires_at": NOW + 3600,
        "q": None,
        "call_id": "a84b4c76e66710@pc33.example.org",
        "cseq": 1,
        "transport": "tcp",
        "source_host": "203.0.113.7",
        "source_port": 40112,
        "connection_id": None,
        "instance_id": None,
        "reg_id": None,
        "user_agent": None,
        "updated_at": NOW,
    }
    values.update(overrides)
    return Binding(**values)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / DATABASE_FILENAME


def stored_rows(path: Path) -> list[tuple[Any, ...]]:
    """What another program reading the file would see."""
    with sqlite3.connect(path) as conn:
        query = "SELECT aor, contact, cseq FROM bindings ORDER BY aor, contact"
        return conn.execute(query).fetchall()


def test_bindings_survive_a_reopen(db_path: Path) -> None:
    full = make_binding(
        contact="sip:1001@[2001:db8::5]:5061;transport=tls", q=0.7, transport="tls",
        source_host="2001:db8::5", source_port=5061, connection_id=17,
        instance_id="<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>", reg_id=1,
        user_agent="Linphone/5.2.5 (belle-sip/5.2.4)", expires_at=NOW + 3600.25,
        updated_at=NOW + 0.125, cseq=2**40,
    )
    sparse = make_binding(aor="1002", contact="sip:1002@10.0.0.6", transport="udp")
    store = Store.open(db_path)
    writer = BindingWriter(store)
    writer.changes.record_update(full)
    writer.changes.record_update(sparse)
    assert writer.flush() == 2
    store.close()

    reopened = Store.open(db_path)
    try:
        assert sorted(reopened.load_bindings(), key=lambda b: b.aor) == [full, sparse]
    finally:
        reopened.close()


def test_the_file_is_in_wal_mode(db_path: Path) -> None:
    Store.open(db_path).close()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_open_creates_the_data_directory_and_a_current_schema(db_path: Path) -> None:
    assert not db_path.parent.exists()
    with Store.open(db_path) as store:
        assert store.schema_version == len(MIGRATIONS)
        assert store.load_bindings() == []
    assert db_path.is_file()


def test_every_binding_field_has_a_column(db_path: Path) -> None:
    Store.open(db_path).close()
    with sqlite3.connect(db_path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(bindings)")]
    assert columns == [field.name for field in fields(Binding)]


def test_reopening_does_not_rerun_migrations(db_path: Path) -> None:
    with Store.open(db_path) as store:
        writer = BindingWriter(store)
        writer.changes.record_update(make_binding())
        writer.flush()
    with Store.open(db_path) as store:
        assert store.schema_version == len(MIGRATIONS)
        assert store.load_bindings() == [make_binding()]


# -- batching ------------------------------------------------------------------------

def test_refreshes_between_flushes_coalesce_into_one_row_write(db_path: Path) -> None:
    with Store.open(db_path) as store:
        writer = BindingWriter(store)
        for cseq in range(1, 11):
            writer.changes.record_update(make_binding(cseq=cseq))
        assert writer.pending == 1
        assert writer.flush() == 1
        assert writer.pending == 0
        assert writer.flush() == 0
        assert stored_rows(db_path) == [("1001", "sip:1001@10.0.0.5:5070;transport=tcp", 10)]


def test_a_removal_deletes_the_row_and_overrides_a_pending_update(db_path: Path) -> None:
    kept = make_binding(contact="sip:1001@10.0.0.1")
    dropped = make_binding(contact="sip:1001@10.0.0.2")
    with Store.open(db_path) as store:
        writer = BindingWriter(store)
        writer.changes.record_update(kept)
        writer.changes.record_update(dropped)
        writer.flush()
        writer.changes.record_update(replace(dropped, cseq=2))
        writer.changes.record_removal(dropped.aor, dropped.contact)
        writer.changes.record_removal("1009", "sip:never@stored")
        assert writer.flush() == 2
        assert store.load_bindings() == [kept]


def test_nothing_is_written_before_a_flush(db_path: Path) -> None:
    """A crash loses what was pending, and only that."""
    with Store.open(db_path) as store:
        writer = BindingWriter(store)
        writer.changes.record_update(make_binding(contact="sip:1001@10.0.0.1"))
        writer.flush()
        writer.changes.record_update(make_binding(contact="sip:1001@10.0.0.2"))
        assert [row[1] for row in stored_rows(db_path)] == ["sip:1001@10.0.0.1"]


def test_a_failed_flush_keeps_its_changes_for_the_next(db_path: Path) -> None:
    with Store.open(db_path) as store:
        writer = BindingWriter(store)
        writer.changes.record_update(make_binding())
        other = sqlite3.connect(db_path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # someone holds the write lock
            with pytest.raises(StoreError, match="locked"):
                writer.flush()
            # The reactor thread waits the short busy timeout, not SQLite's 5 s.
            assert store.busy_timeout_ms == BUSY_TIMEOUT_MS < 1000
            assert writer.pending == 1
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert writer.flush() == 1
        assert store.load_bindings() == [make_binding()]


def test_flush_of_5000_upserts_keeps_the_latest_of_each(db_path: Path) -> None:
    """One flush of 5,000 inserts, then three of updates: the rows end at the last.

    How long such a flush takes is measured by bench/store_flush.py.
    """
    with Store.open(db_path) as store:
        writer = BindingWriter(store)
        for round_number in range(4):
            for i in range(5000):
                writer.changes.record_update(make_binding(
                    aor=f"{10000 + i}", contact=f"sip:{10000 + i}@10.1.{i >> 8}.{i & 255}:5060",
                    call_id=f"{i:032x}@10.1.0.1", cseq=round_number + 1,
                    user_agent="Yealink SIP-T46S 66.86.0.15"))
            assert writer.flush() == 5000
        stored = store.load_bindings()
        assert len(stored) == 5000
        assert {binding.cseq for binding in stored} == {4}


# -- refusals ------------------------------------------------------------------------

def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    content = b"[sip]\ndomain = 'pbx.example.org'\n" * 200
    db_path.write_bytes(content)
    with pytest.raises(StoreError) as raised:
        Store.open(db_path)
    assert str(db_path) in str(raised.value)
    assert "not a usable SQLite database" in str(raised.value)
    assert db_path.read_bytes() == content
    assert sorted(p.name for p in db_path.parent.iterdir()) == [DATABASE_FILENAME]


def test_another_programs_sqlite_database_is_refused_and_left_alone(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
    content = db_path.read_bytes()
    with pytest.raises(StoreError, match="schema_version") as raised:
        Store.open(db_path)
    assert str(db_path) in str(raised.value)
    assert db_path.read_bytes() == content


def test_a_database_from_a_newer_pbx_is_refused(db_path: Path) -> None:
    Store.open(db_path).close()
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS) + 1,))
    with pytest.raises(StoreError, match="newer PBX") as raised:
        Store.open(db_path)
    assert str(db_path) in str(raised.value)


# -- with the location service ---------------------------------------------------------

def test_location_changes_survive_a_restart(db_path: Path) -> None:
    """The registrar's path: update, record the result, flush; restart; load."""
    location = LocationService()
    store = Store.open(db_path)
    writer = BindingWriter(store)
    desk = make_binding(contact="sip:1001@Desk.example.org", connection_id=3)
    soon = make_binding(contact="sip:1001@10.0.0.8", expires_at=NOW + 60)
    writer.changes.record_result(location.update_all([desk, soon], NOW))
    # The desk phone refreshes with its contact spelt differently (§19.1.4 equal).
    respelt = replace(desk, contact="sip:1001@desk.example.org", cseq=2)
    writer.changes.record_result(location.update(respelt, NOW))
    writer.flush()
    store.close()

    restarted = LocationService()
    store = Store.open(db_path)
    writer = BindingWriter(store)
    stored = store.load_bindings()
    assert sorted(b.contact for b in stored) == ["sip:1001@10.0.0.8", "sip:1001@desk.example.org"]
    dropped = restarted.load(stored, NOW + 60)
    assert dropped == [soon]
    assert restarted.bindings("1001", NOW + 60) == [replace(respelt, connection_id=None)]
    writer.changes.record_removals(dropped)
    writer.flush()
    assert [row[1] for row in stored_rows(db_path)] == ["sip:1001@desk.example.org"]
    store.close()


def test_the_wal_is_checkpointed_rarely(db_path: Path) -> None:
    """A checkpoint ends with an fsync that holds the reactor; with a group commit every
    few milliseconds SQLite's default (1,000 pages) made them several a second."""
    with Store.open(db_path) as store:
        pages = store.wal_autocheckpoint_pages
        assert pages * PAGE_SIZE == WAL_AUTOCHECKPOINT_BYTES
        assert pages > 1000


def test_a_new_database_has_small_pages(db_path: Path) -> None:
    """Each commit writes every page it changed, whole: small pages, fewer bytes a binding."""
    with Store.open(db_path):
        pass
    raw = sqlite3.connect(db_path)
    assert raw.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE == 1024
    raw.close()


def test_an_existing_database_keeps_its_page_size(db_path: Path) -> None:
    """Changing it would mean rewriting the whole file; the WAL limit follows the page size."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    raw = sqlite3.connect(db_path)
    raw.execute("PRAGMA page_size=4096")
    raw.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    raw.execute("INSERT INTO schema_version (version) VALUES (0)")
    raw.commit()
    raw.close()
    with Store.open(db_path) as store:
        assert store.schema_version == len(MIGRATIONS)
        assert store.wal_autocheckpoint_pages * 4096 == WAL_AUTOCHECKPOINT_BYTES
    raw = sqlite3.connect(db_path)
    assert raw.execute("PRAGMA page_size").fetchone()[0] == 4096
    raw.close()


def test_a_call_detail_record_has_the_cdr_tables_columns_in_order(db_path: Path) -> None:
    """The core's record and the store's insert name the same thirteen fields."""
    from pbx.core.call import CallDetailRecord, CallRecord

    assert tuple(field.name for field in fields(CallDetailRecord)) == CDR_COLUMNS
    record = CallRecord(call_id="c1", caller="1001", caller_name="Alice", dialed="1002",
                        started_at=100.0, answered_at=101.0, ended_at=105.25,
                        targets=["1002"], answered_by="1002", hangup_by="caller")
    cdr = record.finished()
    assert (cdr.duration_s, cdr.status, cdr.targets) == (4.25, 200, '["1002"]')
    with Store.open(db_path) as store:
        queue = RowQueue(INSERT_CDR)
        queue.append(cdr.row())
        store.write([queue])
        (row,) = store.cdrs()
    assert {name: row[name] for name in CDR_COLUMNS} == dict(zip(CDR_COLUMNS, cdr.row(),
                                                                 strict=True))
