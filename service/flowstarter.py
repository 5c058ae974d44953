"""acceld's warm flow-run starter: forks each flow-run process from a process that has Prefect, the flows
and the drivers imported, instead of starting a fresh Python that imports them again (1.5 s on a quiet
machine, 3+ s under load, before a conversion begins).

Prefect's runner still starts one process per flow run, through `tasks/launcher.py`; for Prefect's own
`python -m prefect.engine` that launcher sends its request here (argv, environment, working directory, and
its stdin/stdout/stderr as file descriptors) over a unix socket in a private directory, and stands in for
the run towards the runner (pid, signals, exit status). This process forks, and the child becomes that
flow-run process: the launcher's environment and descriptors, Prefect's settings read again from that
environment, and `prefect.engine` run as `__main__`, exactly as `python -m prefect.engine` would; only the
imports are already done. Each run is still a process of its own: the UI cancels it, a crash ends only it.

Forking is only safe from a single-threaded process, so this process only imports and then serves one
request at a time from a single thread; when an import started a thread it does not serve at all, and the
launchers exec as before. It dies with the runner (PR_SET_PDEATHSIG), each run dies with it, and a run whose
launcher died (SIGKILL from the runner) is killed.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
import runpy
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from service.localrunner import warm_up
from service.supervisor import WAKE_SIGNAL
from tasks.launcher import RUNNER_PID_ENV, STARTER_ENV, dies_with_parent

log = logging.getLogger("acceld.flowstarter")

ENGINE_MODULE = "prefect.engine"
MAX_REQUEST = 4 << 20  # an environment is a few KiB; anything larger is no launcher of ours


@dataclass
class _Launch:
    """One launcher's connection: its request as it arrives, then the run forked for it."""

    conn: socket.socket
    data: bytearray = field(default_factory=bytearray)
    fds: list[int] = field(default_factory=list)
    pid: int | None = None


def start(runner_pid: int) -> subprocess.Popen[bytes]:
    """In acceld's runner: start the starter as a child and point the launchers at it
    ($ACCEL_FLOW_STARTER, inherited by every flow-run process the runner starts). Until its socket exists
    (its imports take a second or more), and whenever it is gone, launchers exec the run as before."""
    directory = tempfile.mkdtemp(prefix="accel-starter-")  # 0700: only this user reaches the socket
    path = str(Path(directory) / "socket")
    process = subprocess.Popen(
        [sys.executable, "-m", "service.flowstarter", "--socket", path],
        env={**os.environ, RUNNER_PID_ENV: str(runner_pid)},
        stdin=subprocess.DEVNULL,
    )
    os.environ[STARTER_ENV] = path

    def stop() -> None:
        with contextlib.suppress(OSError):
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        shutil.rmtree(directory, ignore_errors=True)

    atexit.register(stop)
    return process


def serve(path: str, modules: Sequence[str] = (ENGINE_MODULE,), warm: Sequence[str] = ()) -> int:
    """Serve launchers on `path` until the runner dies (or SIGTERM). `modules`: what a request may run
    (`-m MODULE`); `warm`: imported first (what those modules and the flows they load import)."""
    warm_up(warm)
    if threading.active_count() != 1:
        log.warning("not starting flow runs warm: an import started a thread (%s)", threading.enumerate())
        return 1
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".new")
    os.chmod(path + ".new", 0o600)
    listener.listen(64)
    os.replace(path + ".new", path)  # launchers connect only once it listens
    listener.setblocking(False)
    wake_read, wake_write = socket.socketpair()
    wake_read.setblocking(False)
    wake_write.setblocking(False)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the loop through the wakeup fd
    signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_read, selectors.EVENT_READ, "wake")
    launches: dict[socket.socket, _Launch] = {}
    runs: dict[int, _Launch] = {}
    log.info("warm flow-run starter listening on %s (pid %d)", path, os.getpid())
    try:
        while not stopping:
            for key, _ in selector.select(timeout=1.0):
                if key.data == "accept":
                    with contextlib.suppress(BlockingIOError, InterruptedError):
                        conn, _ = listener.accept()
                        if _same_user(conn):
                            launches[conn] = _Launch(conn)
                            selector.register(conn, selectors.EVENT_READ, "conn")
                        else:
                            conn.close()
                elif key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        while wake_read.recv(4096):
                            pass
                    _reap(runs, launches, selector)
                else:
                    launch = launches[key.fileobj]  # type: ignore[index]
                    if not _read(launch):  # EOF: the launcher died (the runner killed it): so does its run
                        if launch.pid is not None:
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(launch.pid, signal.SIGKILL)
                        if launch.pid is None or launch.pid not in runs:
                            _forget(launch, launches, selector)
                        continue
                    if launch.pid is None and launch.data.endswith(b"\n"):
                        others = [listener.fileno(), wake_read.fileno(), wake_write.fileno()]
                        others += [c.fileno() for c in launches if c is not launch.conn]
                        others += [selector.fileno()] if hasattr(selector, "fileno") else []
                        launch.pid = _fork(launch, modules, others)
                        if launch.pid is None:  # refused: the launcher execs the run itself
                            _forget(launch, launches, selector)
                        else:
                            runs[launch.pid] = launch
            _reap(runs, launches, selector)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return 0


