"""Starts one flow-run process of acceld's runner. Run by the runner as `python -I -S tasks/launcher.py
COMMAND…` (standard library only: it imports nothing of accel, and starts in a few tens of milliseconds).

1. It asks the kernel to SIGKILL it when the runner dies (PR_SET_PDEATHSIG), and ends at once when the runner
   is already gone: a run acceld recovers is never also run by a process its dead runner left behind.
2. When the runner has a warm flow-run starter (`service/flowstarter.py`, its socket in $ACCEL_FLOW_STARTER)
   and COMMAND is Prefect's `python -m prefect.engine`, the starter forks the run from a process that has
   Prefect and the flows imported already (1.5–3 s saved per run). This process stays as the run's stand-in
   for the runner: its pid is the one Prefect knows, the run writes to its stdin/stdout/stderr (passed over
   the socket), the signals it gets (the runner's cancel) are passed on to the run, and it exits as the run
   did (the same code, or killed by the same signal). When it dies (SIGKILL), the starter kills the run.
3. Otherwise, or when the starter cannot be reached or refuses, it execs COMMAND as before.
"""

import contextlib
import ctypes
import json
import os
import signal
import socket
import sys

RUNNER_PID_ENV = "ACCEL_RUNNER_PID"
STARTER_ENV = "ACCEL_FLOW_STARTER"
PR_SET_PDEATHSIG = 1
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def dies_with_parent(parent: int) -> bool:
    """Ask the kernel to SIGKILL this process when its parent dies; False when `parent` is no longer its
    parent (it died before the request took effect: the caller ends at once)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    return os.getppid() == parent


def main(command: list[str]) -> None:
    if not dies_with_parent(int(os.environ[RUNNER_PID_ENV])):
        os._exit(70)
    starter = os.environ.get(STARTER_ENV)
    if starter and _is_prefect_engine(command):
        conn = _send(starter, command)
        if conn is not None:
            _stand_in(conn)  # returns only when the starter refused: nothing was started
    os.execv(command[0], command)


def _is_prefect_engine(command: list[str]) -> bool:
    return (
        len(command) >= 3
        and command[1:3] == ["-m", "prefect.engine"]
        and os.path.realpath(command[0]) == os.path.realpath(sys.executable)
    )


def _send(path: str, command: list[str]) -> socket.socket | None:
    """The request sent with this process's stdin, stdout and stderr; None when the starter is not there
    (nothing was started: the caller execs)."""
    request = json.dumps({"argv": command[1:], "env": dict(os.environ), "cwd": os.getcwd()}).encode() + b"\n"
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        sent = socket.send_fds(conn, [request], [0, 1, 2])
        conn.sendall(request[sent:])
    except OSError:
        conn.close()
        return None
    return conn


def _stand_in(conn: socket.socket) -> None:
    answers = conn.makefile("rb")
    try:
        answer = json.loads(answers.readline())
        if "refused" in answer:
            conn.close()
            return
        pid = int(answer["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        # The starter took the request and then failed or died: its run (if forked) dies with it.
        sys.stderr.write("accel: the warm flow-run starter failed to start this flow run\n")
        sys.stderr.flush()
        os._exit(70)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    try:
        code = int(json.loads(answers.readline())["exit"])
    except (OSError, ValueError, KeyError, TypeError):
        # The starter died (and its runs with it, PR_SET_PDEATHSIG): say so, as a crash.
        sys.stderr.write(f"accel: the warm flow-run starter died while flow-run process {pid} ran\n")
        sys.stderr.flush()
        os._exit(70)
    if code < 0:  # killed by a signal: end the same way, so the runner reports what happened to the run
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)


if __name__ == "__main__":
    main(sys.argv[1:])
