"""Real processes for end-to-end tests: a `prefect server start` and `acceld`, both on loopback.

The Prefect server gets its own PREFECT_HOME (a tmp dir), a free port and a database: a private PostgreSQL
(tests/harness/postgres.py) in the e2e suite, as in the scale-out mode, since SQLite answers `database is
locked` under concurrent conversions; SQLite when no database URL is given. acceld
runs as `python -m service.acceld` against it. Output goes to log files the tests read (e.g. to prove
that no `database is locked` happened).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.harness.registry import free_port

REPO = Path(__file__).resolve().parents[2]

# What the e2e acceld is configured with (tests/e2e/conftest.py) and its tests send or expect.
WEBHOOK_SECRET = "Bearer e2e-webhook-secret"
SUFFIX = "-esgz"


def _quiet_prefect_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
        PYTHONPATH=str(REPO),
    )
    return env


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float, ok=(200,)) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}:\n{tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code in ok:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout}s:\n{tail(log)}")


def tail(path: Path, size: int = 4000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-size:]
    return ""


def _stop(proc: subprocess.Popen[bytes] | None, grace: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class PrefectServer:
    def __init__(self, workdir: Path, database_url: str | None = None) -> None:
        self.database_url = database_url
        self.home = workdir / "prefect-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.log_path = workdir / "prefect-server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "prefect",
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                env=self._server_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.home,
            )
        _wait(f"{self.api_url}/health", self._proc, self.log_path, timeout)

    def _server_env(self) -> dict[str, str]:
        env = _quiet_prefect_env(self.home)
        if self.database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        return env

    def stop(self) -> None:
        _stop(self._proc)

    def client_env(self, home: Path) -> dict[str, str]:
        env = _quiet_prefect_env(home)
        env["PREFECT_API_URL"] = self.api_url
        return env


class Acceld:
    """`acceld --config FILE` as a child process; restartable, with its output in one log file."""

    def __init__(
        self, workdir: Path, prefect: PrefectServer, settings: dict[str, Any], args: tuple[str, ...] = ()
    ) -> None:
        self.args = args  # extra acceld flags, e.g. --in-process-runs
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = int(settings["server"]["port"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(settings))
        self.log_path = workdir / "acceld.log"
        self.env = prefect.client_env(workdir / "client-home")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "service.acceld", "--config", str(self.config_path), *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
            )
        _wait(f"{self.url}/readyz", self._proc, self.log_path, timeout)

    def stop(self) -> None:
        _stop(self._proc, grace=40)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
