"""``kill -9`` during registrations and calls, N times: what was answered 200 and lost.

tests/interop/test_kill9.py kills the PBX three times of each kind to keep
the suite short; this runs the same rounds (its functions, SIPp, the real
``twistd``) as many times as asked and prints, per round, when the kill
came, how many REGISTERs (or call-ending BYEs) SIPp saw answered 200
before it, and how many of those the restarted PBX does not have.

    .venv/bin/python bench/kill9.py [--kills 10] [--keep DIR]

To measure another checkout (the code before group commit, say), run this
file with ``PYTHONPATH=that/checkout``: the helpers come from this file's
checkout, while the ``twistd`` it starts inherits the variable and runs the
PBX of that checkout.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.interop.conftest import (
    BackgroundSipp,
    Pbx,
    _sipp_command,
    free_port,
)
from tests.interop.test_kill9 import (
    CALL_KILL_AFTER_S,
    KILL_AFTER_S,
    REGISTRATIONS_PER_RUN,
    KillRound,
    kill_during_calls,
    kill_during_registrations,
)


@contextmanager
def started_pbx(root: Path, **options: Any) -> Iterator[Pbx]:
    pbx = Pbx(root=root, sip_port=free_port(), tls_port=free_port(), **options)
    pbx.start()
    try:
        yield pbx
    finally:
        if pbx.process is not None:
            pbx.stop()
        pbx.kill()


def start_sipp_in(started: list[BackgroundSipp]) -> Any:
    """The tests' `start_sipp` fixture, outside pytest."""
    import subprocess

    def start(work_dir: Path, scenario: str, local_port: int, calls: int, *,
              extra: tuple[str, ...] = (), timeout_s: int = 30) -> BackgroundSipp:
        command = _sipp_command(work_dir, scenario, None, transport="u1", rows=None,
                                local_port=local_port, calls=calls, limit=calls,
                                extra=extra, timeout_s=timeout_s)
        output_path = command.files["errors"].with_suffix(".out")
        with output_path.open("wb") as output:
            process = subprocess.Popen(command.command, cwd=work_dir, stdin=subprocess.DEVNULL,
                                       stdout=output, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        background = BackgroundSipp(process, command, output_path)
        started.append(background)
        return background

    return start


def report(kind: str, rounds: list[KillRound]) -> None:
    answered = sum(r.answered for r in rounds)
    lost = sum(len(r.missing) for r in rounds)
    for number, r in enumerate(rounds, 1):
        print(f"{kind} round {number}: killed after {r.killed_after_s:.2f} s, "
              f"{r.answered} answered 200, {len(r.missing)} missing after the restart"
              + (f" ({', '.join(r.missing[:5])}{'...' if len(r.missing) > 5 else ''})"
                 if r.missing else ""), flush=True)
    print(f"{kind}: {len(rounds)} kills, {answered} answered 200, {lost} missing "
          f"({lost / answered:.1%})" if answered else f"{kind}: nothing answered", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--keep", type=Path, help="work here and keep the logs")
    parser.add_argument("--only", choices=("registrations", "calls"))
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="pbx-kill9-"))
    moments = random.Random()
    if args.only != "calls":
        numbers = [f"{20000 + n}" for n in range(args.kills * REGISTRATIONS_PER_RUN)]
        with started_pbx(work / "registrations",
                         users={number: f"pw-{number}" for number in numbers}) as pbx:
            rounds = []
            for kill in range(args.kills):
                users = [(n, f"pw-{n}") for n in numbers[
                    kill * REGISTRATIONS_PER_RUN:(kill + 1) * REGISTRATIONS_PER_RUN]]
                rounds.append(kill_during_registrations(
                    pbx, work / "registrations" / f"sipp{kill}", users,
                    moments.uniform(*KILL_AFTER_S)))
        report("registrations", rounds)
    if args.only != "registrations":
        sipps: list[BackgroundSipp] = []
        with started_pbx(work / "calls") as pbx:
            rounds = [kill_during_calls(pbx, work / "calls" / f"run{kill}",
                                        start_sipp_in(sipps),
                                        moments.uniform(*CALL_KILL_AFTER_S))
                      for kill in range(args.kills)]
        for sipp in sipps:
            sipp.kill()
        report("calls", rounds)
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
