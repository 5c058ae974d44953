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
from pathlib import Path
from typing import IO

from service.state import PROJECT_ROOT

log = logging.getLogger("acceld")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the runner child: get SIGTERM when acceld dies, even by SIGKILL (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


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
    """Keeps one `acceld --runner` child alive until stopped."""

    def __init__(self, config_path: str, restart_delay: float = 3.0, in_process: bool = False) -> None:
        self.command = [sys.executable, "-m", "service.acceld", "--config", config_path, "--runner"]
        if in_process:
            self.command.append("--in-process-runs")
        self.restart_delay = restart_delay
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="runner-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command, cwd=PROJECT_ROOT, preexec_fn=_die_with_parent)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._proc = self._spawn()
            log.info("deployment runner started (pid %d)", self._proc.pid)
            code = self._proc.wait()
            if self._stopping.is_set():
                return
            log.error("deployment runner exited with %s; restarting in %.0fs", code, self.restart_delay)
            self._stopping.wait(self.restart_delay)

    def stop(self, grace: float = 30.0) -> None:
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._thread.join(timeout=5)
