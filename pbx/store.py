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
  one phone coalesce into one row, and the service flushes them in one
  transaction every fraction of a second. A crash loses what was pending;
  phones re-register anyway.
"""

from __future__ import annotations

import importlib
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Final

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

Writes run in the reactor thread; a failed flush keeps its changes pending
and is retried on the next tick, which is better than stalling every call
for the 5 s default while someone holds the file open in a shell.
"""

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
        try:
            db = Database(sqlite3.connect(path), execute_plugins=False)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open the database: {exc}") from exc
        try:
            _check_is_ours(db, path)
            db.enable_wal()
            db.execute("PRAGMA synchronous=NORMAL")
            _migrate(db, path)
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
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

    def write_cdrs(self, rows: Sequence[Sequence[object]]) -> None:
        """Append call detail records (tuples in `_CDR_COLUMNS` order), in one transaction."""
        with self._db.atomic():
            self._db.conn.executemany(_INSERT_CDR, rows)

    def cdrs(self) -> list[dict[str, object]]:
        """Every call detail record, oldest first (for the admin and for tests)."""
        return list(self._db["cdr"].rows_where(order_by="id"))

    def write_bindings(
        self, upserts: Sequence[Binding], removals: Sequence[tuple[str, str]]
    ) -> None:
        """Apply a batch of binding changes in one transaction: all or none."""
        with self._db.atomic():
            conn = self._db.conn
            if upserts:
                conn.executemany(_UPSERT_BINDING, map(_binding_row, upserts))
            if removals:
                conn.executemany(_DELETE_BINDING, removals)


_CDR_COLUMNS: Final = (
    "call_id", "caller", "caller_name", "dialed", "targets", "answered_by", "started_at",
    "answered_at", "ended_at", "duration_s", "hangup_by", "status", "reason",
)
_INSERT_CDR: Final = (
    f"INSERT INTO cdr ({', '.join(_CDR_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _CDR_COLUMNS)})"
)


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

class BindingWriter:
    """Writes the binding changes recorded in ``changes`` to the store, a batch at a time.

    The REGISTER path, the service's expiry sweep and reloads record into
    ``changes`` (`PendingBindings`, compiled, coalesced per (aor, contact));
    `flush` writes the net effect in one transaction.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self.changes = PendingBindings()

    @property
    def pending(self) -> int:
        """Rows the next flush will write."""
        return len(self.changes)

    def flush(self) -> int:
        """Write everything pending in one transaction; returns the rows written.

        If the write fails (disk full, file locked), nothing is lost from
        memory: the changes stay pending for the next flush, and the error
        goes to the caller to log.
        """
        if not len(self.changes):
            return 0
        upserts, removals = self.changes.peek()
        self._store.write_bindings(upserts, removals)
        self.changes.clear()
        return len(upserts) + len(removals)


__all__ = [
    "DATABASE_FILENAME",
    "MIGRATIONS",
    "BindingWriter",
    "Migration",
    "Store",
    "StoreError",
]
