"""A flow-run process of acceld's runner ends when the runner is gone (tasks/process.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The "runner": sets the variable as acceld's runner does, starts a "flow run" that calls die_with_runner
# and then sleeps, prints the flow run's pid and its answer, and waits to be killed.
_RUNNER = """
import os, subprocess, sys, time
os.environ["ACCEL_RUNNER_PID"] = str(os.getpid())
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE, text=True)
print(child.pid, child.stdout.readline().strip(), flush=True)
time.sleep(600)
"""
_FLOW_RUN = """
import time
from tasks.process import die_with_runner
print(die_with_runner(poll_seconds=0.05), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def test_a_flow_run_process_dies_with_its_runner_killed_by_sigkill():
    runner = subprocess.Popen(
        [sys.executable, "-c", _RUNNER, _FLOW_RUN], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        pid_text, watching = runner.stdout.readline().split()
        flow_run = int(pid_text)
        assert watching == "True" and _alive(flow_run)
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(flow_run) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(flow_run), "the flow-run process outlived its runner"
    finally:
        runner.kill()


def test_nothing_is_watched_outside_a_runners_flow_run_process(monkeypatch):
    from tasks.process import die_with_runner

    monkeypatch.delenv("ACCEL_RUNNER_PID", raising=False)
    assert die_with_runner() is False  # accelctl, the local runner, a work-pool worker's run
    monkeypatch.setenv("ACCEL_RUNNER_PID", str(os.getpid()))  # this process is no child of itself
    assert die_with_runner() is False  # a run in a thread of the runner (in-process runs)
