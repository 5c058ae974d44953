"""README's shell blocks marked `<!-- readme-test -->` run as written, in order, against what `scripts/demo`
leaves behind — here the test fixtures: the registry for the demo's `127.0.0.1:5000`, the demo's sample image
and config (scripts/demo.py's own) under a private state dir for `.state/`. Only quick, safe blocks are
marked (one-time conversions, checks, the local server's status and stop); nothing starts acceld.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from accel.reference import Reference
from accel.registry import HostConfig, RegistryClient
from accel.store import ContentStore
from tests.harness import imagegen, pushing

pytestmark = [pytest.mark.runtime, pytest.mark.registry, pytest.mark.prefect]

REPO = Path(__file__).resolve().parents[2]
MARK = "<!-- readme-test -->"
DEMO_REGISTRY = "127.0.0.1:5000"


def marked_commands(text: str) -> list[str]:
    """The commands of every marked ```sh block, continuation lines joined, comments and blanks dropped."""
    commands = []
    for block in re.findall(re.escape(MARK) + r"\s*```sh\n(.*?)```", text, re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
            if line:
                commands.append(line)
    return commands


def _demo_config_text(registry: str, work_dir: Path) -> str:
    """scripts/demo.py's config, as the demo writes it."""
    spec = importlib.util.spec_from_file_location("accel_demo", REPO / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return str(demo.CONFIG.format(registry=registry, work_dir=work_dir))


def test_marked_blocks_exist():
    commands = marked_commands((REPO / "README.md").read_text())
    assert any(c.startswith(".venv/bin/accelctl convert") for c in commands)
    assert any(c.startswith(".venv/bin/accelctl check") for c in commands)


def test_readme_commands_run_as_written(registry, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "demo-config.yaml").write_text(_demo_config_text(registry.host, state / "work"))
    store = ContentStore(tmp_path / "source")
    with RegistryClient({registry.host: HostConfig()}) as client:
        pushing.push(
            client, store, Reference.parse(f"{registry.host}/demo/sample:v1"), imagegen.standard_index(store)
        )

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ACCEL_"))}
    env["ACCEL_STATE_DIR"] = str(state)
    env["PYTHONPATH"] = str(REPO)
    work = tmp_path / "cwd"  # where relative outputs (out/, *.tar) land, as in a user's checkout
    work.mkdir()
    try:
        for command in marked_commands((REPO / "README.md").read_text()):
            args = [
                word.replace(DEMO_REGISTRY, registry.host).replace(".state/", f"{state}/")
                for word in shlex.split(command)
            ]
            # This checkout's accelctl (the venv's entry point may be another tree's).
            assert args[0] == ".venv/bin/accelctl", command
            done = subprocess.run(
                [sys.executable, "-m", "service.accelctl", *args[1:]],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert done.returncode == 0, f"{command}\n{done.stderr}"
            assert "Traceback" not in done.stderr, f"{command}\n{done.stderr}"
    finally:
        subprocess.run(
            [sys.executable, "-m", "service.accelctl", "server", "stop"], cwd=REPO, env=env, timeout=120
        )
