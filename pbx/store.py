"""All persistence: one SQLite file, reached through sqlite-utils.

The PBX keeps its working state in memory (the location service, calls) and
uses SQLite for what must outlive a restart. This module holds every line of
SQL in the project, so a schema change is reviewed in one place.

* One file, ``<data_dir>/pbx.sqlite3``, in WAL mode with
  ``synchronous=NORMAL``: a commit appends to the log without waiting for the
  disk, readers (an admin with the ``sqlite3`` shell) never block the writer,
  and a power cut loses at most the last commits, never the file.
* The schema grows by *migrations*: functions applied in order, the count
  applied so far kept in ``schema_version``. A later issue adds a table by
  appending a function to `MIGRATIONS`, never by editing an old one. A file
  written by a newer PBX (a higher version than we know) is refused rather
  than guessed at. (sqlite-utils 4 has its own named-migration registry, but
  it cannot say that a file is *newer* than the code, which is the mistake
  that costs data after a downgrade.)
* Writes happen in the reactor thread, so each must be small. The location
  service changes bindings on every REGISTER; `PendingBindings` collects those
  changes in memory, keyed by (aor, contact) so that repeated refreshes of
  one phone coalesce into one row.

Group commit: an answer that reports a stored change is sent after the commit
-----------------------------------------------------------------------------
A 200 to REGISTER tells the phone it is registered until its expiry; a 200
to BYE ends a call whose record the office bills from. Either promise is
kept only if the change is on disk when the answer leaves, so the changes are
written by `GroupCommit`: the first change recorded schedules a commit
`GROUP_COMMIT_WINDOW_S` later, everything recorded meanwhile rides in the
same transaction, and the answers held for it (`GroupCommit.after_commit`)
are sent right after the COMMIT returns. Under load one commit is shared
by every REGISTER of its window instead of each paying for its own (what it
costs: docs/benchmarks.md, "Group commit").

What a COMMIT guarantees is WAL with ``synchronous=NORMAL``: once COMMIT has
returned, the transaction is in the operating system's copy of the WAL file,
so the process may be killed at any moment (``kill -9``, a crash, the OOM
killer) without losing it. A power cut or a kernel crash may lose the last
commits before the next checkpoint (never the file): the price of not
waiting for the disk on every commit.

When a write fails (another program holds the write lock, the disk is full,
the file or its folder became read-only), nothing pending is forgotten: the
changes stay in memory and are retried every `RETRY_INTERVAL_S`; the held
answers are told the commit failed (the registrar answers 503 with
Retry-After instead of 200); the failure is logged once when it starts,
again every `FAILURE_REPORT_INTERVAL_S` while it lasts, and once when
saving works again. The bindings in memory keep the change: the phone is
there and can be called, and it registers again after the Retry-After; what
the promise needs is that no 200 was sent for what is not on disk.

Stores added later (a plugin's messages, the voicemail index) join the same
group commit rather than writing on their own: a `RowQueue` (rows inserted
with one statement, as call records are) from `GroupCommit.rows`, or any
`Participant` passed to `GroupCommit.join`; an answer that reports such a
change waits for `GroupCommit.when_stored` (a Deferred) or
`GroupCommit.after_commit`. One transaction then carries every table's
changes, and a failing disk is reported once for all of them.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Sequence
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from pbx.core.location import Binding
from pbx.core.pending_bindings import PendingBindings


def _import_sqlite_utils_without_numpy() -> type[Database]:
    """sqlite-utils' `Database`, imported without pulling numpy in with it.

    sqlite-utils imports numpy, when it is installed, only to map numpy's
    scalar types to column types; the PBX never stores a numpy value. numpy
    is installed (the media plugins use it), and importing it costs every
    process about 12 MB of resident memory, a tenth of a registrar holding
    100,000 bindings. So while sqlite-utils is imported, numpy is marked as
    unavailable (a None in `sys.modules` makes its import fail); a process
    that has already imported numpy gets the plain import.
    """
    if "sqlite_utils" in sys.modules or "numpy" in sys.modules:
        return importlib.import_module("sqlite_utils").Database  # type: ignore[no-any-return]
    sys.modules["numpy"] = None  # type: ignore[assignment]
    try:
        return importlib.import_module("sqlite_utils").Database  # type: ignore[no-any-return]
    finally:
        del sys.modules["numpy"]


if TYPE_CHECKING:
    from sqlite_utils import Database
else:
    Database = _import_sqlite_utils_without_numpy()

DATABASE_FILENAME: Final = "pbx.sqlite3"
"""The file's name inside the configured ``data_dir``."""

