"""The package's plan, read from its imports (stdlib `ast`, every import, lazy ones inside
functions included): no import cycle between mlds_jax modules, and each room imports only
the rooms below it. `python tests/test_architecture.py` prints the rooms and their imports
as the Mermaid graph that docs/architecture.md shows (a test checks that it is current)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mlds_jax"

# What each room may import (besides itself and the version). A module's room is its
# subpackage, or its own name for the top-level modules.
ALLOWED = {
    "tasks": set(),
    "config": {"tasks"},
    "train": {"tasks", "config"},
    "store": set(),
    "research": {"store", "train", "tasks", "config"},
    "analysis": {"research", "store", "train", "tasks"},
    "signals": set(),
    "preflight": {"store", "train", "config"},
    "generate": {"store", "train", "tasks", "config", "signals", "preflight"},
    "release": {"research", "analysis", "store"},  # a tier of a store, with its card and split
    "engines": {"generate", "store", "config", "signals"},
    "cli": {"generate", "engines", "release", "research", "analysis", "store", "train",
            "config", "signals"},
    "_entry": {"cli"},
    "mlds_jax": {"research"},  # the public API: open_dataset and friends, loaded lazily
    "_version": set(),
}
# Third-party packages a room must never import, whatever the path.
FORBIDDEN_THIRD_PARTY = {
    "store": {"jax", "flax", "optax", "torch"},  # numpy, zarr and orbax only
    "train": {"zarr", "torch"},  # the model and the trainer know nothing of Zarr
    "tasks": {"jax", "zarr", "torch"},  # numpy only
    "config": {"jax", "zarr", "torch"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> list[tuple[str, int]]:
    """(imported name, line) of every import in module `name`: mlds_jax modules resolved
    to the module (a `from PKG import sub` to the submodule), others to their top package."""
    path = MODULES[name]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".")[: -node.level + (path.name == "__init__.py") or None]
                mod = ".".join([*base, *([node.module] if node.module else [])])
            else:
                mod = node.module
            for a in node.names:
                sub = f"{mod}.{a.name}"
                found.append((sub if sub in MODULES else mod, node.lineno))
    out = []
    for target, line in found:
        if target.split(".")[0] != "mlds_jax":
            out.append((target.split(".")[0], line))
            continue
        while target not in MODULES:  # mlds_jax.x.y where y is a name in module x
            target = target.rpartition(".")[0]
        out.append((target, line))
    return out


def room(name: str) -> str:
    parts = name.split(".")
    return parts[0] if len(parts) == 1 else parts[1]


def graph() -> dict[str, set[str]]:
    return {m: {t for t, _ in imports(m) if t in MODULES and t != m} for m in MODULES}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(g)))
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
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

    for v in g:
        if v not in index:
            visit(v)
    return out


def room_graph() -> str:
    """The rooms and which rooms they import, as a Mermaid flowchart (top imports bottom)."""
    edges = sorted({(room(m), room(t)) for m, ts in graph().items() for t in ts
                    if room(m) != room(t) and room(t) != "_version"})
    names = sorted({r for e in edges for r in e})
    lines = ["```mermaid", "flowchart TD"]
    lines += [f"    {r.strip('_')}[{r}]" for r in names]
    lines += [f"    {a.strip('_')} --> {b.strip('_')}" for a, b in edges]
    return "\n".join(lines + ["```"])


def test_the_picture_in_the_docs_is_current():
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    assert room_graph() in doc, "rerun `python tests/test_architecture.py` into the page"


def test_every_module_has_a_room():
    assert {room(m) for m in MODULES} <= set(ALLOWED), "a new room: add it to ALLOWED"


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_one_way(name):
    mine = room(name)
    wrong = []
    for target, line in imports(name):
        if target in MODULES:
            other = room(target)
            if other in (mine, "_version"):
                continue
            if other not in ALLOWED[mine] and target.removeprefix("mlds_jax.") not in ALLOWED[mine]:
                wrong.append(f"line {line}: {target} (room {other})")
        elif target in FORBIDDEN_THIRD_PARTY.get(mine, ()):
            wrong.append(f"line {line}: {target}")
    assert not wrong, f"{name} ({mine}) imports what its room may not: {wrong}"


def test_the_card_does_not_import_the_analysis():
    """The card renders analysis/analysis.json; the analysis calls the card (one way)."""
    assert not [t for t, _ in imports("mlds_jax.research.card") if t.startswith("mlds_jax.analysis")]
    assert "mlds_jax.research.card" in {t for t, _ in imports("mlds_jax.analysis.report")}


if __name__ == "__main__":
    print(room_graph())
