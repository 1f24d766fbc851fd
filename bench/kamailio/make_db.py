"""Write the SQLite database bench/kamailio/kamailio.cfg authenticates against.

The schema is Kamailio 5.6's own (``/usr/share/kamailio/db_sqlite/``:
``version`` and ``subscriber`` at table version 7); passwords are stored in
plain text, as ``calculate_ha1`` wants them. The view ``htable_cred``
presents them in the columns of Kamailio's ``htable`` table (version 2), for
kamailio-htable.cfg, which loads them into memory once at start-up.

    python bench/kamailio/make_db.py DB_FILE DOMAIN USERS_CSV

USERS_CSV is a SIPp injection file: a first line (SEQUENTIAL or RANDOM),
then ``user;password;domain`` per line. Importable: `make_db(path, domain, users)`.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterable
from pathlib import Path

SCHEMA = """
CREATE TABLE version (
    id INTEGER PRIMARY KEY NOT NULL,
    table_name VARCHAR(32) NOT NULL,
    table_version INTEGER DEFAULT 0 NOT NULL,
    CONSTRAINT version_table_name_idx UNIQUE (table_name)
);
INSERT INTO version (table_name, table_version) VALUES ('version', '1');
CREATE TABLE subscriber (
    id INTEGER PRIMARY KEY NOT NULL,
    username VARCHAR(64) DEFAULT '' NOT NULL,
    domain VARCHAR(64) DEFAULT '' NOT NULL,
    password VARCHAR(64) DEFAULT '' NOT NULL,
    ha1 VARCHAR(128) DEFAULT '' NOT NULL,
    ha1b VARCHAR(128) DEFAULT '' NOT NULL,
    CONSTRAINT subscriber_account_idx UNIQUE (username, domain)
);
CREATE INDEX subscriber_username_idx ON subscriber (username);
INSERT INTO version (table_name, table_version) VALUES ('subscriber', '7');
CREATE VIEW htable_cred AS
    SELECT id, username AS key_name, 0 AS key_type, 0 AS value_type,
           password AS key_value, 0 AS expires
    FROM subscriber;
INSERT INTO version (table_name, table_version) VALUES ('htable_cred', '2');
"""


def make_db(path: Path, domain: str, users: Iterable[tuple[str, str]]) -> None:
    """Create `path` afresh with one subscriber per (user, password)."""
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA)
        db.executemany(
            "INSERT INTO subscriber (username, domain, password) VALUES (?, ?, ?)",
            ((user, domain, password) for user, password in users))
    db.close()


def main() -> None:
    db_file, domain, csv_file = sys.argv[1:4]
    lines = Path(csv_file).read_text().splitlines()[1:]
    make_db(Path(db_file), domain,
            (tuple(line.split(";")[:2]) for line in lines if line))  # type: ignore[misc]


if __name__ == "__main__":
    main()
