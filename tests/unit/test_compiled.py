"""The compiled hot path is used when built and current, and never when stale (`pbx.compiled`)."""

from __future__ import annotations

import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pbx.compiled
import pbx.sip.message
from pbx.compiled import MODULES, compiled_paths, source_path, stale_modules

BUILT = all(compiled_paths(module) for module in MODULES)
PURE = os.environ.get(pbx.compiled.PURE_PYTHON_VARIABLE) == "1"


def fake_module(root: Path, *, source_age_s: float, build_age_s: float) -> None:
    package = root / "pbx" / "sip"
    package.mkdir(parents=True)
    source = package / "probe.py"
    source.write_text("VALUE = 1\n")
    built = package / f"probe{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    built.write_bytes(b"")
    now = 1_800_000_000.0
    os.utime(source, (now - source_age_s, now - source_age_s))
    os.utime(built, (now - build_age_s, now - build_age_s))


def test_a_source_edited_after_its_build_makes_the_build_stale(tmp_path: Path) -> None:
    fake_module(tmp_path, source_age_s=10, build_age_s=60)
    assert stale_modules(["pbx.sip.probe"], tmp_path) == ["pbx.sip.probe"]


def test_a_build_newer_than_its_source_is_current(tmp_path: Path) -> None:
    fake_module(tmp_path, source_age_s=60, build_age_s=10)
    assert stale_modules(["pbx.sip.probe"], tmp_path) == []
    assert source_path("pbx.sip.probe", tmp_path).exists()


def test_this_process_runs_what_the_mode_says() -> None:
    loaded_from = Path(pbx.sip.message.__file__ or "")
    if BUILT and not PURE and not stale_modules():
        assert pbx.compiled.MODE.startswith("compiled"), pbx.compiled.MODE
        assert loaded_from.suffix == ".so"
    else:
        assert pbx.compiled.MODE.startswith("pure Python"), pbx.compiled.MODE
        assert loaded_from.suffix == ".py"


@pytest.mark.skipif(not BUILT, reason="no compiled build (make compile)")
def test_a_stale_build_is_passed_over_for_every_listed_module() -> None:
    # A fresh process, where pbx.compiled is told one module is stale: then
    # every listed module comes from its source, not only that one.
    probe = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('probe', {str(pbx.compiled.__file__)!r})\n"
        "probe = importlib.util.module_from_spec(spec); spec.loader.exec_module(probe)\n"
        "probe.stale_modules = lambda *args: ['pbx.core.location']\n"
        "print(probe.use_source_when_stale())\n"
        "import pbx.sip.message, pbx.core.endpoint\n"
        "print(pbx.sip.message.__file__, pbx.core.endpoint.__file__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != pbx.compiled.PURE_PYTHON_VARIABLE}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env=env, check=True)
    mode, files = result.stdout.splitlines()
    assert "pbx.core.location" in mode and mode.startswith("pure Python")
    assert all(name.endswith(".py") for name in files.split()), files


HOT_CLASSES = [
    ("pbx.core.location", "Binding"), ("pbx.core.location", "UpdateResult"),
    ("pbx.sip.digest", "Credentials"), ("pbx.core.registrar", "RegisterOutcome"),
    ("pbx.core.auth", "Denied"),
    ("pbx.sip.headers", "Via"), ("pbx.sip.headers", "NameAddr"),
]


@pytest.mark.skipif(not pbx.compiled.MODE.startswith("compiled"), reason="runs as Python")
@pytest.mark.parametrize(("module", "name"), HOT_CLASSES)
def test_objects_made_on_every_request_are_built_by_compiled_code(module: str, name: str) -> None:
    # A dataclass's generated __init__ stays an interpreted function even in
    # a compiled module (~0.5-1 µs a call); these classes write theirs out.
    import importlib
    import types

    cls = getattr(importlib.import_module(module), name)
    assert not isinstance(cls.__init__, types.FunctionType), f"{module}.{name}.__init__"
