"""A flow run's own process ends with the runner that started it.

acceld's runner starts a Python process per flow run (Prefect's runner). The runner itself dies with acceld
(`service/supervisor.py`: PR_SET_PDEATHSIG), but its flow-run processes would not: after `kill -9` of
acceld they went on converting (and pushing) while the next acceld recovered their runs, and a re-sent
webhook could start a second run beside them. Two guards, so a run acceld recovers is really stopped:

- the runner starts each flow-run process through a launcher (`tasks/launcher.py`, via `with_runner_death`,
  installed into Prefect's runner by `start_flow_runs_with_runner_death`) that asks the kernel to SIGKILL it
  when the runner dies (PR_SET_PDEATHSIG survives exec) before it execs the real command or has the run
  forked by acceld's warm starter (`service/flowstarter.py`, whose runs die with it, and it with the runner):
  a process still importing Prefect (seconds, more under load) dies with the runner too, before it can claim
  its run;
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

from tasks import launcher

# Set by acceld's runner (service/acceld.py) to its pid; its flow-run processes inherit it.
RUNNER_PID_ENV = launcher.RUNNER_PID_ENV

_watching = threading.Event()

# Started as `python -I -S tasks/launcher.py COMMAND…` (standard library only): SIGKILL on the runner's death,
# then the run forked by acceld's warm starter (service/flowstarter.py) or COMMAND exec'd in this process.
LAUNCHER = Path(__file__).resolve().with_name("launcher.py")


def with_runner_death(command: Sequence[str]) -> list[str]:
    """`command`, started through the launcher: it dies when the runner that starts it dies."""
    return [sys.executable, "-I", "-S", str(LAUNCHER), *command]


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