BUSY_TIMEOUT_MS: Final = 100
"""How long a write may wait for another process's lock before failing.

Writes run in the reactor thread; a failed commit keeps its changes pending
and is retried (`RETRY_INTERVAL_S`), which is better than stalling every call
for the 5 s default while someone holds the file open in a shell.
"""

PAGE_SIZE: Final = 1024
"""Bytes per database page of a database this PBX creates (SQLite's default is 4,096).

Every commit appends each page it changed, whole, to the WAL. A refreshed
binding changes a row of about 200 bytes in a random place of the table, so
with a commit every couple of milliseconds nearly every row written costs a
page of its own: with 1 KiB pages a registration writes a quarter of the bytes
(and SQLite checksums a quarter), which made saving one markedly cheaper
(docs/benchmarks.md, "Group commit"). A database created
before keeps its page size: changing it means rewriting the whole file
(``VACUUM`` outside WAL mode), not something to do at every start."""

WAL_AUTOCHECKPOINT_BYTES: Final = 64 * 1024 * 1024
"""How big the WAL may grow before a commit also copies it into the database.

That copy (a checkpoint) ends with an fsync, which holds the reactor thread
for milliseconds to tens of them; with a commit every couple of milliseconds
the WAL passes SQLite's default of 1,000 pages several times a second under
load, and the stalls cost retransmitted REGISTERs (docs/benchmarks.md, "Group
commit"). A checkpoint copies each page once however often it was written,
so checkpointing rarely costs little more each time. The WAL file grows to
about this size and stays that size; after a crash SQLite reads it back at
start-up. SQLite counts the limit in pages (`wal_autocheckpoint_pages_for`)."""


def wal_autocheckpoint_pages_for(page_size: int) -> int:
    """The ``wal_autocheckpoint`` (in pages) that lets the WAL reach `WAL_AUTOCHECKPOINT_BYTES`."""
    return WAL_AUTOCHECKPOINT_BYTES // page_size


GROUP_COMMIT_WINDOW_S: Final = 0.002
"""From the first change of a group to its commit: what a held 200 waits at most, besides
the commit itself. Everything recorded meanwhile shares the transaction."""

RETRY_INTERVAL_S: Final = 0.5
"""Between attempts while writing fails. Answers held meanwhile wait for the next attempt,
so a lock held for a moment delays them rather than failing them."""

FAILURE_REPORT_INTERVAL_S: Final = 60.0
"""While writing keeps failing, how often the failure is logged again."""

MAX_QUEUED_ROWS: Final = 10_000
"""Rows a `RowQueue` keeps while writing fails; past it the oldest are dropped (and logged),
so a disk that stays full costs bounded memory."""

Migration = Callable[[Database], None]
"""A schema step: runs inside the transaction that also records it as applied."""


class StoreError(Exception):
    """The database file cannot be used; the message names it. Nothing was overwritten."""


# -- migrations ------------------------------------------------------------------

def _create_bindings(db: Database) -> None:
    """Version 1: the location service's bindings (RFC 3261 §10.3), one row per contact."""
    db.create_table(
        "bindings",
        {
            "aor": str,
            "contact": str,
            "expires_at": float,
            "q": float,
            "call_id": str,
            "cseq": int,
            "transport": str,
            "source_host": str,
            "source_port": int,
            "connection_id": int,
            "instance_id": str,
            "reg_id": int,
            "user_agent": str,
            "updated_at": float,
        },
        pk=("aor", "contact"),
        not_null=(
            "aor", "contact", "expires_at", "call_id", "cseq", "transport",
            "source_host", "source_port", "updated_at",
        ),
        strict=True,
    )


