"""The package's imports: every module imports on its own, and no module imports one that imports it back.

The graph counts imports inside functions too: a cycle hidden in a function is still a cycle
(it only moves the failure from import time to the first call). Imports under
`if TYPE_CHECKING:` count as well: they never run, but two modules that name each other's types
still cannot be read or changed apart (a module names what it needs of another in a Protocol).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_modules() -> dict[str, Path]:
    """Every module of the distribution (name -> source file), from pyproject's package layout."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = setup["package-dir"]
    modules: dict[str, Path] = {}
    for package in setup["packages"]:
        mapped = max((p for p in dirs if package == p or package.startswith(p + ".")), key=len)
        folder = ROOT / dirs[mapped] / Path(*package[len(mapped) :].split(".")[1:])
        for path in sorted(folder.glob("*.py")):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


MODULES = package_modules()


def imported_modules(name: str, path: Path) -> set[str]:
    """The package's modules that `name` imports, anywhere in its source."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{node.module}" if node.module else anchor
            for alias in node.names:  # `from pkg import module` imports the module
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


def test_imports_in_functions_and_under_type_checking_count(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .backend import Backend\n"
        "def f():\n    from . import errors\n"
    )
    assert imported_modules("shaderbay.probe", source) == {"shaderbay.backend", "shaderbay.errors"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    graph = {name: imported_modules(name, path) for name, path in MODULES.items()}
    assert "shaderbay.backends.vulkan.backend" in graph["shaderbay.backends.vulkan.plugin"]  # the graph sees imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# One interpreter, forgetting every shaderbay module before each import: each import then runs
# the module's own import chain from scratch, as a first `import` in a fresh process would.
_IMPORT_EACH = """
import importlib, json, sys, traceback
failures = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "shaderbay" or m.startswith("shaderbay.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException:
        failures[name] = traceback.format_exc(limit=-3)
print(json.dumps(failures))
"""


def test_each_module_imports_on_its_own():
    names = [n for n in MODULES if not n.endswith(".__main__")]  # __main__ runs a command
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, json.dumps(names)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    failures = json.loads(proc.stdout.splitlines()[-1])
    assert not failures, "\n".join(f"{name}:\n{tb}" for name, tb in failures.items())
