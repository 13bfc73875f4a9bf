"""The package's dependencies point one way (DESIGN.md, layers): no import cycle between the top-level parts
of src/medclf, counting imports inside functions; ensembles are told apart only by the run layer and models."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "medclf"


def top_level_graph() -> dict[str, set[str]]:
    """part -> parts it imports (a part is a subpackage or a module directly under src/medclf)."""
    parts = {p.name.removesuffix(".py") for p in SRC.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    parts.discard("__init__")
    graph: dict[str, set[str]] = {p: set() for p in parts}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).parts
        if rel == ("__init__.py",):
            continue  # the public API re-exports everything, lazily
        source = rel[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            for name in names:
                bits = name.split(".")
                if bits[0] == "medclf" and len(bits) > 1 and bits[1] in parts and bits[1] != source:
                    graph[source].add(bits[1])
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_walker_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_top_level_parts():
    graph = top_level_graph()
    assert {"runs", "engine", "models", "data", "ensemble", "robust"} <= set(graph)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
    # the run layer sits below the workflows and the service
    assert not graph["runs"] & {"engine", "ensemble", "robust", "explain", "export", "serve", "cli", "report"}


def test_ensembles_are_told_apart_only_below_the_workflows():
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                 if "isinstance(" in (text := p.read_text(encoding="utf-8")) and ", Ensemble)" in text
                 and p.relative_to(SRC).parts[0] not in ("runs", "models")]
    assert offenders == []