def _same_user(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid == os.getuid()


def _read(launch: _Launch) -> bool:
    """Read what the launcher sent; False on EOF."""
    try:
        data, fds, _flags, _addr = socket.recv_fds(launch.conn, 65536, 3)
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return False
    launch.fds += fds
    if not data:
        return False
    if launch.pid is None:
        launch.data += data
        if len(launch.data) > MAX_REQUEST:
            return False
    return True


def _forget(
    launch: _Launch, launches: dict[socket.socket, _Launch], selector: selectors.BaseSelector
) -> None:
    with contextlib.suppress(KeyError, ValueError):
        selector.unregister(launch.conn)
    launches.pop(launch.conn, None)
    for fd in launch.fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    launch.fds = []
    launch.conn.close()


def _reap(
    runs: dict[int, _Launch], launches: dict[socket.socket, _Launch], selector: selectors.BaseSelector
) -> None:
    """Tell each ended run's launcher how it ended (its exit code, or minus the signal that killed it)."""
    while runs:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        launch = runs.pop(pid, None)
        if launch is None:
            continue
        with contextlib.suppress(OSError):
            launch.conn.setblocking(True)
            launch.conn.sendall(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
        _forget(launch, launches, selector)


def _fork(launch: _Launch, modules: Sequence[str], others: list[int]) -> int | None:
    """Fork the run the launcher asked for; its pid (sent to the launcher), or None when refused (the
    launcher is told, and execs the run itself)."""
    if threading.active_count() != 1:
        return _refuse(launch, f"a thread was started here ({threading.enumerate()})")
    try:
        request = json.loads(bytes(launch.data))
        argv = [str(a) for a in request["argv"]]
        env = {str(k): str(v) for k, v in request["env"].items()}
        cwd = str(request["cwd"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return _refuse(launch, "a launch request that is not one")
    if len(argv) < 2 or argv[0] != "-m" or argv[1] not in modules or len(launch.fds) != 3:
        return _refuse(launch, f"{argv[:2]!r}: only -m {' or '.join(modules)}, with 3 descriptors")
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    starter = os.getpid()
    pid = os.fork()
    if pid == 0:
        _become_run(launch, argv[1], argv[2:], env, cwd, others, starter)  # never returns
    for fd in launch.fds:
        os.close(fd)
    launch.fds = []
    try:
        launch.conn.setblocking(True)
        launch.conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        launch.conn.setblocking(False)
    except OSError:  # the launcher is gone: so is the run
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pid


def _refuse(launch: _Launch, why: str) -> None:
    log.warning("not starting a flow run warm: %s", why)
    with contextlib.suppress(OSError):
        launch.conn.setblocking(True)
        launch.conn.sendall(json.dumps({"refused": why}).encode() + b"\n")
    return None


def _become_run(
    launch: _Launch,
    module: str,
    args: list[str],
    env: dict[str, str],
    cwd: str,
    others: list[int],
    starter: int,
) -> None:
    """In the forked child: become `python -m MODULE ARGS…` as the launcher would have run it."""
    code = 70
    try:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        if not dies_with_parent(starter):
            os._exit(70)  # the starter died while this forked
        for fd in others:
            with contextlib.suppress(OSError):
                os.close(fd)
        launch.conn.close()
        for target, fd in enumerate(launch.fds):
            os.dup2(fd, target)
        for fd in launch.fds:
            if fd > 2:
                os.close(fd)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()  # Prefect's settings as this run's environment says
        sys.argv = [module, *args]
        # As in a fresh `python -m`: the module runs once, as __main__ (runpy warns when it is imported).
        sys.modules.pop(module, None)
        code = 0
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, int | None):
                print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()  # Prefect drains its log and event workers here, as at interpreter exit
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code & 0xFF)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.flowstarter")
    parser.add_argument("--socket", required=True, help="unix socket path to listen on (in a private dir)")
    parser.add_argument("--module", action="append", help="a module requests may run (prefect.engine)")
    parser.add_argument("--warm", action="append", default=[], help="a module to import first")
    args = parser.parse_args(argv)
    runner = os.environ.get(RUNNER_PID_ENV, "")
    # acceld's runner ignores its wake signal until it handles it (service/supervisor.py WAKE_SIGNAL), and
    # this was started before then: the runs forked from here get the default, as any process.
    signal.signal(WAKE_SIGNAL, signal.SIG_DFL)
    # It dies with the runner, and does not start at all when the runner already died.
    if runner.isdigit() and not dies_with_parent(int(runner)):
        return 70
    warm = args.warm or ["flows.convert_image", "flows.bulk_reconvert", "prefect.flow_engine"]
    return serve(args.socket, args.module or [ENGINE_MODULE], warm)


if __name__ == "__main__":
    sys.exit(main())
