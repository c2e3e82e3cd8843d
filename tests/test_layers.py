"""The import graph of everything flowproof installs, read with `ast`: every import points down
the layers, no module imports another inside a function or class, and there is no cycle between
modules or between packages (docs/design.md, "Layout").

    flowproof (cli, demo, workload, ...)        the command line, the demo, the workload
    flowproof.verifier                          may use the publisher's API (smoke's canaries)
    flowproof.publisher   flowproof.consumers   side by side: neither imports the other
    flowproof.schemas
    flowproof.core                              imports no other flowproof package
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LAYERS = {
    "flowproof.core": 0,
    "flowproof.schemas": 1,
    "flowproof.publisher": 2,
    "flowproof.consumers": 2,
    "flowproof.verifier": 3,
    "flowproof": 4,  # the modules directly in flowproof/: the top
}


@dataclass(frozen=True)
class Import:
    module: str
    target: str
    line: int
    nested: bool  # inside a function or class


def installed_modules() -> dict[str, Path]:
    """Every module flowproof installs, by its import name (pyproject's package-dir)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    modules: dict[str, Path] = {}
    for package in config["packages"]:
        folder = ROOT / config["package-dir"].get(package, "")
        if package not in config["package-dir"]:
            parent, _, rest = package.rpartition(".")
            while parent not in config["package-dir"]:
                parent, _, more = parent.rpartition(".")
                rest = f"{more}.{rest}"
            folder = ROOT / config["package-dir"][parent] / rest.replace(".", "/")
        for path in sorted(folder.glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            modules[name] = path
    return modules


def _imports(module: str, path: Path, known: dict[str, Path]) -> Iterator[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    nested_nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            nested_nodes.update(id(inner) for inner in ast.walk(node) if inner is not node)
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from a.b import c` imports the module a.b.c when there is one, else a.b
            names = [
                f"{node.module}.{alias.name}"
                if f"{node.module}.{alias.name}" in known
                else node.module
                for alias in node.names
            ]
        for name in names:
            if name == "flowproof" or name.startswith("flowproof."):
                yield Import(module, name, node.lineno, id(node) in nested_nodes)


def package_of(module: str) -> str:
    for package in sorted(LAYERS, key=len, reverse=True):
        if module == package or module.startswith(f"{package}."):
            return package
    raise AssertionError(f"{module} is in no layer")


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    known = installed_modules()
    assert "flowproof.publisher.relay" in known and "flowproof.core.config" in known, known
    found = [i for module, path in known.items() for i in _imports(module, path, known)]
    assert len(found) > 100, "the scan found too few imports to be looking at the code"
    return found


def test_every_import_points_down(imports: list[Import]) -> None:
    wrong = []
    for each in imports:
        if each.target == "flowproof":  # the package itself (its version)
            continue
        source, target = package_of(each.module), package_of(each.target)
        if source != target and LAYERS[target] >= LAYERS[source]:
            wrong.append(f"{each.module}:{each.line} imports {each.target} ({source} -> {target})")
    assert not wrong, "imports that do not point down the layers:\n" + "\n".join(wrong)


def test_no_import_is_hidden_in_a_function_or_class(imports: list[Import]) -> None:
    hidden = [f"{i.module}:{i.line} imports {i.target}" for i in imports if i.nested]
    assert not hidden, "imports inside a function or class:\n" + "\n".join(hidden)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_cycle_between_modules(imports: list[Import]) -> None:
    edges: dict[str, set[str]] = {}
    for each in imports:
        if each.target != each.module:
            edges.setdefault(each.module, set()).add(each.target)
    assert not _cycles(edges), f"import cycles between modules: {_cycles(edges)}"


def test_no_cycle_between_packages(imports: list[Import]) -> None:
    edges: dict[str, set[str]] = {}
    for each in imports:
        source, target = package_of(each.module), package_of(each.target)
        if source != target:
            edges.setdefault(source, set()).add(target)
    assert not _cycles(edges), f"import cycles between packages: {_cycles(edges)}"


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
