"""The house's floors, read from the code: benchmarks -> chexui -> engine, imports only going down; the
pure-Python modules of the engine import no torch; no module imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOORS = {"benchmarks": 2, "chexui": 1, "engine": 0}
# the engine modules chexui and presets validation use without torch
PURE = {"engine.config", "engine.events", "engine.models.archs", "engine.rundir", "engine.labels", "engine.errors",
        "engine.sanitize", "engine.fsutil", "engine.models"}  # fmt: skip


def modules() -> dict[str, Path]:
    out = {}
    for package in FLOORS:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, top_level_only: bool) -> set[str]:
    """The project modules (and `torch`) a file imports: at its top level only, or anywhere in it."""
    known = modules()
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import submodule` imports the submodule (its package is its parent, loaded
            # first by any import below it); `from module import name` imports the module
            subs = {f"{node.module}.{a.name}" for a in node.names} & known.keys()
            found |= subs | ({node.module} if len(subs) < len(node.names) else set())
    return {m for m in found if m in known or m.split(".")[0] == "torch"}


def test_imports_only_go_down_a_floor():
    wrong = []
    for name, path in modules().items():
        floor = FLOORS[name.split(".")[0]]
        for m in imports(path, top_level_only=False):
            top = m.split(".")[0]
            if top in FLOORS and FLOORS[top] > floor:
                wrong.append(f"{name} imports {m}")
    assert not wrong, wrong


def test_the_pure_engine_modules_import_no_torch():
    wrong = []
    for name in PURE:
        for m in imports(modules()[name], top_level_only=False):
            if m.split(".")[0] == "torch" or (m.startswith("engine.") and m not in PURE):
                wrong.append(f"{name} imports {m}")
    assert not wrong, wrong


def test_no_import_circles():
    """Among module-level imports (an import inside a function runs later, when every module is loaded)."""
    known = modules()
    graph = {name: {m for m in imports(path, True) if m in known and m != name} for name, path in known.items()}
    circles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, circles