def _create_cdr(db: Database) -> None:
    """Version 2: one call detail record per call, written when it ends."""
    db.create_table(
        "cdr",
        {
            "id": int,
            "call_id": str,
            "caller": str,
            "caller_name": str,
            "dialed": str,
            "targets": str,  # JSON list of what was tried, in order
            "answered_by": str,
            "started_at": float,
            "answered_at": float,
            "ended_at": float,
            "duration_s": float,  # answer to end; 0 for a call nobody answered
            "hangup_by": str,  # "caller", "callee" or "pbx"
            "status": int,  # 200 for an answered call, else the caller's final status
            "reason": str,
        },
        pk="id",
        not_null=("call_id", "caller", "dialed", "targets", "started_at", "ended_at"),
        strict=True,
    )
    db.execute("CREATE INDEX cdr_started_at ON cdr (started_at)")


def _add_bindings_reachable_as_given(db: Database) -> None:
    """Version 3: the registrar's verdict that a contact is called at its own address.

    Rows written before it get 0, the flow they were called through until
    now; the phone's next REGISTER decides again.
    """
    db.execute(
        "ALTER TABLE bindings ADD COLUMN reachable_as_given INTEGER NOT NULL DEFAULT 0"
    )


MIGRATIONS: Final[tuple[Migration, ...]] = (
    _create_bindings, _create_cdr, _add_bindings_reachable_as_given,
)
"""Applied in order; the schema version is how many have been applied. Append only."""


# -- the store --------------------------------------------------------------------

_BINDING_COLUMNS: Final = (
    "aor", "contact", "expires_at", "q", "call_id", "cseq", "transport", "source_host",
    "source_port", "connection_id", "instance_id", "reg_id", "user_agent", "updated_at",
    "reachable_as_given",
)
_binding_row: Final = attrgetter(*_BINDING_COLUMNS)

# sqlite-utils' upsert_all issues an INSERT OR IGNORE and then an UPDATE per
# row, in its own transaction per batch; the hot path wants one statement per
# row and one transaction per flush, so it goes through the same Database's
# connection with executemany. (Measured on 5,000 rows: see
# tests/unit/test_store.py::test_flush_of_5000_upserts_is_fast.)
_UPSERT_BINDING: Final = (
    f"INSERT INTO bindings ({', '.join(_BINDING_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _BINDING_COLUMNS)}) "
    "ON CONFLICT (aor, contact) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in _BINDING_COLUMNS[2:])
)
_DELETE_BINDING: Final = "DELETE FROM bindings WHERE aor = ? AND contact = ?"


