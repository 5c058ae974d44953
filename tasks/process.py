"""A flow run's own process ends with the runner that started it.

acceld's runner starts a Python process per flow run (Prefect's runner). The runner itself dies with acceld
(`service/supervisor.py`: PR_SET_PDEATHSIG), but its flow-run processes would not: after `kill -9` of
acceld they went on converting (and pushing) while the next acceld marked their runs FAILED, and a re-sent
webhook could start a second run beside them. So such a process watches its parent and ends at once when
the runner is gone: a run acceld reports as failed is really stopped.
"""

from __future__ import annotations

import os
import signal
import threading
import time

# Set by acceld's runner (service/acceld.py) to its pid; its flow-run processes inherit it.
RUNNER_PID_ENV = "ACCEL_RUNNER_PID"

_watching = threading.Event()


def die_with_runner(poll_seconds: float = 0.5) -> bool:
    """In a process the runner started for one flow run: watch the runner from a daemon thread and SIGKILL
    this process when it is gone. Anywhere else (a run in a thread of a longer-lived process, accelctl, a
    work-pool worker's run) nothing happens. Returns whether this process is now watching."""
    runner = os.environ.get(RUNNER_PID_ENV, "")
    if not runner.isdigit() or os.getppid() != int(runner):
        return False
    if _watching.is_set():
        return True
    _watching.set()

    def watch() -> None:
        while os.getppid() == int(runner):
            time.sleep(poll_seconds)
        # Reparented: the runner (and acceld) died. Nothing of this run may go on; acceld fails its run.
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="accel-die-with-runner", daemon=True).start()
    return True
