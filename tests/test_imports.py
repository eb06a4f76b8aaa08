"""The module graph: no import cycles between optiloop's modules.

Every import counts, at the top of a file or inside a function (a deferred import still makes the
two modules depend on each other). The package's ``__init__`` facade is left out: it names every
module, and a module reading ``__version__`` from it is no design cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "optiloop"
# Being removed in its own change (the loop's callbacks and checkpoints); nothing else may join it.
KNOWN = {"optiloop.callbacks", "optiloop.checkpoint", "optiloop.loop"}


def module_graph() -> dict[str, set[str]]:
    files = {"optiloop." + ".".join(p.relative_to(SRC).with_suffix("").parts): p for p in SRC.rglob("*.py")}
    files = {name.removesuffix(".__init__"): p for name, p in files.items()}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1]) if node.level else ""
                target = ".".join(p for p in (base, node.module or "") if p)
                targets = [target, *(f"{target}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in files and t not in (name, "optiloop")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_cycles_between_modules():
    graph = module_graph()
    assert "optiloop.report" in graph["optiloop.comparison"]  # the graph is really read
    assert all(c <= KNOWN for c in cycles(graph)), cycles(graph)
    assert "optiloop.comparison" not in graph["optiloop.report"]
    assert "optiloop.history" not in graph["optiloop.plots"]
