"""The database as an operator's machine breaks it: read-only at start-up, a full disk.

Each PBX runs under ``twistd`` in a mount namespace of its own (``unshare
-m``), where the test mounts what breaks it: the data folder, or only the
database file, bound read-only; or a small tmpfs as the data folder, filled
up while the PBX runs. Nothing is mocked: SQLite meets EROFS and ENOSPC from
the kernel. Root is needed for the mounts (CI runs as root).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.interop.conftest import (
    TWISTD,
    USERS,
    Pbx,
    free_port,
    requires_sipp,
    run_sipp,
    wait_for,
)
from tests.service.test_twistd import answer_to_options

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                       reason="needs root and unshare(1) to mount in a namespace of its own"),
]

READ_ONLY_BIND = ('mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"')
"""sh -c script: bind the path in $0 read-only onto itself, then run the command."""

TMPFS_SIZE = "2m"
SMALL_TMPFS = ('mkdir -p "$0" && mount -t tmpfs -o size=' + TMPFS_SIZE
               + ' pbx-test "$0" && exec "$@"')
"""sh -c script: mount a small tmpfs on the folder in $0, then run the command."""


def in_own_mounts(script: str, path: Path) -> list[str]:
    """A command prefix: a new mount namespace where `script` mounts `path`, then the command."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(path)]


def healthy_database(pbx: Pbx) -> bytes:
    """The database a clean run left, all of it in the main file (no -wal to replay)."""
    pbx.start()
    assert pbx.process is not None
    # Running (its signal handlers set): it answers, then stops cleanly on SIGTERM.
    assert answer_to_options(pbx.process, pbx.log_path, pbx.sip_port).startswith(
        b"SIP/2.0 200")
    pbx.stop()
    with contextlib.closing(sqlite3.connect(pbx.database)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file
    return pbx.database.read_bytes()


def start_refused(pbx: Pbx, mounted: Path, script: str) -> str:
    """Start `pbx` with `mounted` read-only; it must exit at once; what it printed and logged."""
    earlier = len(pbx.log())
    result = subprocess.run(
        [*in_own_mounts(script, mounted), str(TWISTD), "-n", "--pidfile",
         str(pbx.root / "twistd.pid"), "--logfile", str(pbx.log_path), "pbx", "--config",
         str(pbx.config_path)],
        cwd=pbx.root, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        check=False)
    assert result.returncode != 0, pbx.log()[earlier:]
    assert "Listening for SIP" not in pbx.log()[earlier:]
    return result.stdout + result.stderr + pbx.log()[earlier:]


def test_a_read_only_data_folder_stops_start_up_saying_so(tmp_path: Path) -> None:
    pbx = Pbx(root=tmp_path / "pbx", sip_port=free_port(), tls_port=free_port())
    content = healthy_database(pbx)

    printed = start_refused(pbx, pbx.data_dir, READ_ONLY_BIND)

    assert (f"{pbx.config_path}: pbx.data_dir: {pbx.database}: the folder {pbx.data_dir} "
            "is not writable (read-only file system, EROFS)") in printed
    # Not "not a usable SQLite database ... move it away": that would drop every binding.
    assert "move it away" not in printed and "not a usable" not in printed
    assert pbx.database.read_bytes() == content


def test_a_read_only_database_file_stops_start_up_saying_so(tmp_path: Path) -> None:
    pbx = Pbx(root=tmp_path / "pbx", sip_port=free_port(), tls_port=free_port())
    content = healthy_database(pbx)

    printed = start_refused(pbx, pbx.database, READ_ONLY_BIND)

    # It started, answered 200 to every REGISTER and saved nothing.
    assert (f"{pbx.config_path}: pbx.data_dir: {pbx.database}: the database file is "
            "read-only (read-only file system, EROFS)") in printed
    assert pbx.database.read_bytes() == content


class FullDiskPbx(Pbx):
    """A PBX whose data folder is a 2 MB tmpfs in its own mount namespace.

    The folder exists only inside that namespace: the test reads and fills
    it through ``nsenter`` into the PBX's mounts.
    """

    def inside(self, *command: str) -> subprocess.CompletedProcess[str]:
        """Run `command` in the PBX's mounts (where its data folder is the tmpfs)."""
        assert self.process is not None
        return subprocess.run(["nsenter", "-t", str(self.process.pid), "-m", *command],
                              capture_output=True, text=True, timeout=30, check=False)

    def bindings(self) -> list[dict[str, object]]:
        query = ("import json, sqlite3, sys; db = sqlite3.connect(sys.argv[1]); "
                 "print(json.dumps([r[0] for r in db.execute('SELECT aor FROM bindings')]))")
        result = self.inside(sys.executable, "-c", query, str(self.database))
        assert result.returncode == 0, result.stderr
        return [{"aor": aor} for aor in json.loads(result.stdout)]


@requires_sipp
def test_a_full_disk_answers_503_keeps_the_change_and_saves_it_once_there_is_room(
        tmp_path: Path) -> None:
    pbx = FullDiskPbx(root=tmp_path / "pbx", sip_port=free_port(), tls_port=free_port())
    pbx.command_prefix = tuple(in_own_mounts(SMALL_TMPFS, pbx.data_dir))
    try:
        pbx.start()
        first = run_sipp(tmp_path / "sipp", "register_auth.xml", pbx.sip_port)
        assert first.returncode == 0, first.output + first.errors

        # Empty the WAL first: with 1 KiB pages, new frames could otherwise fit in
        # the slack of the WAL's last tmpfs page, and the change would be stored.
        emptied = pbx.inside(sys.executable, "-c", (
            "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); "
            "print(db.execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchone()[0])"),
            str(pbx.database))
        assert emptied.stdout.strip() == "0", emptied.stdout + emptied.stderr
        filled = pbx.inside("sh", "-c", f'cat /dev/zero > "{pbx.data_dir}/filler"')
        assert "No space left on device" in filled.stderr
        refused = run_sipp(tmp_path / "sipp", "register_auth.xml", pbx.sip_port,
                           users=[("1002", USERS["1002"])])

        assert refused.returncode != 0
        assert "received 'SIP/2.0 503 Registration not stored" in refused.errors
        assert "Retry-After: 5" in refused.messages
        log = pbx.log()
        assert log.count("Cannot save to the database") == 1, log
        assert "database or disk is full" in log
        assert [row["aor"] for row in pbx.bindings()] == ["1001"]

        pbx.inside("rm", f"{pbx.data_dir}/filler")
        wait_for(lambda: "Saving to " in pbx.log(), 10, "saving to work again")
        # The change kept in memory is on disk now, without the phone asking again.
        assert sorted(row["aor"] for row in pbx.bindings()) == ["1001", "1002"]
        again = run_sipp(tmp_path / "sipp", "register_auth.xml", pbx.sip_port,
                         users=[("1002", USERS["1002"])])
        assert again.returncode == 0, again.output + again.errors
        pbx.stop()
        assert pbx.log().count("Cannot save to the database") == 1
    finally:
        pbx.kill()
