"""The package's floors: every import points down (or sideways within a floor), and no import cycle exists.

Read from the source with ``ast`` (nothing is imported), so a new module is checked the moment it exists.
Floors, lowest first: the core; devices and quanttrim (beside each other, never importing one another);
backends; the run layer; analysis; the CLI and the ``qtbench`` front door.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: installed name → repository folder (pyproject's package-dir)
FOLDERS = {
    "qtbench": ROOT / "qtbench",
    "qtbench.harness": ROOT / "harness",
    "qtbench.backends": ROOT / "backends",
    "qtbench.devices": ROOT / "devices",
    "qtbench.quanttrim": ROOT / "quanttrim",
}
#: (floor, room): a module may import a lower floor, or its own room; two rooms on one floor stay apart
FLOORS = [
    ("qtbench.harness.core", 0, "core"),
    ("qtbench.harness.demo", 0, "core"),
    ("qtbench.devices", 1, "devices"),
    ("qtbench.quanttrim", 1, "quanttrim"),
    ("qtbench.backends", 2, "backends"),
    ("qtbench.harness.run", 3, "run"),
    ("qtbench.harness.analysis", 4, "analysis"),
    ("qtbench.harness.cli", 5, "cli"),
    ("qtbench.harness", 6, "front"),  # the package's own __init__ (its docstring and version only)
    ("qtbench", 6, "front"),
]
#: modules whose project imports may sit inside functions: each command imports what it runs when it runs, so
#: ``qtbench --help`` loads no analysis, runtime or SDK module
LAZY_ALLOWED = ("qtbench.harness.cli",)


def modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for prefix, folder in FOLDERS.items():
        for f in folder.rglob("*.py"):
            rel = f.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if prefix == "qtbench" and parts and parts[0] in {"harness", "backends", "devices", "quanttrim"}:
                continue
            out[".".join([prefix, *parts])] = f
    return out


MODULES = modules()


def floor(module: str) -> tuple[int, str]:
    for prefix, level, room in FLOORS:
        if module == prefix or module.startswith(prefix + "."):
            return level, room
    raise AssertionError(f"{module} belongs to no floor; add it to FLOORS")


def _target(name: str) -> str | None:
    """The project module an import statement names (a package's attribute import resolves to the package)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module top) for each project import of ``module`` (TYPE_CHECKING blocks
    excluded)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        top.add(id(node))
    skipped = {
        id(n)
        for node in tree.body
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if id(node) in skipped or not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, *([node.module] if node.module else [])])
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for n in names:
            t = _target(n) if n.startswith("qtbench") else None
            if t and t != module and t != "qtbench.harness.core.version" and t != "qtbench":
                out.append((t, node.lineno, id(node) in top))
    return out


def test_every_module_has_a_floor():
    assert len(MODULES) > 60
    for m in MODULES:
        floor(m)


def test_imports_point_down_or_stay_in_their_room():
    wrong = []
    for m in MODULES:
        level, room = floor(m)
        for t, line, _ in imports(m):
            t_level, t_room = floor(t)
            if t_room != room and t_level >= level:
                wrong.append(f"{MODULES[m].relative_to(ROOT)}:{line} imports {t} (floor {t_level} {t_room})")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)


def test_project_imports_sit_at_module_top():
    inside = [
        f"{MODULES[m].relative_to(ROOT)}:{line} imports {t} inside a function"
        for m in MODULES
        if not m.startswith(LAZY_ALLOWED)
        for t, line, top in imports(m)
        if not top
    ]
    assert not inside, "\n".join(inside)


def test_no_import_cycles():
    graph = {m: sorted({t for t, _, _ in imports(m)}) for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in graph[m]:
            if state.get(t) == 1:
                cycles.append([*stack[stack.index(t) :], t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(" → ".join(c) for c in cycles)


@pytest.mark.parametrize("name", ["harness", "backends", "devices", "quanttrim"])
def test_installs_no_generic_top_level_package(name):
    """Only ``qtbench`` is installed at the top of site-packages: a user's own ``devices`` package is theirs."""
    import importlib.util
    import sys

    saved = sys.path[:]
    try:
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
        assert importlib.util.find_spec(name) is None or not str(importlib.util.find_spec(name).origin).startswith(
            str(ROOT)
        )
    finally:
        sys.path[:] = saved
