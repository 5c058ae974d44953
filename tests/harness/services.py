"""Real processes for end-to-end tests: a Prefect server (`service.prefectserver`) and `acceld`, on loopback.

The Prefect server gets its own PREFECT_HOME (a tmp dir), a free port and a database: a private PostgreSQL
(tests/harness/postgres.py) in the e2e suite, as in the scale-out mode, since SQLite answers `database is
locked` under concurrent conversions; SQLite when no database URL is given. acceld
runs as `python -m service.acceld` against it. Output goes to log files the tests read (e.g. to prove
that no `database is locked` happened).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from accel.reference import Reference
from tests.harness.registry import free_port

REPO = Path(__file__).resolve().parents[2]

# What the e2e acceld is configured with (tests/e2e/conftest.py) and its tests send or expect.
WEBHOOK_SECRET = "Bearer e2e-webhook-secret"
WEBHOOK_AUTH = {"Authorization": WEBHOOK_SECRET}  # the headers of an authenticated webhook
SUFFIX = "-esgz"


def acceld_settings(
    workdir: Path, port: int, source_hosts: list[str], *, metrics: bool = False
) -> dict[str, Any]:
    """The e2e suite's acceld settings: webhooks from `source_hosts` (signed with WEBHOOK_SECRET), 5 workers,
    eStargz at compression level 1 for tags ending in SUFFIX; the work dir under `workdir`."""
    settings: dict[str, Any] = {"server": {"name": "API", "host": "127.0.0.1", "port": port}}
    if metrics:
        settings["metric"] = {"enabled": True}
    settings["provider"] = {
        "source": {host: {"webhook": {"auth_header": WEBHOOK_SECRET}} for host in source_hosts},
        "work_dir": str(workdir / "work"),
    }
    settings["converter"] = {
        "worker": 5,
        "driver": {"type": "estargz", "config": {"compression_level": 1}},
        "rules": [{"tag_suffix": SUFFIX}],
    }
    return settings


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
                    "service.prefectserver",  # Prefect's server, SQLite writers locking at BEGIN
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

    def pause(self) -> None:
        """SIGSTOP the server (and anything it started): it accepts connections and answers nothing."""
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_all(signal.SIGCONT)

    def _signal_all(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        for pid in [self._proc.pid, *descendants(self._proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def client_env(self, home: Path) -> dict[str, str]:
        env = _quiet_prefect_env(home)
        env["PREFECT_API_URL"] = self.api_url
        return env


class Acceld:
    """`acceld --config FILE` as a child process; restartable, with its output in one log file."""

    def __init__(
        self, workdir: Path, prefect: PrefectServer, settings: dict[str, Any], args: tuple[str, ...] = ()
    ) -> None:
        self.args = args  # extra acceld flags, e.g. --in-process-runs, or --no-serve for the work-pool mode
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

    def terminate(self) -> None:
        """SIGTERM, as a service manager stops it; `wait` for its exit code."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self._proc is not None
        return self._proc.wait(timeout=timeout)

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def kill(self) -> None:
        """`kill -9` of acceld and every process it started (its runner, their flow runs), as a machine
        that loses power would leave them."""
        if self._proc is None or self._proc.poll() is not None:
            return
        for pid in [*descendants(self._proc.pid), self._proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def acceld_on_sqlite(
    workdir: Path,
    source_hosts: list[str],
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    **converter: Any,
) -> Iterator[Acceld]:
    """acceld with the suite's settings (`acceld_settings`) and these `converter` keys (e.g. `worker=1`), on a
    Prefect server of its own (SQLite), both under `workdir`, with extra flags `args` and variables `env`;
    stopped at the end, its log's tail printed."""
    prefect = PrefectServer(workdir / "prefect")
    prefect.start()
    settings = acceld_settings(workdir / "acceld", free_port(), source_hosts)
    settings["converter"].update(converter)
    service = Acceld(workdir / "acceld", prefect, settings, args)
    service.env.update(env or {})
    try:
        service.start()
        yield service
    finally:
        service.stop()
        prefect.stop()
        print(tail(service.log_path, 3000))


def emit_push_event(env: dict[str, str], ref: Reference) -> None:
    """`prefect event emit harbor.artifact.pushed` for the image `ref` (tagged and by digest), exactly
    README's command: what prefect.yaml's trigger of convert-image answers."""
    prefect_cli(
        env,
        "event", "emit", "harbor.artifact.pushed",
        "--resource-id", f"harbor.artifact.{ref.name}@{ref.digest}",
        "--payload", json.dumps({"source": str(ref)}),
    )  # fmt: skip


def prefect_cli(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    """`prefect ARGS` from the checkout (as an operator runs it); its output, or an error with it."""
    done = subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        env={**env, "PREFECT_CLI_PROMPT": "false"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"prefect {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (flow run processes of a worker), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


class PrefectWorker:
    """`prefect worker start --pool POOL` with its own PREFECT_HOME, ACCEL_CONFIG and log file."""

    def __init__(
        self, workdir: Path, prefect: PrefectServer, name: str, config_path: Path, pool: str
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{name}.log"
        self.env = {
            **prefect.client_env(workdir / "prefect-home"),
            "ACCEL_CONFIG": str(config_path),
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
        }
        self.pool = pool
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, limit: int) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", self.pool,
                 "--name", self.name, "--limit", str(limit), "--type", "process"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
            )  # fmt: skip

    def kill(self) -> None:
        """SIGKILL the worker and its flow run processes: a machine that died mid-run."""
        if self._proc is None:
            return
        for pid in [self._proc.pid, *descendants(self._proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._proc.wait(timeout=10)

    def stop(self) -> None:
        _stop(self._proc)

    def log(self) -> str:
        return tail(self.log_path, 20000)