class Store:
    """The PBX's one SQLite database. Build with `Store.open`; one per process."""

    def __init__(self, db: Database, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Store:
        """Open or create the database at ``path`` and bring its schema up to date.

        A file that is not SQLite, or is SQLite but not ours, raises
        `StoreError` before anything is written to it: the file may be
        someone's data put in the wrong place, and overwriting it would turn
        a configuration mistake into a loss.
        """
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{path}: cannot create its directory: {exc}") from exc
        _check_writable(path)
        try:
            db = Database(sqlite3.connect(path), execute_plugins=False)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open the database: {exc}") from exc
        try:
            _check_is_ours(db, path)
            if not db.table_names():
                # A new file: the page size can only be chosen before the first
                # table is made and before the journal becomes a WAL.
                db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            db.enable_wal()
            db.execute("PRAGMA synchronous=NORMAL")
            _migrate(db, path)
            _check_can_commit(db, path)
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
            db.execute(f"PRAGMA wal_autocheckpoint={wal_autocheckpoint_pages_for(page_size)}")
        except sqlite3.Error as exc:
            db.close()
            raise StoreError(f"{path}: {exc}") from exc
        except StoreError:
            db.close()
            raise
        return cls(db, path)

    @property
    def schema_version(self) -> int:
        return _schema_version(self._db)

    @property
    def busy_timeout_ms(self) -> int:
        """How long a write waits for another process's lock, as SQLite reports it."""
        return int(self._db.execute("PRAGMA busy_timeout").fetchone()[0])

    @property
    def wal_autocheckpoint_pages(self) -> int:
        """WAL pages before a commit checkpoints, as SQLite reports it."""
        return int(self._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0])

    def close(self) -> None:
        """Close the file. Flush any `BindingWriter` first: pending changes are not written."""
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- bindings ----------------------------------------------------------------

    def load_bindings(self, aor_of: Callable[[str], str] | None = None) -> list[Binding]:
        """Every stored binding, expired or not: `LocationService.load` sorts them out.

        ``aor_of`` maps a stored AOR to the str to keep (the service passes
        the config's own, so 100,000 bindings do not each hold a copy).
        """
        bindings = []
        for row in self._db.table("bindings").rows:
            try:
                if aor_of is not None and isinstance(row.get("aor"), str):
                    row["aor"] = aor_of(row["aor"])
                row["reachable_as_given"] = bool(row.get("reachable_as_given"))
                bindings.append(Binding(**row))
            except (TypeError, ValueError) as exc:
                raise StoreError(f"{self.path}: bad row in bindings {row!r}: {exc}") from exc
        return bindings

    def write(self, participants: Sequence[Participant]) -> None:
        """Write every participant's pending changes in one transaction: all or none.

        Any SQLite error (locked, disk full, read-only, I/O error) is raised
        as `StoreError` naming the file, after the transaction is rolled
        back; the participants keep their changes (`Participant.written` is
        called only after the COMMIT returned).
        """
        conn = self._db.conn
        try:
            if conn.in_transaction:
                conn.rollback()  # never commit the leftovers of a failed attempt
            conn.execute("BEGIN IMMEDIATE")
            for participant in participants:
                if participant.pending:
                    participant.write(conn)
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.rollback()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{self.path}: {exc}") from exc
            raise
        for participant in participants:
            if participant.pending:
                participant.written()

    def cdrs(self) -> list[dict[str, object]]:
        """Every call detail record, oldest first (for the admin and for tests)."""
        return list(self._db["cdr"].rows_where(order_by="id"))

    def write_bindings(
        self, upserts: Sequence[Binding], removals: Sequence[tuple[str, str]]
    ) -> None:
        """Apply a batch of binding changes in one transaction: all or none."""
        self.write([_BindingBatch(upserts, removals)])


CDR_COLUMNS: Final = (
    "call_id", "caller", "caller_name", "dialed", "targets", "answered_by", "started_at",
    "answered_at", "ended_at", "duration_s", "hangup_by", "status", "reason",
)
INSERT_CDR: Final = (
    f"INSERT INTO cdr ({', '.join(CDR_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in CDR_COLUMNS)})"
)
"""Inserts one call detail record, a tuple in `CDR_COLUMNS` order (`RowQueue`)."""


def _check_writable(path: Path) -> None:
    """Refuse, with the reason an administrator can act on, a folder or file we cannot write.

    SQLite opens a file it may not write read-only without a word, and in
    WAL mode it also needs to create ``-wal`` and ``-shm`` files beside it;
    either way the PBX would answer every REGISTER and save nothing, or fail
    to read a healthy file and call it unusable. Asking the file system
    first names the real problem (and leaves the database alone: it is
    fine, only its place is not).
    """
    folder = path.parent
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".pbx-write-check-"):
            pass
    except OSError as exc:
        raise StoreError(
            f"{path}: the folder {folder} is not writable ({_reason(exc)}); SQLite must create "
            f"{path.name}-wal and {path.name}-shm beside the database. The database is left "
            "as it is: make the folder writable for the user the PBX runs as, or move "
            "data_dir somewhere writable") from exc
    if not path.exists():
        return
    try:
        descriptor = os.open(path, os.O_RDWR)
    except OSError as exc:
        raise StoreError(
            f"{path}: the database file is read-only ({_reason(exc)}). It is left as it is: "
            "make it writable for the user the PBX runs as") from exc
    os.close(descriptor)


