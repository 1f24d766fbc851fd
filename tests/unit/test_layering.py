"""The layers of DESIGN.md, read from the source: imports point down, plugins use the API.

Two rules a reviewer cannot see in a diff, checked by walking every import
statement with `ast` (those inside functions and ``TYPE_CHECKING`` blocks
too: a layer that needs another only for typing still depends on it):

- the packages and top-level modules of `pbx` form no cycle, so each can be
  read, tested and replaced from the bottom up (``pbx/core`` and
  ``pbx/config`` used to import each other);
- the product's plugins (``plugins/``) and the dialplans (``dialplans/``)
  import nothing of `pbx` but its public API, `PUBLIC_API`: what they need
  from the core, the API grows.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from itertools import pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PUBLIC_API = ("pbx.dialplan", "pbx.media")
"""The modules (with their submodules) of `pbx` that plugins and dialplans may import;
docs/plugins.md lists the same. Grow it there and here together."""
OUTSIDE_THE_CORE = ("plugins", "dialplans")
"""Folders of code written on the public API only."""


def imported_modules(path: Path) -> Iterator[tuple[str, int]]:
    """Every absolute module `path` imports, with its line (``from a import b``: a and a.b)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, node.lineno
            for alias in node.names:
                if alias.name != "*":
                    yield f"{node.module}.{alias.name}", node.lineno


def unit_of(module: str) -> str | None:
    """The layer a module of `pbx` belongs to: its subpackage, or itself at the top."""
    parts = module.split(".")
    if parts[0] != "pbx" or len(parts) < 2:
        return None
    if (ROOT / "pbx" / parts[1]).is_dir():
        return f"pbx.{parts[1]}"
    if (ROOT / "pbx" / f"{parts[1]}.py").is_file():
        return f"pbx.{parts[1]}"
    return None  # a name imported from a module, not a module


def layer_graph() -> dict[str, dict[str, str]]:
    """unit -> {unit it imports: where (file:line of one such import)}."""
    graph: dict[str, dict[str, str]] = {}
    for path in sorted((ROOT / "pbx").rglob("*.py")):
        relative = path.relative_to(ROOT)
        if relative.name == "__init__.py" and len(relative.parts) == 2:
            continue  # pbx/__init__.py: the package itself, imported by everything
        source = unit_of(".".join(relative.with_suffix("").parts))
        assert source is not None, relative
        edges = graph.setdefault(source, {})
        for module, line in imported_modules(path):
            target = unit_of(module)
            if target is not None and target != source:
                edges.setdefault(target, f"{relative}:{line}")
    return graph


def find_cycle(graph: Mapping[str, Mapping[str, str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None (depth-first, white-grey-black)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for after in graph.get(node, {}):
            if state.get(after) == 1:
                return [*stack[stack.index(after):], after]
            if after not in state and (found := visit(after)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def test_the_layers_of_pbx_import_each_other_in_one_direction_only() -> None:
    graph = layer_graph()
    assert "pbx.core" in graph and "pbx.config" in graph  # the walk saw them

    cycle = find_cycle(graph)

    where = [] if cycle is None else [
        f"{a} -> {b} ({graph[a][b]})" for a, b in pairwise(cycle)]
    assert cycle is None, "import cycle: " + "; ".join(where)


def test_the_core_and_the_sip_library_never_read_the_config() -> None:
    """The service reads the config and hands the core plain values."""
    graph = layer_graph()
    for unit in ("pbx.sip", "pbx.core", "pbx.transport", "pbx.store"):
        assert "pbx.config" not in graph.get(unit, {}), graph[unit]["pbx.config"]
        assert "pbx.configtable" not in graph.get(unit, {}), graph[unit]["pbx.configtable"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"pbx.config": {"pbx.core": "pbx/config.py:1"},
             "pbx.core": {"pbx.sip": "x:1", "pbx.config": "pbx/core/plugins.py:9"},
             "pbx.sip": {}}

    assert find_cycle(graph) == ["pbx.config", "pbx.core", "pbx.config"]
    assert find_cycle({"a": {"b": ""}, "b": {}}) is None


# ----------------------------------------------------- plugins and dialplans


def forbidden_imports(folder: Path) -> list[str]:
    """Imports of `pbx` outside `PUBLIC_API` in every Python file under `folder`."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for module, line in sorted(imported_modules(path), key=lambda found: found[1]):
            allowed = any(module == api or module.startswith(api + ".") for api in PUBLIC_API)
            # "from pbx import dialplan" names pbx itself, then pbx.dialplan: only the first
            # stands alone, and is judged by what it imports.
            if module.split(".")[0] == "pbx" and module != "pbx" and not allowed:
                found.append(f"{path.relative_to(folder.parent)}:{line}: {module}")
    return found


@pytest.mark.parametrize("folder", OUTSIDE_THE_CORE)
def test_plugins_and_dialplans_import_only_the_public_api(folder: str) -> None:
    assert (ROOT / folder).is_dir()

    assert forbidden_imports(ROOT / folder) == []


def test_an_import_of_the_core_in_a_plugin_is_found(tmp_path: Path) -> None:
    plugin = tmp_path / "plugins" / "sneaky"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text(
        "from pbx.dialplan import Plugin\nfrom . import helpers\nimport json\n")
    (plugin / "helpers.py").write_text(
        "import pbx.media.g711\n"
        "def late():\n    from pbx.core.calls import CallManager\n"
        "from pbx import config, dialplan\n")

    assert forbidden_imports(tmp_path / "plugins") == [
        "plugins/sneaky/helpers.py:3: pbx.core.calls",
        "plugins/sneaky/helpers.py:3: pbx.core.calls.CallManager",
        "plugins/sneaky/helpers.py:4: pbx.config",
    ]
