"""Compile the hot path (`pbx.compiled.MODULES`) with mypyc, in place.

    .venv/bin/python tools/compile.py [--if-needed] [--remove]

``make`` runs it with --if-needed: nothing happens while every module has a
build newer than its source. The old builds are removed before a new one
starts, so a failed build leaves the modules running as Python, never
stale. --remove only removes them (back to pure Python). See pbx/compiled.py
for why and what compiled code may not do.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GROUP = "pbx"
"""mypyc's name for the shared library all compiled modules live in (``pbx__mypyc*.so``)."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--if-needed", action="store_true",
                        help="do nothing when every module has an up-to-date build")
    parser.add_argument("--remove", action="store_true", help="only remove the builds")
    args = parser.parse_args()
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    # Read the list without letting any compiled module load in this process.
    os.environ["PBX_PURE_PYTHON"] = "1"
    from pbx.compiled import MODULES, compiled_paths, source_path, stale_modules

    if args.if_needed and all(compiled_paths(m) for m in MODULES) and not stale_modules():
        return 0
    for module in MODULES:
        for built in compiled_paths(module):
            built.unlink()
    for shared in ROOT.glob(f"{GROUP}__mypyc*"):
        shared.unlink()
    if args.remove:
        return 0

    import warnings

    from mypyc.build import mypycify
    from setuptools import setup

    # setuptools reads the project's pyproject.toml on the way and warns about
    # packaging details that do not concern an in-place build.
    warnings.simplefilter("ignore")

    started = time.monotonic()
    print(f"compiling {len(MODULES)} modules with mypyc (a minute or two)...", flush=True)
    paths = [str(source_path(module).relative_to(ROOT)) for module in MODULES]
    try:
        setup(
            name="pbx-compiled",
            ext_modules=mypycify(paths, opt_level="3", group_name=GROUP),
            script_args=["--quiet", "build_ext", "--inplace",
                         "--build-temp", str(ROOT / "build" / "mypyc")],
        )
    except (SystemExit, Exception) as error:  # setup() exits on a compiler error
        print(f"tools/compile.py: compiling failed ({error}); the PBX runs as pure Python. "
              "Set PBX_COMPILE=0 to skip this step on a machine without a C compiler.",
              file=sys.stderr)
        return 1
    missing = [module for module in MODULES if not compiled_paths(module)]
    if missing:
        print(f"tools/compile.py: no build for {', '.join(missing)}", file=sys.stderr)
        return 1
    # A module's own .so is a small stub that setuptools may copy unchanged
    # from an earlier build, with that build's time: the stale check compares
    # times, so every output gets the time it was made at.
    for module in MODULES:
        for built in compiled_paths(module):
            os.utime(built)
    print(f"compiled in {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
