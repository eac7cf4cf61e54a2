"""Who may import whom (docs/architecture.md), checked on the source: module-level
imports only (an import inside a function is a deliberate lazy one)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "overnight"

# A module of the left may not import one of the right.
FORBIDDEN = {
    "overnight.models": ("overnight.",),
    "overnight.errors": ("overnight.",),
    "overnight.store": ("overnight.engine", "overnight.api", "overnight.cli", "overnight.web"),
    "overnight.blobs": ("overnight.engine", "overnight.api", "overnight.cli", "overnight.store"),
    "overnight.backends": ("overnight.engine", "overnight.api", "overnight.cli", "overnight.store"),
    "overnight.engine": ("overnight.api", "overnight.cli", "overnight.web", "overnight.services"),
    "overnight.settings": ("overnight.services", "overnight.engine", "overnight.store"),
    "overnight.webhooks": ("overnight.services", "overnight.engine", "overnight.api"),
    # Observability sits low: the engine and the backends call it, never the reverse.
    "overnight.logs": ("overnight.",),
    "overnight.tracing": (
        "overnight.backends",
        "overnight.engine",
        "overnight.store",
        "overnight.api",
        "overnight.cli",
        "overnight.web",
        "overnight.services",
    ),
    "overnight.metrics": (
        "overnight.backends",
        "overnight.engine",
        "overnight.store",
        "overnight.api",
        "overnight.cli",
        "overnight.web",
        "overnight.services",
    ),
    "overnight.metrics_server": (
        "overnight.engine",
        "overnight.api",
        "overnight.cli",
        "overnight.web",
    ),
}
ALLOWED = {"overnight.models": ("overnight.errors",)}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path, known: set[str]) -> set[str]:
    out: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out.update(n for n in names if n in known)
    return out


MODULES = _modules()
GRAPH = {m: _imports(p, set(MODULES)) - {m} for m, p in MODULES.items()}


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    """`name` is one of `prefixes` or inside one ("overnight." alone: any module)."""
    return any(
        name.startswith(p) if p.endswith(".") else name == p or name.startswith(p + ".")
        for p in prefixes
    )


@pytest.mark.parametrize("module", sorted(MODULES))
def test_layers_are_respected(module: str) -> None:
    for layer, banned in FORBIDDEN.items():
        if within(module, (layer,)):
            allowed = (*ALLOWED.get(layer, ()), layer)
            bad = {i for i in GRAPH[module] if within(i, banned) and not within(i, allowed)}
            assert not bad, f"{module} imports {sorted(bad)}"


def test_there_are_no_import_cycles() -> None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                cycle = [*path[path.index(n) :], n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