def _reason(error: OSError) -> str:
    """"read-only file system", "permission denied": what the operating system said."""
    if error.errno is not None and error.strerror:
        return f"{error.strerror.lower()}, {errno.errorcode.get(error.errno, error.errno)}"
    return str(error)


def _check_can_commit(db: Database, path: Path) -> None:
    """Commit one row unchanged, so that a database we cannot write stops start-up now.

    What the file system allows (`_check_writable`) is not all: a full disk
    or a file SQLite opened read-only show only when a transaction commits.
    """
    conn = db.conn
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE schema_version SET version = version")
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.rollback()
        raise StoreError(f"{path}: cannot write to the database: {exc}") from exc


def _check_is_ours(db: Database, path: Path) -> None:
    """Refuse a file that is not SQLite, or an SQLite database some other program made."""
    try:
        names = db.table_names()
    except sqlite3.DatabaseError as exc:
        raise StoreError(
            f"{path}: not a usable SQLite database ({exc}); "
            "left untouched: move it away or point data_dir elsewhere"
        ) from exc
    if names and "schema_version" not in names:
        raise StoreError(
            f"{path}: an SQLite database without a schema_version table, so not the PBX's; "
            "left untouched: move it away or point data_dir elsewhere"
        )


def _schema_version(db: Database) -> int:
    row = db.execute("SELECT version FROM schema_version").fetchone()
    return 0 if row is None else int(row[0])


def _migrate(db: Database, path: Path) -> None:
    """Apply the migrations this file lacks, each in a transaction with its version bump."""
    with db.atomic():
        if "schema_version" not in db.table_names():
            db.create_table("schema_version", {"version": int}, not_null=("version",),
                            strict=True)
            db.execute("INSERT INTO schema_version (version) VALUES (0)")
    version = _schema_version(db)
    if version > len(MIGRATIONS):
        raise StoreError(
            f"{path}: schema version {version} was written by a newer PBX "
            f"(this one knows up to {len(MIGRATIONS)}); refusing to use it"
        )
    for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
        with db.atomic():
            migration(db)
            db.execute("UPDATE schema_version SET version = ?", (number,))


# -- batched writes -----------------------------------------------------------------

class Participant(Protocol):
    """Changes written in the group's transaction (`GroupCommit.join`, `Store.write`)."""

    @property
    def pending(self) -> int:
        """How many changes wait; 0 leaves the participant out of the transaction."""

    def write(self, connection: sqlite3.Connection) -> None:
        """Execute the statements for what is pending (inside the transaction; no COMMIT).

        May raise `sqlite3.Error`: the transaction is then rolled back and
        the changes must still be pending for the next attempt.
        """

    def written(self) -> None:
        """The transaction that `write` joined is committed: forget what it wrote."""


class _BindingBatch:
    """Binding changes given as lists (`Store.write_bindings`), as a `Participant`."""

    def __init__(self, upserts: Sequence[Binding], removals: Sequence[tuple[str, str]]) -> None:
        self.upserts = upserts
        self.removals = removals

    @property
    def pending(self) -> int:
        return len(self.upserts) + len(self.removals)

    def write(self, connection: sqlite3.Connection) -> None:
        if self.upserts:
            connection.executemany(_UPSERT_BINDING, map(_binding_row, self.upserts))
        if self.removals:
            connection.executemany(_DELETE_BINDING, self.removals)

    def written(self) -> None:
        pass


