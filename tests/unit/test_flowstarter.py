"""acceld's warm flow-run starter (service/flowstarter.py) and the launcher that stands in for its runs
(tasks/launcher.py): a run forked warm behaves towards the runner as the process it replaces."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.supervisor import WAKE_SIGNAL
from tests.harness.processes import alive, gone

REPO = Path(__file__).resolve().parents[2]
PROBE = "tests.harness.forkprobe"
STARTER = [sys.executable, "-m", "service.flowstarter", "--module", PROBE, "--warm", "json"]

# A launcher as acceld's runner starts it (`python -I -S`, standard library only), for the probe module
# instead of prefect.engine: 99 when no starter answers, 98 when it refused (the launcher would exec).
_CLIENT = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("launcher", {str(REPO / "tasks" / "launcher.py")!r})
launcher = importlib.util.module_from_spec(spec)
spec.loader.exec_module(launcher)
conn = launcher._send(sys.argv[1], [sys.executable, "-m", sys.argv[2], *sys.argv[3:]])
if conn is None:
    sys.exit(99)
launcher._stand_in(conn)
sys.exit(98)
"""


@pytest.fixture(scope="module")
def starter() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with tempfile.TemporaryDirectory(prefix="accel-starter-test-") as directory:
        path = str(Path(directory) / "socket")
        process = subprocess.Popen(
            [*STARTER, "--socket", path],
            cwd=REPO,
            env={k: v for k, v in os.environ.items() if k != "ACCEL_RUNNER_PID"},
            # As acceld's runner starts it: the runner ignores acceld's wake signal until it handles it.
            preexec_fn=lambda: signal.signal(WAKE_SIGNAL, signal.SIG_IGN),
        )
        deadline = time.monotonic() + 60
        while not Path(path).exists() and time.monotonic() < deadline:
            assert process.poll() is None, "the starter ended before it listened"
            time.sleep(0.05)
        try:
            yield path, process
        finally:
            process.kill()
            process.wait()


def _launch(path: str, *args: str, module: str = PROBE, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _CLIENT, path, module, *args],
        cwd=tempfile.gettempdir(),
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_run_gets_the_launchers_arguments_environment_directory_streams_and_exit_code(starter):
    path, process = starter
    launched = _launch(path, "show", "a b", PROBE_X="from the launcher", PROBE_CODE="3")
    out, err = launched.communicate(timeout=30)
    seen = json.loads(out)
    assert seen["argv"] == ["show", "a b"]
    assert seen["cwd"] == os.path.realpath(tempfile.gettempdir())
    assert seen["probe"] == "from the launcher"  # the launcher's environment, not the starter's
    assert seen["ppid"] == process.pid  # forked by the starter, not started by the launcher
    assert seen["sigusr1"] == "SIG_DFL"  # not the runner's ignored wake signal
    assert "to stderr" in err
    assert launched.returncode == 3


def test_the_runners_sigterm_reaches_the_run_and_the_launcher_ends_as_it_did(starter):
    path, _ = starter
    launched = _launch(path, "sleep")
    run = int(launched.stdout.readline())
    assert alive(run)
    launched.send_signal(signal.SIGTERM)  # the runner cancels the run it knows: the launcher
    assert launched.wait(timeout=10) == -signal.SIGTERM
    assert gone(run), "the run did not get the runner's SIGTERM"


def test_a_run_whose_launcher_was_killed_is_killed(starter):
    path, _ = starter
    launched = _launch(path, "sleep")
    run = int(launched.stdout.readline())
    launched.kill()
    launched.wait(timeout=10)
    assert gone(run), "the run outlived the launcher the runner killed"


def test_a_module_it_may_not_run_is_refused_and_the_launcher_runs_it_itself(starter):
    path, _ = starter
    launched = _launch(path, "-c", "print(1)", module="json.tool")
    launched.communicate(timeout=30)
    assert launched.returncode == 98


def test_without_a_starter_the_launcher_runs_it_itself(tmp_path):
    launched = _launch(str(tmp_path / "no-socket"), "show")
    launched.communicate(timeout=30)
    assert launched.returncode == 99


def test_when_the_starter_dies_its_runs_die_and_their_launchers_say_so():
    with tempfile.TemporaryDirectory(prefix="accel-starter-test-") as directory:
        path = str(Path(directory) / "socket")
        process = subprocess.Popen(
            [*STARTER, "--socket", path],
            cwd=REPO,
        )
        try:
            deadline = time.monotonic() + 60
            while not Path(path).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            launched = _launch(path, "sleep")
            run = int(launched.stdout.readline())
            process.kill()
            _, err = launched.communicate(timeout=10)
            assert launched.returncode == 70
            assert f"the warm flow-run starter died while flow-run process {run} ran" in err
            assert gone(run)
        finally:
            process.kill()
            process.wait()
