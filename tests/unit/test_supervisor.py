"""The runner supervisor (issue 9): capped exponential backoff, and a crash loop visible to /readyz."""

from __future__ import annotations

import sys

from service.supervisor import RunnerSupervisor
from tests.harness.api import wait_until


def test_restart_delays_double_up_to_the_cap():
    supervisor = RunnerSupervisor("unused.yaml", restart_delay=1.0, max_restart_delay=60.0)
    delays = []
    for failures in range(1, 10):
        supervisor.failures = failures
        delays.append(supervisor.next_delay())
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_a_crash_looping_runner_is_reported_and_backed_off():
    crashing = [sys.executable, "-c", "raise SystemExit(3)"]
    supervisor = RunnerSupervisor(
        "unused.yaml", restart_delay=0.01, max_restart_delay=0.05, healthy_after=60, command=crashing
    )
    assert supervisor.problem() is None
    supervisor.start()
    try:
        wait_until(lambda: supervisor.failures >= 4, timeout=60, what="four runner exits")
        problem = supervisor.problem()
        assert problem is not None and "exit code 3" in problem and "in a row" in problem
        assert supervisor.next_delay() == 0.05  # capped
    finally:
        supervisor.stop(grace=5)


def test_a_runner_that_stays_up_is_healthy_again():
    sleeping = [sys.executable, "-c", "import time; time.sleep(60)"]
    supervisor = RunnerSupervisor("unused.yaml", healthy_after=0.0, command=sleeping)
    supervisor.failures, supervisor.last_exit = 3, 1  # as after a crash loop
    supervisor.start()
    try:
        wait_until(lambda: supervisor.problem() is None, timeout=30, what="the runner to count as healthy")
        assert supervisor.failures == 0
    finally:
        supervisor.stop(grace=5)


def test_a_runner_that_died_has_its_orphans_recovered_before_it_starts_again():
    """acceld's hook (its orphaned runs scheduled again) runs before each restart, not before the first start,
    and a hook that fails does not keep the runner down."""
    crashing = [sys.executable, "-c", "raise SystemExit(3)"]
    calls: list[int] = []

    def recover() -> None:
        calls.append(supervisor.failures)
        if len(calls) == 1:
            raise RuntimeError("Prefect API unreachable")

    supervisor = RunnerSupervisor(
        "unused.yaml", restart_delay=0.01, max_restart_delay=0.01, command=crashing, before_restart=recover
    )
    supervisor.start()
    try:
        wait_until(lambda: supervisor.failures >= 3, timeout=60, what="three runner exits")
    finally:
        supervisor.stop(grace=5)
    assert calls[:2] == [
        1,
        2,
    ]  # after the first exit, then after the second: the first call's error is logged


def test_acceld_stops_its_runner_with_sigkill_so_prefect_does_not_cancel_its_runs():
    """A runner told SIGTERM stops gracefully, and Prefect's graceful stop marks its runs CANCELLED; acceld
    kills it instead (its runs are scheduled again), at once."""
    import signal
    import time

    ignoring_sigterm = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
    ]
    supervisor = RunnerSupervisor("unused.yaml", command=ignoring_sigterm)
    supervisor.start()
    wait_until(lambda: supervisor._proc is not None, timeout=30, what="the runner")
    started = time.monotonic()
    supervisor.stop(grace=30, graceful=False)
    assert time.monotonic() - started < 5
    assert supervisor._proc.returncode == -signal.SIGKILL
