"""The package's import graph has no circle: each module imports only what it builds on (every import
counts, those inside functions too)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the peapod modules it imports (a `from package import name` names the submodule when one exists)."""
    modules = {_module(p): p for p in (SRC / "peapod").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("peapod"))
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("peapod") and node.level == 0:
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    deps.add(sub if sub in modules else node.module)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every circle found by a depth-first walk (each reported once, from its smallest module)."""
    found, state = set(), {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circle = stack[stack.index(nxt):]
                k = circle.index(min(circle))
                found.add(tuple(circle[k:] + circle[:k]))
            elif nxt not in state:
                walk(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            walk(node, [])
    return [list(c) for c in sorted(found)]


def test_the_fixture_graph_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    graph = import_graph()
    assert "peapod.train.id_batches" in graph and "peapod.inputs.examples" in graph["peapod.inputs.owners"]
    assert cycles(graph) == []


def _package(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_inputs_build_on_the_data_alone_and_the_model_on_inputs():
    # data -> inputs -> model -> train / infer: where an example becomes model input sits under the network.
    graph = import_graph()
    for package, allowed in (("inputs", {"data", "inputs"}), ("model", {"data", "inputs", "model", "io"})):
        reach = {m: sorted(d for d in deps if _package(d) not in allowed) for m, deps in graph.items() if _package(m) == package}
        assert {m: d for m, d in reach.items() if d} == {}, package


def test_serving_and_inference_do_not_reach_up_the_flow():
    graph = import_graph()
    upward = {"train", "evaluate", "bench", "report", "demo"}
    bad = {m: sorted(d for d in deps if _package(d) in upward) for m, deps in graph.items() if _package(m) in ("serve", "infer")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_only_the_training_side_imports_training():
    graph = import_graph()
    allowed = ("peapod.train", "peapod.demo", "peapod.bench", "peapod.cli")
    bad = {m: sorted(d for d in deps if d.startswith("peapod.train")) for m, deps in graph.items() if not m.startswith(allowed)}
    assert {m: d for m, d in bad.items() if d} == {}


def test_nothing_below_the_lab_wing_imports_it():
    graph = import_graph()
    bad = {m: sorted(d for d in deps if d.startswith("peapod.bench")) for m, deps in graph.items() if not m.startswith(("peapod.bench", "peapod.cli"))}
    assert {m: d for m, d in bad.items() if d} == {}
