"""The import graph of the package: no cycle, and layers that point one way.

Read from the source with ``ast`` (every ``import`` counts, also the ones inside functions), so the test
sees what a reader sees, not only what happens to be imported at start-up. The layers, lowest first:

    base        log, geometry, depth, fileio, device,     (import nothing of flow3d but each other's
                errors, cli                                 lower entries)
                checkpoint, workdir
    libraries   losses, render, flow                       (independent of each other)
    cameras     camera estimation from the video (uses flow: static tracks)
    data        the loaders (may use flow: chained tracks; cameras: poses when the file is missing)
    scene       Gaussians, motion, initialisation, strategy, .ply layout
    config      every dataclass the CLIs expose
    commands    eval (run_val), preprocess
    train, vis  the trainer; loading a trained run, camera paths and the viewer
    tools       benchmarks, export, render_video, view, sweep
    launchers   flow3d.commands: the installed commands (they import the tools by name only)

A module may import from a strictly lower layer, or from its own package. So config and eval never import
train, checkpoint I/O and the device choice sit below both, and nothing imports a benchmark.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "flow3d"

RANKS = {
    "flow3d": 0,
    "log": 0,
    "geometry": 0,
    "depth": 0,
    "fileio": 0,
    "device": 0,
    "errors": 0,
    "cli": 0,
    "checkpoint": 1,
    "workdir": 1,
    "losses": 2,
    "render": 2,
    "flow": 2,
    "cameras": 3,
    "data": 4,
    "scene": 5,
    "config": 6,
    "eval": 7,
    "preprocess": 7,
    "train": 8,
    "vis": 8,
    "benchmarks": 9,
    "export": 9,
    "render_video": 9,
    "view": 9,
    "sweep": 9,
    "commands": 10,
}
BASE = {
    "flow3d",
    "log",
    "geometry",
    "depth",
    "fileio",
    "device",
    "errors",
    "cli",
}  # leaf modules; may import each other


def _modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = list(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _resolve(name: str) -> str:
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(path: Path) -> list[tuple[str, str, int]]:
    """(imported module, imported name or '', line) of every flow3d import in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(_resolve(a.name), "", node.lineno) for a in node.names if a.name.split(".")[0] == "flow3d"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "flow3d":
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out.append((full, "", node.lineno) if full in MODULES else (_resolve(node.module), a.name, node.lineno))
    return out


GRAPH = {m: sorted({t for t, _, _ in _imports(p)} - {m}) for m, p in MODULES.items()}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "flow3d"


def test_every_package_has_a_layer():
    assert {_unit(m) for m in MODULES} <= set(RANKS), "add new top-level modules to RANKS"


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A cycle of ``graph`` (node -> successors) as a closed path, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in graph.get(m, []):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_cycle_finder_finds_cycles():
    assert _find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


def test_no_import_cycle():
    cycle = _find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_layers_point_one_way():
    bad = []
    for m, targets in GRAPH.items():
        a = _unit(m)
        for t in targets:
            b = _unit(t)
            if a == b or (a in BASE and b in BASE and b != "flow3d"):
                continue
            if RANKS[b] >= RANKS[a]:
                bad.append(f"{m} imports {t} ({a}: layer {RANKS[a]}, {b}: layer {RANKS[b]})")
    assert bad == []


def test_config_and_eval_import_nothing_from_train():
    for m, targets in GRAPH.items():
        if _unit(m) in ("config", "eval", "checkpoint", "device"):
            assert not [t for t in targets if _unit(t) == "train"], m


def test_other_packages_use_the_data_layer_through_its_public_api():
    """``flow3d.data`` is imported as a package (its ``__init__``), never by reaching into its modules."""
    bad = [
        f"{m} imports {t}"
        for m, targets in GRAPH.items()
        if _unit(m) not in ("data", "benchmarks", "preprocess")
        for t in targets
        if t.startswith("flow3d.data.")
    ]
    assert bad == []


def test_no_private_name_crosses_a_module():
    bad = []
    for m, p in MODULES.items():
        for target, name, line in _imports(p):
            if name.startswith("_") and target != m:
                bad.append(f"{p.relative_to(PACKAGE.parent)}:{line} imports {name} from {target}")
    assert bad == []


@pytest.mark.parametrize(
    "rel",
    [
        "train/trainer.py",
        "data/casual.py",
        "data/iphone.py",
        "data/synthetic.py",
        "data/cache.py",
        "data/common.py",
        "data/sequence.py",
    ],
)
def test_trainer_and_loader_functions_stay_short(rel):
    """Each function of the trainer and the loaders reads on one screen (at most 60 lines, docstring included)."""
    tree = ast.parse((PACKAGE / rel).read_text())
    long = [
        f"{n.name}: {n.end_lineno - n.lineno + 1} lines"
        for n in ast.walk(tree)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60
    ]
    assert long == []
