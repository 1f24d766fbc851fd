"""How long the binding writer's flush of 5,000 upserts takes on this machine.

The hot path writes bindings with one transaction of executemany; this
prints the time of a flush of 5,000 inserts and of three flushes of 5,000
updates of the same rows (sqlite-utils' ``upsert_all`` took 55-100 ms for
them on the shared 2-core machine of 2026-12, against 20-45 ms for the
writer, which is why the hot path does not use it). Run on a quiet machine:

    .venv/bin/python bench/store_flush.py [--rounds 4] [--rows 5000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pbx.core.location import Binding
from pbx.store import BindingWriter, Store


def binding(index: int, cseq: int) -> Binding:
    return Binding(
        aor=f"{10000 + index}", contact=f"sip:{10000 + index}@10.1.{index >> 8}.{index & 255}:5060",
        expires_at=4600.0, q=None, call_id=f"{index:032x}@10.1.0.1", cseq=cseq,
        transport="udp", source_host="203.0.113.7", source_port=5060, connection_id=None,
        instance_id=None, reg_id=None, user_agent="Yealink SIP-T46S 66.86.0.15",
        updated_at=1000.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=4, help="first inserts, then updates")
    parser.add_argument("--rows", type=int, default=5000)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, \
            Store.open(Path(folder) / "pbx.sqlite3") as store:
        writer = BindingWriter(store)
        for round_number in range(arguments.rounds):
            for index in range(arguments.rows):
                writer.changes.record_update(binding(index, round_number + 1))
            started = time.perf_counter()
            written = writer.flush()
            took = time.perf_counter() - started
            kind = "inserts" if round_number == 0 else "updates"
            print(f"flush of {written:,} upserts ({kind}): {took * 1000:.1f} ms")


if __name__ == "__main__":
    main()
