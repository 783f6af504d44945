"""The package's shape (issue 14): module and function sizes, no import cycles, a core that needs only torch/numpy.

Imports are read from the source with :mod:`ast`, including those inside functions (a lazy import still ties two
modules together); ``if TYPE_CHECKING:`` blocks are ignored (they never run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "nnteleport"
MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 150


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path) -> set[str]:
    """Package modules that ``name`` imports, anywhere in its source (``from a import b`` counts ``a.b`` when
    ``a.b`` is a module, else ``a``)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                for a in child.names:
                    found.add(a.name)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    mod = ".".join([*base, child.module] if child.module else base)
                else:
                    mod = child.module or ""
                for a in child.names:
                    found.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod)
            visit(child)

    visit(tree)
    out = set()
    for mod in found:
        while mod and mod not in MODULES:
            mod = mod.rpartition(".")[0]
        if mod and mod != name:
            out.add(mod)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(GRAPH[v]):
            # a package's __init__ importing its own submodules (re-exports) is not a cycle with them unless a
            # submodule imports the package back
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles():
    assert _cycles() == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    n = len(MODULES[name].read_text().splitlines())
    assert n <= MAX_MODULE_LINES, f"{name}: {n} lines > {MAX_MODULE_LINES}; split it along its concepts"


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            yield node.name, node.lineno, node.end_lineno - start + 1


@pytest.mark.parametrize("name", sorted(MODULES))
def test_function_size(name):
    long = [f"{f} (line {line}): {n} lines" for f, line, n in _functions(MODULES[name]) if n > MAX_FUNCTION_LINES]
    assert not long, f"{name}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_core_never_imports_the_lab():
    cli = ("nnteleport.lab", "nnteleport.cli", "nnteleport._commands", "nnteleport.__main__")  # the application
    core = [m for m in MODULES if not m.startswith(cli)]
    bad = {m: sorted(d for d in GRAPH[m] if d.startswith("nnteleport.lab")) for m in core}
    assert {m: d for m, d in bad.items() if d} == {}


def test_engine_imports_only_the_engine_and_the_shared_base():
    allowed = ("nnteleport.engine", "nnteleport.errors", "nnteleport._choice")
    bad = {m: sorted(d for d in GRAPH[m] if not d.startswith(allowed)) for m in MODULES if m.startswith(allowed[0])}
    assert {m: d for m, d in bad.items() if d} == {}


def test_import_engine_loads_only_torch_and_numpy():
    """``import nnteleport.engine`` adds no third-party module to what ``import torch, numpy`` loads."""
    code = (
        "import sys, torch, numpy\n"
        "before = set(sys.modules)\n"
        "import nnteleport.engine\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(new - {'nnteleport'} - set(sys.stdlib_module_names)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_cycle_finder_finds_a_cycle(monkeypatch):
    """The check itself can fail: a planted back edge is reported."""
    monkeypatch.setitem(GRAPH, "nnteleport.errors", GRAPH["nnteleport.errors"] | {"nnteleport._choice"})
    assert ["nnteleport._choice", "nnteleport.errors"] in _cycles()
