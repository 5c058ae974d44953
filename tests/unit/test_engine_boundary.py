"""The engine (`accel/`) stays free of the orchestrator and the service: importing every one of its modules
pulls in none of Prefect, FastAPI, Starlette, uvicorn or prometheus_client, nor the project's own layers
above it (tasks, flows, deployments, service)."""

from __future__ import annotations

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
