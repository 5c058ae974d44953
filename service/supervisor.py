"""acceld's process supervision: one runner child kept alive, and one acceld serving per work dir."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from service.state import PROJECT_ROOT

log = logging.getLogger("acceld")

_PR_SET_PDEATHSIG = 1

# acceld sends it to its runner child when it has created a flow run, so the runner looks for due runs now
# rather than at its next poll (up to a second later). Ignored from the child's exec on (an ignored signal
# stays ignored across exec), until the runner installs its handler: early, it must not end the process.
WAKE_SIGNAL = signal.SIGUSR1


def _start_runner_child() -> None:
    """In the forked child, before exec: it ignores WAKE_SIGNAL until the runner handles it, and dies with
    acceld."""
    signal.signal(WAKE_SIGNAL, signal.SIG_IGN)
    _die_with_parent()


def _die_with_parent() -> None:
    """In the runner child: SIGKILL when acceld dies, even by SIGKILL (Linux; elsewhere a no-op). Not SIGTERM:
    Prefect's runner then shuts down gracefully, waiting for its runs, and a run stuck on a registry kept it
    (and itself) alive for hours after acceld was gone. Its runs end with it (tasks/process.py); a clean stop
    of acceld stops the runner first (`RunnerSupervisor.stop`), so this only acts when acceld died."""
    # Not tasks.launcher.dies_with_parent: importing `tasks` loads Prefect (1.4 s) into acceld's API process.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class WorkDirLock:
    """One acceld serving deployments per work dir: the lock is what makes orphan recovery safe."""

    def __init__(self, work_dir: Path) -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        self.path = work_dir / "acceld.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> bool:
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return True

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class RunnerSupervisor:
    """Keeps one `acceld --runner` child alive until stopped. A runner that keeps dying is restarted with
    capped exponential backoff (`restart_delay` doubling up to `max_restart_delay`), and `problem()` says
    so for /readyz until a restarted runner has stayed up for `healthy_after` seconds. `before_restart` is
    called before a runner that died is started again (acceld's: its orphaned runs run again); its failure
    is logged, and the runner restarted all the same."""

    def __init__(
        self,
        config_path: str,
        restart_delay: float = 1.0,
        max_restart_delay: float = 60.0,
        healthy_after: float = 60.0,
        command: list[str] | None = None,
        in_process: bool = False,
        before_restart: Callable[[], None] | None = None,
    ) -> None:
        self.before_restart = before_restart
        self.command = command or [
            sys.executable,
            "-m",
            "service.acceld",
            "--config",
            config_path,
            "--runner",
            *(["--in-process-runs"] if in_process else []),
        ]
        self.restart_delay = restart_delay
        self.max_restart_delay = max_restart_delay
        self.healthy_after = healthy_after
        self.failures = 0  # runner exits in a row, without a healthy run between them
        self.last_exit: int | None = None
        self._started_at = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="runner-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command, cwd=PROJECT_ROOT, preexec_fn=_start_runner_child)

    def next_delay(self) -> float:
        """Seconds before the next restart: restart_delay × 2^(failures − 1), at most max_restart_delay."""
        exponent = max(self.failures - 1, 0)
        return min(self.restart_delay * (2 ** min(exponent, 32)), self.max_restart_delay)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._proc = self._spawn()
            self._started_at = time.monotonic()
            log.info("deployment runner started (pid %d)", self._proc.pid)
            code = self._proc.wait()
            if self._stopping.is_set():
                return
            lived = time.monotonic() - self._started_at
            self.failures = 1 if lived >= self.healthy_after else self.failures + 1
            self.last_exit = code
            delay = self.next_delay()
            log.error(
                "deployment runner exited with %s after %.0fs (%d in a row); restarting in %.1fs",
                code,
                lived,
                self.failures,
                delay,
            )
            self._stopping.wait(delay)
            if self.before_restart is not None and not self._stopping.is_set():
                try:
                    self.before_restart()
                except Exception as exc:  # e.g. Prefect down: its runs are recovered at acceld's next start
                    log.error("before restarting the runner: %s: %s", type(exc).__name__, exc)

    def wake(self) -> None:
        """Tell the runner child a flow run is due now (WAKE_SIGNAL); a runner not up misses nothing: it
        finds the run at its first poll."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):  # exited between the check and the signal
                proc.send_signal(WAKE_SIGNAL)

    def problem(self) -> str | None:
        """Why the runner cannot be trusted to run conversions now; None when it is up and healthy."""
        if self.failures == 0:
            return None
        proc = self._proc
        if (
            proc is not None
            and proc.poll() is None
            and time.monotonic() - self._started_at >= self.healthy_after
        ):
            self.failures = 0  # restarted and stayed up: healthy again
            return None
        return (
            f"deployment runner exited {self.failures} time(s) in a row (last exit code {self.last_exit}); "
            "see acceld's log"
        )

    def stop(self, grace: float = 30.0, graceful: bool = True) -> None:
        """SIGTERM, and SIGKILL after `grace` seconds; or SIGKILL at once when not `graceful` (acceld:
        Prefect's graceful stop of a runner marks its runs CANCELLED, and nothing would run them again)."""
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._thread.join(timeout=5)
