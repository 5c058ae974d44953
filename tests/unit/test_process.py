"""A flow-run process of acceld's runner ends when the runner is gone (tasks/process.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.harness.processes import alive, gone

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


def test_a_flow_run_process_dies_with_its_runner_killed_by_sigkill():
    runner = subprocess.Popen(
        [sys.executable, "-c", _RUNNER, _FLOW_RUN], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        pid_text, watching = runner.stdout.readline().split()
        flow_run = int(pid_text)
        assert watching == "True" and alive(flow_run)
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=10)
        assert gone(flow_run), "the flow-run process outlived its runner"
    finally:
        runner.kill()


def test_nothing_is_watched_outside_a_runners_flow_run_process(monkeypatch):
    from tasks.process import die_with_runner

    monkeypatch.delenv("ACCEL_RUNNER_PID", raising=False)
    assert die_with_runner() is False  # accelctl, the local runner, a work-pool worker's run
    monkeypatch.setenv("ACCEL_RUNNER_PID", str(os.getpid()))  # this process is no child of itself
    assert die_with_runner() is False  # a run in a thread of the runner (in-process runs)


# A "flow run" that only gets to die_with_runner after its runner died (it was still importing Prefect).
_LATE_FLOW_RUN = """
import os, sys, time
print(os.getpid(), flush=True)
while os.getppid() == int(os.environ["ACCEL_RUNNER_PID"]):
    time.sleep(0.05)
from tasks.process import die_with_runner
die_with_runner(poll_seconds=0.05)
time.sleep(600)  # (no print: its runner's end of the pipe is closed, and that alone would end it)
"""

# A runner that starts its "flow run" through the launcher, as acceld's runner makes Prefect's do.
_LAUNCHING_RUNNER = """
import os, subprocess, sys, time
os.environ["ACCEL_RUNNER_PID"] = str(os.getpid())
from tasks.process import with_runner_death
command = with_runner_death([sys.executable, "-c", sys.argv[1]])
child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
print(child.pid, child.stdout.readline().strip(), flush=True)
time.sleep(600)
"""
_SLEEPING_FLOW_RUN = """
import time
print("up", flush=True)
time.sleep(600)  # never reaches die_with_runner: importing Prefect, say
"""


def _kill_runner_and_wait(runner: subprocess.Popen[str], flow_run: int) -> None:
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=10)
    gone(flow_run)


def test_a_flow_run_process_whose_runner_died_before_it_looked_dies_when_it_looks():
    runner = subprocess.Popen(
        [sys.executable, "-c", _RUNNER, _LATE_FLOW_RUN],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    flow_run = 0
    try:
        flow_run = int(runner.stdout.readline().split()[0])
        _kill_runner_and_wait(runner, flow_run)
        assert not alive(flow_run), "the flow-run process went on after its runner died"
    finally:
        runner.kill()
        if flow_run and alive(flow_run):
            os.kill(flow_run, signal.SIGKILL)


def test_a_flow_run_process_started_through_the_launcher_dies_with_its_runner_before_any_code_of_ours():
    runner = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHING_RUNNER, _SLEEPING_FLOW_RUN],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    flow_run = 0
    try:
        pid_text, up = runner.stdout.readline().split()
        flow_run = int(pid_text)
        assert up == "up" and alive(flow_run)
        _kill_runner_and_wait(runner, flow_run)
        assert not alive(flow_run), "the launched flow-run process outlived its runner"
    finally:
        runner.kill()
        if flow_run and alive(flow_run):
            os.kill(flow_run, signal.SIGKILL)


def test_the_runner_starts_prefects_flow_run_processes_through_the_launcher(monkeypatch):
    import asyncio

    from prefect.runner import _starter_engine

    from tasks.process import start_flow_runs_with_runner_death, with_runner_death

    started: list[list[str]] = []

    async def run_process(command, **kwargs):
        started.append(list(command))

    monkeypatch.setattr(_starter_engine, "run_process", run_process)
    monkeypatch.setenv("ACCEL_RUNNER_PID", str(os.getpid()))
    assert start_flow_runs_with_runner_death() is True
    asyncio.run(_starter_engine.run_process(command=[sys.executable, "-m", "prefect.engine"], env={}))
    assert started == [with_runner_death([sys.executable, "-m", "prefect.engine"])]
    assert start_flow_runs_with_runner_death() is True  # installed once: commands are not wrapped twice
