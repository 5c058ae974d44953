"""The engine (`accel/`) stays free of the orchestrator and the service: importing every one of its modules
pulls in none of Prefect, FastAPI, Starlette, uvicorn or prometheus_client, nor the project's own layers
above it (tasks, flows, deployments, service)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = (
    *("prefect", "fastapi", "starlette", "uvicorn", "prometheus_client"),
    *("tasks", "flows", "deployments", "service"),
)

_PROBE = """
import importlib, json, pkgutil, sys
import accel
names = sorted(m.name for m in pkgutil.walk_packages(accel.__path__, "accel."))
for name in names:
    importlib.import_module(name)
roots = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps({"imported": names, "roots": roots}))
"""


def test_no_engine_module_imports_the_orchestrator_or_the_service():
    # A fresh interpreter: this test process has Prefect loaded already.
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True, text=True, check=True, timeout=120
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert "accel.plan" in found["imported"] and "accel.drivers.nydus" in found["imported"]
    leaked = sorted(set(FORBIDDEN) & set(found["roots"]))
    assert leaked == [], f"accel imports {leaked}"


# The project's layers, lowest first: each imports only its own and the ones below it (docs/architecture.md).
LAYERS = ("accel", "tasks", "flows", "deployments", "service")


def _import_graph() -> dict[str, set[str]]:
    """Module → project modules it imports anywhere in its text (TYPE_CHECKING and function bodies too)."""
    modules = {}
    for layer in LAYERS:
        for path in (REPO / layer).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            # A module importing its own package (`accel.drivers` from `accel.drivers.base`) is no cycle.
            graph[name] |= {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def test_no_import_cycle_anywhere_in_the_project():
    graph = _import_graph()
    # The graph is real: known edges are in it, in every layer.
    assert "accel.drivers.base" in graph["accel.image"]
    assert "service.onetime" in graph["service.accelctl"]
    assert "flows.names" in graph["deployments.definitions"]

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), list(graph[start])
        while todo:
            current = todo.pop()
            if current == goal:
                return True
            if current not in seen:
                seen.add(current)
                todo.extend(graph[current])
        return False

    cycles = sorted(f"{a} ⇄ {b}" for a in graph for b in graph[a] if reaches(b, a))
    assert cycles == []


def test_no_layer_imports_a_layer_above_it():
    graph = _import_graph()

    def rank(module: str) -> int:
        return LAYERS.index(module.split(".")[0])

    upward = sorted(f"{a} → {b}" for a, targets in graph.items() for b in targets if rank(b) > rank(a))
    assert upward == []
