"""Freed heap memory goes back to the kernel when the service asks (glibc)."""

from __future__ import annotations

import platform
import re
import subprocess
import sys

import pytest

from pbx.memory import CollectionPauses, give_back_free_memory


def resident_kb() -> int:
    with open("/proc/self/status") as status:
        found = re.search(r"VmRSS:\s+(\d+)", status.read())
    assert found is not None
    return int(found.group(1))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_blocks_in_the_middle_of_the_heap_are_returned() -> None:
    # 2 KB blocks come from malloc, not Python's small-object arenas. Keeping
    # every 64th pins the heap's top, so glibc cannot shrink it by itself.
    blocks = [bytes(2048) + bytes([n % 256]) for n in range(40_000)]
    kept = blocks[::64]
    del blocks
    before = resident_kb()
    assert give_back_free_memory()
    after = resident_kb()
    assert before - after > 30_000, (before, after)  # of ~80 MB freed
    assert len(kept) == 625


def test_the_service_loads_neither_numpy_nor_autobahn_until_needed() -> None:
    # numpy (through sqlite-utils) and autobahn cost ~17 MB resident in every
    # process; a registrar on UDP uses neither. numpy must stay importable.
    check = (
        "import sys, pbx.service, pbx.store\n"
        "assert 'numpy' not in sys.modules, 'numpy'\n"
        "assert 'autobahn' not in sys.modules, 'autobahn'\n"
        "import numpy\n"
        "assert numpy.zeros(2).sum() == 0\n"
        "import sqlite_utils.db\n"
        "assert sqlite_utils.db.np is None\n"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_long_collections_are_reported_and_short_ones_are_not() -> None:
    now = [0.0]
    reported: list[tuple[int, float, int]] = []
    pauses = CollectionPauses(lambda *args: reported.append(args), threshold_s=0.1,
                              clock=lambda: now[0])
    pauses("start", {"generation": 0})
    now[0] += 0.002
    pauses("stop", {"generation": 0, "collected": 3})
    pauses("start", {"generation": 2})
    now[0] += 0.25
    pauses("stop", {"generation": 2, "collected": 1000})
    assert reported == [(2, pytest.approx(0.25), 1000)]


def test_by_default_a_pause_over_the_50_ms_budget_is_reported() -> None:
    now = [0.0]
    reported: list[tuple[int, float, int]] = []
    pauses = CollectionPauses(lambda *args: reported.append(args), clock=lambda: now[0])
    for generation, took in ((1, 0.045), (2, 0.055)):
        pauses("start", {"generation": generation})
        now[0] += took
        pauses("stop", {"generation": generation, "collected": 1})
    assert reported == [(2, pytest.approx(0.055), 1)]


def test_the_collector_calls_it_while_installed() -> None:
    import gc

    reported: list[tuple[int, float, int]] = []
    pauses = CollectionPauses(lambda *args: reported.append(args), threshold_s=0.0)
    pauses.install()
    try:
        gc.collect()
    finally:
        pauses.uninstall()
    assert reported and reported[-1][0] == 2
    gc.collect()
    assert len(reported) == 1 and pauses not in gc.callbacks
