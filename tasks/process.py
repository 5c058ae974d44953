"""A flow run's own process ends with the runner that started it.

acceld's runner starts a Python process per flow run (Prefect's runner). The runner itself dies with acceld
(`service/supervisor.py`: PR_SET_PDEATHSIG), but its flow-run processes would not: after `kill -9` of
acceld they went on converting (and pushing) while the next acceld recovered their runs, and a re-sent
webhook could start a second run beside them. Two guards, so a run acceld recovers is really stopped:

- the runner starts each flow-run process through a launcher (`with_runner_death`, installed into Prefect's
  runner by `start_flow_runs_with_runner_death`) that asks the kernel to SIGKILL it when the runner dies
  (PR_SET_PDEATHSIG survives exec) before it execs the real command: a process still importing Prefect
  (seconds, more under load) dies with the runner too, before it can claim its run;
- the flow itself (`die_with_runner`) watches its parent and ends at once when the runner is gone, or has
  already gone: the guard where the launcher is not installed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

# Set by acceld's runner (service/acceld.py) to its pid; its flow-run processes inherit it.
RUNNER_PID_ENV = "ACCEL_RUNNER_PID"

_watching = threading.Event()

# Run as `python -I -S -c _LAUNCHER COMMAND…` by the runner: SIGKILL on the runner's death (prctl 1 is
# PR_SET_PDEATHSIG), then, unless the runner died before that took effect, exec COMMAND in this process.
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGKILL)\n"
    f"if os.getppid() != int(os.environ['{RUNNER_PID_ENV}']):\n"
    "    os._exit(70)\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


def with_runner_death(command: Sequence[str]) -> list[str]:
    """`command`, started through the launcher: it dies when the runner that starts it dies."""
    return [sys.executable, "-I", "-S", "-c", _LAUNCHER, *command]


def start_flow_runs_with_runner_death() -> bool:
    """In acceld's runner (Linux): Prefect's runner starts every flow-run process `with_runner_death`.
    Prefect's engine starter calls its module's `run_process` (its docstring: "patch the module to
    override"); when a Prefect version has no such hook, nothing changes and `die_with_runner` still
    guards. Returns whether the launcher is installed."""
    if not sys.platform.startswith("linux") or not os.environ.get(RUNNER_PID_ENV, "").isdigit():
        return False
    try:
        from prefect.runner import _starter_engine
    except ImportError:
        return False
    original: Callable[..., Awaitable[Any]] | None = getattr(_starter_engine, "run_process", None)
    if original is None or getattr(original, "_accel_launcher", False):
        return original is not None

    def run_process(command: Sequence[str], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return original(with_runner_death(command), *args, **kwargs)

    run_process._accel_launcher = True  # type: ignore[attr-defined]
    _starter_engine.run_process = run_process  # type: ignore[assignment]
    return True


def die_with_runner(poll_seconds: float = 0.5) -> bool:
    """In a process the runner started for one flow run: watch the runner from a daemon thread and SIGKILL
    this process when it is gone; when it is gone already (it died while this process started), at once.
    Anywhere else (the runner itself and runs in its threads, accelctl, a work-pool worker's run) nothing
    happens. Returns whether this process is now watching."""
    runner = os.environ.get(RUNNER_PID_ENV, "")
    if not runner.isdigit() or int(runner) == os.getpid():
        return False
    if os.getppid() != int(runner):
        if not _alive(int(runner)):
            # Reparented before it got here: the runner (and acceld) died, and the next acceld may already
            # have scheduled this run again. Nothing of this run may go on.
            os.kill(os.getpid(), signal.SIGKILL)
        return False  # not the runner's child (a process a flow run started)
    if _watching.is_set():
        return True
    _watching.set()

    def watch() -> None:
        while os.getppid() == int(runner):
            time.sleep(poll_seconds)
        # Reparented: the runner (and acceld) died. Nothing of this run may go on; acceld recovers its run.
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="accel-die-with-runner", daemon=True).start()
    return True


def _alive(pid: int) -> bool:
    """Whether `pid` is a live process of this user (a zombie, killed and not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or the pid is another user's now
        return False
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True
