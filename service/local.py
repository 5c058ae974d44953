"""The project-local background processes of one-time mode, under `<state>/local/`.

`accelctl convert` (without PREFECT_API_URL) starts them once and reuses them on every later call:

- a Prefect server (`service.prefectserver`: `prefect server start` with SQLite writers locking at BEGIN, on
  127.0.0.1, SQLite under `<state>/prefect`), so a conversion pays no server start;
- the warm runner (`python -m service.localrunner`), which has Prefect and the flows imported and runs each
  conversion in-process, so a call pays neither Python nor Prefect imports (as docker → dockerd).

Both are detached (own session) and survive the accelctl that started them; `accelctl server stop` ends
them. Files: `server.json` (pid, port), `runner.pid`, `runner.sock`, `server.log`, `runner.log`, and `lock`,
which serialises starts so two concurrent calls never start two servers.

This module imports only the standard library, and of it little: it runs before any Prefect import, on every
`accelctl convert` (subprocess, urllib, dataclasses would add ~50 ms of CPU to a call whose runner is up).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from service.state import PROJECT_ROOT, state_dir

if TYPE_CHECKING:
    import subprocess

# A fresh Prefect home migrates its database first; on a loaded 2-core machine that took up to 55 s.
SERVER_START_TIMEOUT = float(os.environ.get("ACCEL_SERVER_START_TIMEOUT") or 180.0)
RUNNER_START_TIMEOUT = 60.0
STOP_GRACE = 15.0
# How often a start looks whether the server answers and the runner listens: a refused connection costs
# microseconds, and every poll interval is waited for once more by the first call.
HEALTH_POLL_SECONDS = 0.05


class LocalServiceError(RuntimeError):
    """A background process could not be started; the message says which and where its log is."""


def local_dir() -> Path:
    path = state_dir() / "local"
    path.mkdir(parents=True, exist_ok=True)
    return path


class ServerInfo(NamedTuple):
    pid: int
    port: int

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"


def _pid_alive(pid: int, marker: str) -> bool:
    """True when `pid` runs and its command line contains `marker`: a recycled pid is not ours."""
    for _ in range(40):
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return False  # exited, not yet reaped
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, IndexError):
            return False
        if raw:
            return marker in raw.replace(b"\0", b" ").decode(errors="replace")
        time.sleep(0.05)  # empty while the process is mid-exec: look again, briefly
    return False


def _healthy(api_url: str, timeout: float = 2.0) -> bool:
    """GET `<api_url>/health` answers 200. One HTTP/1.0 request on a plain socket: the server is ours, on
    loopback, and urllib.request's imports cost more CPU than the rest of a client's start."""
    scheme, _, rest = api_url.partition("://")
    hostport, _, path = rest.partition("/")
    path = f"/{path.strip('/')}/health" if path.strip("/") else "/health"
    host, _, port = hostport.rpartition(":")
    if scheme != "http" or not host or not port.isdigit():
        return False
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n".encode())
            status_line = sock.makefile("rb").readline(256)
    except OSError:
        return False
    parts = status_line.split()
    return len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1] == b"200"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _tail(path: Path, size: int = 2000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-size:]
    return ""


def _server_marker(port: int) -> str:
    return f"service.prefectserver --host 127.0.0.1 --port {port}"


RUNNER_MARKER = "service.localrunner"


# Peak RSS: glibc gives each allocating thread its own arena (up to 8 per CPU), where the codec and
# upload threads' freed buffers stay resident; and after the first large free it stops mapping
# buffers of up to 32 MiB separately, so they fragment the heap. One arena and a fixed mmap
# threshold keep the runner's peak close to what is in use (bench/oneshot.py: under 200 MiB instead
# of 260-580 MiB on ~200 MiB images). The threshold is above the 1 MiB blocks that every download,
# inflate and pipe hands around: mapped one by one, each costs 256 page faults when used and an
# munmap when freed (at 256 KiB: +0.6-1.0 CPU-s per 200 MiB image, a third of the runner's CPU).
MALLOC_DEFAULTS = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(4 << 20)}


def _prefect_env(api_url: str | None = None) -> dict[str, str]:
    home = state_dir() / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PYTHONUNBUFFERED="1",  # the logs are what a failed start is explained with
        **{name: os.environ.get(name, value) for name, value in MALLOC_DEFAULTS.items()},
        PYTHONPATH=os.pathsep.join(
            dict.fromkeys(
                [str(PROJECT_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
            )
        ),
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


# Server services the local server does without. The event persister writes every event into the database
# for the UI's event feed and the events API: this server has no UI, and nothing of accel (nor acceld pointed
# at it) reads events back; automations (acceld's `harbor.artifact.pushed` trigger) are evaluated from the
# event stream, and task runs recorded from it, by services that stay. -0.08 server CPU-s per conversion
# (bench/fixedcost.py --runner: 0.34 → 0.26, load 3-4).
SERVER_SERVICES_OFF = ("EVENT_PERSISTER",)


def _server_env() -> dict[str, str]:
    env = _prefect_env()
    env.update({f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in SERVER_SERVICES_OFF})
    return env


@contextlib.contextmanager
def _start_lock() -> Iterator[None]:
    with (local_dir() / "lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    import subprocess  # only when something starts

    with log.open("ab") as out:
        return subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=state_dir(),
            start_new_session=True,  # not killed with the accelctl (or its terminal) that started it
        )


def _terminate(pid: int, marker: str, grace: float = STOP_GRACE) -> bool:
    """SIGTERM, then SIGKILL after `grace`; False when `pid` was not (or no longer) ours."""
    if not _pid_alive(pid, marker):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _pid_alive(pid, marker):
            return True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when we started it in this process
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


# --- the Prefect server ---------------------------------------------------------------------------------


def server_info() -> ServerInfo | None:
    """The recorded server, if its process is still ours (a stale record is ignored)."""
    try:
        data = json.loads((local_dir() / "server.json").read_text())
        info = ServerInfo(pid=int(data["pid"]), port=int(data["port"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info if _pid_alive(info.pid, _server_marker(info.port)) else None


def running_server() -> ServerInfo | None:
    """The recorded server when it is alive and answers its health check."""
    info = server_info()
    return info if info is not None and _healthy(info.api_url) else None


def ensure_server(timeout: float = SERVER_START_TIMEOUT) -> tuple[ServerInfo, bool]:
    """The local Prefect server, started if none answers; returns it and whether this call started it."""
    with _start_lock():
        info, proc = _start_server()
        _wait_server(info, proc, timeout)
        return info, proc is not None


def _start_server() -> tuple[ServerInfo, subprocess.Popen[bytes] | None]:
    """Under the start lock: the recorded server, or a new one spawned (with its Popen), not waited for."""
    info = server_info()
    if info is not None:
        return info, None  # ours and alive: wait for it (another call may have started it), never replace it
    (local_dir() / "server.json").unlink(missing_ok=True)
    port = _free_port()
    proc = _spawn(
        [sys.executable, "-m", *_server_marker(port).split()], _server_env(), local_dir() / "server.log"
    )
    info = ServerInfo(pid=proc.pid, port=port)
    (local_dir() / "server.json").write_text(json.dumps({"pid": info.pid, "port": info.port}))
    return info, proc


def _wait_server(info: ServerInfo, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Returns once `info` answers its health check; raises LocalServiceError saying why it does not."""
    if _wait_healthy(info, proc, timeout):
        return
    log = local_dir() / "server.log"
    if proc is None:
        raise LocalServiceError(
            f"the local Prefect server (pid {info.pid}, {info.api_url}) does not answer after "
            f"{timeout:.0f}s; if it does not recover, `accelctl server stop` and run again (log: {log})"
        )
    exited = proc.poll()
    if exited is None:
        # Slow, not dead: keep it, so the next call waits for this one instead of starting another.
        raise LocalServiceError(
            f"the local Prefect server (pid {info.pid}) did not answer within {timeout:.0f}s; it is "
            "still starting: run the command again to reuse it, or `accelctl server stop` "
            f"(ACCEL_SERVER_START_TIMEOUT sets the wait; log: {log}); last lines:\n{_tail(log)}"
        )
    (local_dir() / "server.json").unlink(missing_ok=True)
    raise LocalServiceError(
        f"the local Prefect server exited with {exited} while starting (log: {log}); last lines:\n"
        f"{_tail(log)}"
    )


