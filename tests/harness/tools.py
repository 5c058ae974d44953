"""External tools the tests drive (skopeo, crane, ...): found on PATH or in .tools/bin (scripts/setup
installs them there); a test that needs a missing one is skipped, naming it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / ".tools" / "bin"


def require_tool(name: str) -> str:
    """The path of tool `name`; skips the calling test when it is not installed."""
    found = shutil.which(name) or (str(TOOLS / name) if (TOOLS / name).is_file() else None)
    if found is None:
        pytest.skip(f"{name} is not installed (scripts/setup installs it)")
    return found


def run_tool(*args: str) -> str:
    """Run a tool to completion (5 minutes at most); fails the test with its output unless it exits 0."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr
