"""The floors are a rule: no import cycle between files, no arrow up a floor, clients and server never meet."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("attacks", "fl_sim", "clients", "server")

# Floor of each package prefix (longest prefix wins); a file may import its own floor or any floor below.
FLOORS: dict[str, int] = {
    "attacks": 0,  # a library on its own: imports nothing from the project
    "fl_sim.core": 1,  # ground floor
    "clients": 2,
    "server": 2,
    "fl_sim.federation": 3,
    "fl_sim.experiments": 4,
    "fl_sim.web": 5,  # fl-sim serve's pages: read the stores through the experiments' summaries
    "fl_sim.cli": 6,
    "fl_sim": 7,  # the package root itself (imports nothing)
}
SIDEWAYS = {frozenset({"clients", "server"})}


def modules(root: Path) -> dict[str, Path]:
    """Every project module under ``root``: dotted name -> file."""
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path) -> dict[str, set[str]]:
    """File-level import edges between project modules (every import statement counts, even lazy or TYPE_CHECKING ones)."""
    known = modules(root)
    edges: dict[str, set[str]] = {m: set() for m in known}
    for mod, path in known.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                r = _resolve(t, known)
                if r and r != mod:
                    edges[mod].add(r)
    return edges


def floor_of(mod: str) -> tuple[str, int]:
    """(the floor's package prefix, its level) for a module."""
    best = max((p for p in FLOORS if mod == p or mod.startswith(p + ".")), key=len)
    return best, FLOORS[best]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one file (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(edges[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, todo = work[-1]
            if todo:
                w = todo.pop()
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, sorted(edges[w])))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def violations(edges: dict[str, set[str]]) -> list[str]:
    """Every arrow that goes up a floor or sideways between clients and server, and every cycle."""
    bad = []
    for mod, targets in sorted(edges.items()):
        (fa, la) = floor_of(mod)
        for t in sorted(targets):
            (fb, lb) = floor_of(t)
            if frozenset({fa, fb}) in SIDEWAYS:
                bad.append(f"sideways: {mod} -> {t}")
            elif lb > la or (lb == la and fa != fb):
                bad.append(f"upward: {mod} ({fa}) -> {t} ({fb})")
    bad += [f"cycle: {' <-> '.join(c)}" for c in cycles(edges)]
    return bad


def test_the_project_keeps_its_floors() -> None:
    assert violations(import_graph(REPO)) == []


def test_every_module_has_a_floor() -> None:
    assert all(floor_of(m)[0] for m in modules(REPO))
    assert floor_of("fl_sim.core.config") == ("fl_sim.core", 1)
    assert floor_of("fl_sim.cli.run")[1] > floor_of("fl_sim.experiments.sweep")[1] > floor_of("server.app")[1]


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    """A copy of the project's packages to break on purpose."""
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "assets"))
    return tmp_path


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")


def test_an_upward_import_fails_the_rule(copy: Path) -> None:
    _append(copy / "fl_sim" / "core" / "errors.py", "from fl_sim.cli import main  # noqa")
    assert any(v.startswith("upward: fl_sim.core.errors") for v in violations(import_graph(copy)))


def test_a_lazy_upward_import_fails_too(copy: Path) -> None:
    _append(copy / "server" / "strategy.py", "def f() -> None:\n    from fl_sim.experiments import sweep  # noqa")
    assert any("server.strategy" in v and "fl_sim.experiments.sweep" in v for v in violations(import_graph(copy)))


def test_clients_and_server_never_meet(copy: Path) -> None:
    _append(copy / "clients" / "training.py", "import server.strategy  # noqa")
    assert "sideways: clients.training -> server.strategy" in violations(import_graph(copy))


def test_attacks_import_nothing_from_the_project(copy: Path) -> None:
    _append(copy / "attacks" / "matching.py", "from fl_sim.core import errors  # noqa")
    assert any(v.startswith("upward: attacks.matching") for v in violations(import_graph(copy)))


def test_a_cycle_between_files_fails_the_rule(copy: Path) -> None:
    # Two ground-floor files importing each other: no floor is crossed, the cycle alone fails it.
    _append(copy / "fl_sim" / "core" / "errors.py", "from fl_sim.core import users  # noqa")
    found = violations(import_graph(copy))
    assert any(v.startswith("cycle:") and "fl_sim.core.errors" in v and "fl_sim.core.users" in v for v in found)
