"""The hot path compiled to C with mypyc, and the pure Python it falls back to.

Why: every REGISTER and every call goes through the SIP core's parser, the
transaction layer, the registrar and digest checks. That code is strictly
typed (``mypy --strict``), and mypyc turns such modules into C extensions
that run the very same source markedly faster (docs/benchmarks.md, "Why
the hot path is written as it is"). Nothing in
the source is written for the compiler beyond what any typed Python obeys.

How: ``make`` builds the modules listed in `MODULES` in place (`tools/compile.py`,
next to each ``.py`` an ``.so`` Python prefers to it, and one shared library
at the top of the tree). A checkout without them, or a machine without a C
compiler, runs the same modules as Python.

Stale builds: an ``.so`` older than its ``.py`` holds old code. Python would
import it all the same, so `use_source_when_stale` (called when `pbx` is
imported) checks the modification times, and if any compiled module is
older than its source, or ``PBX_PURE_PYTHON=1`` is set, every module of the
list is imported from its source instead, and the reason is kept in
`MODE`. All or none: compiled modules call each other directly in C, so one
module taken from source while the others stay compiled would not be used
by them.

What compiled modules cannot do, and the code here therefore does not do:
objects of compiled classes take no weak references and no attributes
outside their slots; a fixed-size tuple has no identity (``is`` on two
such tuples is never true: compare a member); ``cls.__new__(cls)`` is not
available; a module's functions cannot be replaced by monkeypatching for
callers in other compiled modules.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

MODULES: tuple[str, ...] = (
    "pbx.sip.errors",
    "pbx.sip.status",
    "pbx.sip.peer",
    "pbx.sip.uri",
    "pbx.sip.headers",
    "pbx.sip.message",
    "pbx.sip.via",
    "pbx.sip.digest",
    "pbx.sip.digest_server",
    "pbx.sip.timers",
    "pbx.sip.events",
    "pbx.sip.transaction_base",
    "pbx.sip.transaction_server",
    "pbx.sip.transaction_client",
    "pbx.sip.transaction",
    "pbx.core.guard",
    "pbx.core.pike",
    "pbx.core.uas",
    "pbx.core.user_secrets",
    "pbx.core.auth",
    "pbx.core.location",
    "pbx.core.pending_bindings",
    "pbx.core.registrar",
    "pbx.core.merged_requests",
    "pbx.core.tags",
    "pbx.core.timers",
    "pbx.core.owners",
    "pbx.core.dispatcher",
    "pbx.core.endpoint",
    "pbx.transport.connections",
    "pbx.transport.datagrams",
)
"""The modules `tools/compile.py` compiles: the path of every request."""

PURE_PYTHON_VARIABLE = "PBX_PURE_PYTHON"

_ROOT = Path(__file__).resolve().parent.parent

MODE = "pure Python (not compiled)"
"""How the modules of `MODULES` run in this process, for the start-up log."""


def source_path(module: str, root: Path = _ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def compiled_paths(module: str, root: Path = _ROOT) -> list[Path]:
    """The extension files Python would load for `module` instead of its source."""
    source = source_path(module, root)
    return [candidate for suffix in importlib.machinery.EXTENSION_SUFFIXES
            if (candidate := source.with_suffix(suffix)).exists()]


def stale_modules(modules: Sequence[str] = MODULES, root: Path = _ROOT) -> list[str]:
    """Modules whose compiled file is older than their source (edited since `make`)."""
    stale = []
    for module in modules:
        source = source_path(module, root)
        for compiled in compiled_paths(module, root):
            if source.exists() and source.stat().st_mtime > compiled.stat().st_mtime:
                stale.append(module)
                break
    return stale


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the listed modules' ``.py`` files, ahead of their compiled ``.so``."""

    def __init__(self, modules: Sequence[str], root: Path) -> None:
        self.modules = frozenset(modules)
        self.root = root

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.modules:
            return None
        source = source_path(fullname, self.root)
        if not source.exists():
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def use_source_when_stale() -> str:
    """Decide, once per process, whether the compiled modules may be used (see above)."""
    global MODE
    if any(finder for finder in sys.meta_path if isinstance(finder, _SourceFinder)):
        return MODE
    built = [module for module in MODULES if compiled_paths(module)]
    if not built:
        MODE = "pure Python (not compiled: `make compile` builds the C extensions)"
        return MODE
    reason = None
    if os.environ.get(PURE_PYTHON_VARIABLE) == "1":
        reason = f"{PURE_PYTHON_VARIABLE}=1"
    elif stale := stale_modules():
        reason = (f"{len(stale)} compiled module(s) older than their source, "
                  f"{stale[0]} first: `make compile` rebuilds them")
    if reason is None:
        MODE = f"compiled with mypyc ({len(built)} modules)"
        return MODE
    already = [module for module in MODULES if module in sys.modules]
    if already:  # pragma: no cover - pbx/__init__ runs this before any of them
        raise ImportError(f"{already[0]} was imported before pbx.compiled could choose")
    sys.meta_path.insert(0, _SourceFinder(MODULES, _ROOT))
    MODE = f"pure Python ({reason})"
    return MODE
