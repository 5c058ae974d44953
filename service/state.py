"""Where the embedded defaults live: Prefect's SQLite database and the work dir, under one state dir.

Imported before Prefect so PREFECT_HOME points into the project, not the user's home.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def state_dir() -> Path:
    return Path(os.environ.get("ACCEL_STATE_DIR") or PROJECT_ROOT / ".state").resolve()


def use_embedded_prefect() -> Path:
    """Point Prefect at `<state>/prefect` unless the caller already chose a home or an API."""
    home = state_dir() / "prefect"
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_HOME", str(home))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    return Path(os.environ["PREFECT_HOME"])
