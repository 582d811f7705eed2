"""Imports point down: framework's foundation <- curricula, ensembles <- the runner (the build step)
<- framework's serving, sweeps and app <- harness <- experiments; tests use harness, not
experiments. Walks every import statement (function-local ones included: a lazy import is still an
arrow) with `ast`, so nothing is imported to check it."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("framework", "curricula", "ensembles", "harness", "experiments")

# Floors, lowest first. A module may import its own floor and the floors below, never above.
FLOORS = (
    ("framework", "framework.data", "framework.models", "framework.evaluation", "framework.checkpoints",
     "framework.stopping", "framework.training"),
    ("curricula", "ensembles"),
    ("framework.runner",),
    ("framework.serving", "framework.sweeps", "framework.app"),
    ("harness",),
    ("experiments",),
)
FLOOR = {node: i for i, nodes in enumerate(FLOORS) for node in nodes}


def modules() -> dict[str, pathlib.Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The project modules `name` imports, each resolved to a module (not a function in it)."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports pkg.mod; `from mod import func` imports mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t.split(".")[0] in PACKAGES and t != name}
    return found


def node_of(module: str) -> str:
    """A framework module belongs to its sub-package, and framework's top-level modules (errors,
    config) stand for themselves; anything else belongs to its top-level package."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "framework" else parts[0]


def floor_of(node: str) -> int:
    return FLOOR.get(node, FLOOR["framework"]) if node.startswith("framework") else FLOOR[node]


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_every_module_is_on_a_floor():
    packages = {node for node in map(node_of, modules()) if (ROOT / node.replace(".", "/")).is_dir()}
    missing = sorted(packages - set(FLOOR))
    assert not missing, f"packages with no floor in FLOORS: {missing}"


def test_imports_point_down():
    up = {f"{a} -> {b}" for a, deps in graph().items() for b in sorted(deps)
          if floor_of(node_of(b)) > floor_of(node_of(a))}
    assert not up, "imports pointing up a floor:\n" + "\n".join(sorted(up))


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n):
        state[n] = 1
        path.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_circle_between_modules():
    cycle = _cycle(graph())
    assert cycle is None, "modules import each other in a circle: " + " -> ".join(cycle)


def test_no_circle_between_packages():
    edges: dict[str, set[str]] = {}
    for a, deps in graph().items():
        edges.setdefault(node_of(a), set()).update(node_of(b) for b in deps if node_of(b) != node_of(a))
    cycle = _cycle(edges)
    assert cycle is None, "packages import each other in a circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("source, expect", [
    ("from ensembles import averaging\n", "framework.training.x -> ensembles.averaging"),
    ("def f():\n    from framework.app import cli\n", "framework.training.x -> framework.app.cli"),
])
def test_the_walk_sees_an_upward_arrow(source, expect, tmp_path):
    """The checks above can fail: a module-level and a function-local upward import are both seen."""
    path = tmp_path / "x.py"
    path.write_text(source)
    found = imports("framework.training.x", path, set(modules()))
    a, b = expect.split(" -> ")
    assert b in found and floor_of(node_of(b)) > floor_of(node_of(a))


# The experiments a test file may import: the ones it tests. Anything shared lives in harness/.
TESTED_EXPERIMENTS = {
    "test_flagship.py": {"experiments", "experiments.byo_task", "experiments.early_stop_recovery",
                         "experiments.fair_tuning"},
    "test_fair_tuning.py": {"experiments", "experiments.fair_tuning"},
    "test_curricula.py": {"experiments.custom_curriculum"},  # the README's example, run as written
    "test_feedback_chaos.py": {"experiments.chaos_feedback"},  # the section it writes
    "test_cascade_cost.py": {"experiments.cascade_cost"},
}


def test_tests_import_experiments_only_to_test_them():
    known = set(modules())
    borrowed = {f"{path.name} -> {m}" for path in sorted((ROOT / "tests").glob("*.py"))
                for m in imports("tests." + path.stem, path, known)
                if m.startswith("experiments") and m not in TESTED_EXPERIMENTS.get(path.name, set())}
    assert not borrowed, "tests borrowing from experiments (move it to harness/):\n" + "\n".join(sorted(borrowed))


def test_a_circle_is_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