class BindingWriter:
    """Writes the binding changes recorded in ``changes`` to the store (a `Participant`).

    The REGISTER path, the service's expiry sweep and reloads record into
    ``changes`` (`PendingBindings`, compiled, coalesced per (aor, contact));
    the group commit writes the net effect in its transaction, and `flush`
    writes it alone.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self.changes = PendingBindings()

    @property
    def pending(self) -> int:
        """Rows the next commit will write."""
        return len(self.changes)

    def write(self, connection: sqlite3.Connection) -> None:
        upserts, removals = self.changes.peek()
        if upserts:
            connection.executemany(_UPSERT_BINDING, map(_binding_row, upserts))
        if removals:
            connection.executemany(_DELETE_BINDING, removals)

    def written(self) -> None:
        self.changes.clear()

    def flush(self) -> int:
        """Write everything pending in one transaction of its own; returns the rows written.

        If the write fails (disk full, file locked) it raises `StoreError`,
        and nothing is lost from memory: the changes stay pending.
        """
        count = len(self.changes)
        if count:
            self._store.write([self])
        return count


class RowQueue:
    """Rows inserted by one statement, written in the group's transaction (a `Participant`).

    Call detail records go this way, and so can a plugin's own log-like
    table (`GroupCommit.rows`). While writing fails the rows are kept, up
    to ``limit``; past it the oldest are dropped, each drop counted and
    logged, so a disk that stays full costs bounded memory.
    """

    log = Logger(namespace="pbx.store")

    def __init__(self, statement: str, *, limit: int = MAX_QUEUED_ROWS,
                 on_append: Callable[[], None] | None = None) -> None:
        self.statement = statement
        self.limit = limit
        self.rows: list[Sequence[object]] = []
        self.dropped = 0
        self.on_append = on_append
        """Told of every row appended (the group commit schedules its transaction)."""

    @property
    def pending(self) -> int:
        return len(self.rows)

    def append(self, row: Sequence[object]) -> None:
        rows = self.rows
        if len(rows) >= self.limit:
            del rows[0]
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                self.log.error("Dropped {dropped} unsaved row(s) for {statement!r}: more than "
                               "{limit} waited while the database could not be written",
                               dropped=self.dropped, statement=self.statement[:40],
                               limit=self.limit)
        rows.append(row)
        if self.on_append is not None:
            self.on_append()

    def write(self, connection: sqlite3.Connection) -> None:
        connection.executemany(self.statement, self.rows)

    def written(self) -> None:
        self.rows.clear()


class GroupCommit:
    """Every change recorded within a few milliseconds, in one transaction; then the answers.

    See the module's notes ("Group commit"). The REGISTER path and the
    call's BYE hold their answers with `after_commit`; what has no answer
    to hold (an expired binding, a call the PBX ended) calls `schedule`.
    Times come from ``clock`` (the reactor, or a `twisted.internet.task.Clock`
    in tests).
    """

    log = Logger(namespace="pbx.store")

    def __init__(self, store: Store, clock: IReactorTime, *,
                 window_s: float = GROUP_COMMIT_WINDOW_S,
                 retry_s: float = RETRY_INTERVAL_S,
                 report_every_s: float = FAILURE_REPORT_INTERVAL_S) -> None:
        self.store = store
        self.clock = clock
        self.window_s = window_s
        self.retry_s = retry_s
        self.report_every_s = report_every_s
        self.participants: list[Participant] = []
        self.commits = 0
        """Transactions committed (for benchmarks and the admin)."""
        self._waiting: list[Callable[[bool], None]] = []
        self._timer: IDelayedCall | None = None
        self._closed = False
        self._failing_since: float | None = None
        self._failed_attempts = 0
        self._last_report = 0.0
        self._last_error = ""

    def join(self, participant: Participant) -> None:
        """Write `participant`'s changes in every transaction from now on."""
        self.participants.append(participant)

    def rows(self, statement: str, *, limit: int = MAX_QUEUED_ROWS) -> RowQueue:
        """A queue of rows for `statement` that joins the group and schedules it on append."""
        queue = RowQueue(statement, limit=limit, on_append=self.schedule)
        self.join(queue)
        return queue

    @property
    def pending(self) -> int:
        return sum(participant.pending for participant in self.participants)

    @property
    def failing(self) -> bool:
        """Whether the last attempt to write failed (and writing has not worked since)."""
        return self._failing_since is not None

    def schedule(self) -> None:
        """A change was recorded: commit within the window (or at the next retry while failing)."""
        if self._timer is None and not self._closed:
            delay = self.retry_s if self._failing_since is not None else self.window_s
            self._timer = self.clock.callLater(delay, self._on_timer)

    def after_commit(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(stored)`` after the next commit: True once it is on disk, else False."""
        if self._closed:
            callback(False)
            return
        self._waiting.append(callback)
        self.schedule()

    def when_stored(self) -> Deferred[None]:
        """A Deferred that fires once what was recorded so far is committed.

        It fails with `StoreError` if that commit fails (the changes stay
        pending and are retried; the answer that waited should say so).
        """
        stored: Deferred[None] = Deferred()

        def done(ok: bool) -> None:
            if ok:
                stored.callback(None)
            else:
                stored.errback(StoreError(f"{self.store.path}: not written ({self._last_error})"))

        self.after_commit(done)
        return stored

    def _on_timer(self) -> None:
        self._timer = None
        self.commit()

    def commit(self) -> bool:
        """Write everything pending now, then release the held answers; True when stored."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        waiting, self._waiting = self._waiting, []
        stored = True
        if not self._closed and self.pending:
            try:
                self.store.write(self.participants)
            except StoreError as error:
                stored = False
                self._failed(error)
            except Exception as error:
                # A fault of ours, not the disk's: logged with its traceback, and
                # the held answers are still released (as not stored).
                self.log.failure("Writing to the database failed unexpectedly")
                stored = False
                self._failed(StoreError(f"{self.store.path}: {error!r}"))
            else:
                self.commits += 1
                if self._failing_since is not None:
                    self._recovered()
        for callback in waiting:
            try:
                callback(stored)
            except Exception:
                self.log.failure("An answer waiting for the commit failed")
        if not stored:
            self.schedule()  # the retry
        return stored

    def close(self) -> None:
        """Stop scheduling (the store is about to close); held answers are told False."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        self._closed = True
        waiting, self._waiting = self._waiting, []
        for callback in waiting:
            callback(False)

    def _failed(self, error: StoreError) -> None:
        now = self.clock.seconds()
        self._failed_attempts += 1
        self._last_error = str(error)
        if self._failing_since is None:
            self._failing_since = self._last_report = now
            self.log.error(
                "Cannot save to the database: {error}. {pending} change(s) are kept in memory "
                "and retried every {retry_s} s; until saving works, REGISTERs that change "
                "a binding are answered 503", error=str(error), pending=self.pending,
                retry_s=self.retry_s)
        elif now - self._last_report >= self.report_every_s:
            self._last_report = now
            self.log.error(
                "Still cannot save to the database, for {seconds:.0f} s now ({attempts} "
                "attempts): {error}. {pending} change(s) wait in memory",
                seconds=now - self._failing_since, attempts=self._failed_attempts,
                error=str(error), pending=self.pending)

    def _recovered(self) -> None:
        assert self._failing_since is not None
        self.log.warn("Saving to {path} works again after {seconds:.1f} s and {attempts} failed "
                      "attempt(s); everything kept in memory is written",
                      path=str(self.store.path),
                      seconds=self.clock.seconds() - self._failing_since,
                      attempts=self._failed_attempts)
        self._failing_since = None
        self._failed_attempts = 0


__all__ = [
    "CDR_COLUMNS",
    "DATABASE_FILENAME",
    "GROUP_COMMIT_WINDOW_S",
    "INSERT_CDR",
    "MIGRATIONS",
    "PAGE_SIZE",
    "RETRY_INTERVAL_S",
    "WAL_AUTOCHECKPOINT_BYTES",
    "BindingWriter",
    "GroupCommit",
    "Migration",
    "Participant",
    "RowQueue",
    "Store",
    "StoreError",
    "wal_autocheckpoint_pages_for",
]