def _wait_healthy(info: ServerInfo, proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Our own child is watched through its Popen: right after exec its /proc cmdline can read empty.
        if proc is not None and proc.poll() is not None:
            return False
        if proc is None and not _pid_alive(info.pid, _server_marker(info.port)):
            return False
        if _healthy(info.api_url):
            return True
        time.sleep(HEALTH_POLL_SECONDS)
    return False


# --- the warm runner ------------------------------------------------------------------------------------


def runner_socket() -> Path:
    return local_dir() / "runner.sock"


def runner_pid() -> int | None:
    try:
        pid = int((local_dir() / "runner.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid, RUNNER_MARKER) else None


def connect_runner() -> socket.socket | None:
    """A connection to the warm runner, or None when none listens (a stale socket file is not one)."""
    path = runner_socket()
    if not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    return sock


def warm_runner() -> socket.socket | None:
    """A connection to the runner when it and its server are both up already, else None. Starts and creates
    nothing (not even `<state>/local/`): the cheap first look of every `accelctl convert`."""
    if not (state_dir() / "local" / "server.json").exists():
        return None
    server = running_server()
    if server is None or _read(local_dir() / "runner.api") != server.api_url:
        return None
    return connect_runner()


def ensure_services(
    server_timeout: float = SERVER_START_TIMEOUT, runner_timeout: float = RUNNER_START_TIMEOUT
) -> tuple[ServerInfo, socket.socket, bool, bool]:
    """The local server and a connection to the runner, each started if needed; returns both and whether
    this call started the server, and the runner.

    A runner needs only its server's address to start, so both start at once: the runner imports Prefect
    and the flows (~2 CPU-s) while the server starts (~5 CPU-s); on two cores the first call waits for the
    longer of the two, not their sum (bench/firstcall.py)."""
    with _start_lock():
        server, server_proc = _start_server()
        sock, runner_proc = _start_runner(server)
        try:
            _wait_server(server, server_proc, server_timeout)
        except LocalServiceError:
            if sock is not None:
                sock.close()
            if runner_proc is not None and server_info() is None:  # its server is gone: so is its use
                _terminate(runner_proc.pid, RUNNER_MARKER)
            raise
        return (
            server,
            sock or _wait_runner(runner_proc, runner_timeout),
            server_proc is not None,
            sock is None,
        )


def _current_runner(server: ServerInfo) -> socket.socket | None:
    """A connection to the listening runner when it talks to `server`."""
    sock = connect_runner()
    if sock is not None and _read(local_dir() / "runner.api") != server.api_url:
        sock.close()
        return None
    return sock


def _start_runner(server: ServerInfo) -> tuple[socket.socket | None, subprocess.Popen[bytes] | None]:
    """Under the start lock: a connection to the listening runner of `server`, or a new runner spawned (not
    waited for; any other runner is ended first)."""
    if (sock := _current_runner(server)) is not None:
        return sock, None
    if (pid := runner_pid()) is not None:
        _terminate(pid, RUNNER_MARKER)  # alive but not listening, or talking to another server: replace it
    runner_socket().unlink(missing_ok=True)
    proc = _spawn(
        [sys.executable, "-m", RUNNER_MARKER, "--socket", str(runner_socket())],
        _prefect_env(server.api_url),
        local_dir() / "runner.log",
    )
    (local_dir() / "runner.pid").write_text(str(proc.pid))
    (local_dir() / "runner.api").write_text(server.api_url)
    return None, proc


def _wait_runner(proc: subprocess.Popen[bytes] | None, timeout: float) -> socket.socket:
    """A connection to the runner `proc` once it listens; it is ended when it does not within `timeout`."""
    assert proc is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if (sock := connect_runner()) is not None:
            return sock
        time.sleep(HEALTH_POLL_SECONDS)
    _terminate(proc.pid, RUNNER_MARKER)
    log = local_dir() / "runner.log"
    raise LocalServiceError(
        f"the local runner did not start within {timeout:.0f}s (log: {log}); last lines:\n{_tail(log)}"
    )


# --- status and stop ------------------------------------------------------------------------------------


def status() -> dict[str, object]:
    info = server_info()
    pid = runner_pid()
    return {
        "state_dir": str(state_dir()),
        "server": None
        if info is None
        else {"pid": info.pid, "api_url": info.api_url, "healthy": _healthy(info.api_url)},
        "runner": None if pid is None else {"pid": pid, "socket": str(runner_socket())},
    }


def stop() -> list[str]:
    """Stop the runner, then the server; returns what was stopped. Stale records are removed either way."""
    stopped = []
    with _start_lock():
        if (pid := runner_pid()) is not None and _terminate(pid, RUNNER_MARKER):
            stopped.append(f"runner (pid {pid})")
        (local_dir() / "runner.pid").unlink(missing_ok=True)
        (local_dir() / "runner.api").unlink(missing_ok=True)
        runner_socket().unlink(missing_ok=True)
        info = server_info()
        if info is not None and _terminate(info.pid, _server_marker(info.port)):
            stopped.append(f"Prefect server (pid {info.pid}, {info.api_url})")
        (local_dir() / "server.json").unlink(missing_ok=True)
    return stopped
