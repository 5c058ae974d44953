"""acceld's runner with flow runs executed in-process (`acceld --in-process-runs`).

Prefect's `serve` starts a fresh Python process per flow run, which imports Prefect and the flows again
(1.5 s on a quiet machine, 3+ s under load) before the conversion begins. This runner registers the same
deployments, polls the Prefect API for their due runs every `poll_seconds`, claims each (SCHEDULED →
PENDING, so a second runner never takes it too) and runs it in a thread of this already-warm process, each
deployment's runs at most its own limit at a time (a bulk run never takes a conversion's slot).

What is lost against `serve`: cancelling a running flow run from the UI (the thread cannot be killed; the run
finishes), and isolation (a crash of this process stops every run in progress; acceld schedules those runs
again and restarts it, as for any runner that died).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from service.memory import release_free_memory

log = logging.getLogger("acceld.runner")


# How often a wait between polls looks at whether it was woken (acceld's WAKE_SIGNAL: a run was created).
WAKE_CHECK_SECONDS = 0.05


def serve_in_process(
    deployments: Sequence[tuple[Any, Any, int | None]],
    poll_seconds: float,
    stop: threading.Event | None = None,
    wake_signal: signal.Signals | None = None,
) -> None:
    """Apply each (RunnerDeployment, its Flow, its runs at a time) and run their due flow runs in this process
    until `stop`; `wake_signal` (from the main thread only) makes the next poll come now."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterNextScheduledStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.flow_engine import run_flow
    from prefect.states import Pending

    flows: dict[UUID, Any] = {}
    limits: dict[UUID, int] = {}
    for deployment, flow, limit in deployments:
        deployment_id = UUID(str(deployment.apply()))
        flows[deployment_id] = flow
        limits[deployment_id] = max(1, limit or 4)
    slots = {deployment_id: threading.BoundedSemaphore(limit) for deployment_id, limit in limits.items()}
    pool = ThreadPoolExecutor(max_workers=sum(limits.values()), thread_name_prefix="flow-run")
    stop = stop or threading.Event()
    woken = [False]  # set by the handler alone: a lock taken in a signal handler can deadlock its own thread
    if wake_signal is not None:
        signal.signal(wake_signal, lambda *_: woken.__setitem__(0, True))

    def wait_for_next_poll() -> None:
        deadline = time.monotonic() + poll_seconds
        while not woken[0] and (left := deadline - time.monotonic()) > 0:
            if stop.wait(min(WAKE_CHECK_SECONDS, left)):
                break
        woken[0] = False

    def execute(flow: Any, run_id: UUID, slot: threading.BoundedSemaphore) -> None:
        log.info("running flow run %s in-process", run_id)
        try:
            with get_client(sync_client=True) as client:
                flow_run = client.read_flow_run(run_id)
            run_flow(flow, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")
        except Exception:  # the engine records the run's own failure; this is the runner's
            log.exception("flow run %s could not be executed", run_id)
        finally:
            slot.release()
            release_free_memory()  # an idle runner holds what it uses idle, not its last run's peak

    log.info("serving %d deployment(s) in-process, polling every %.1fs", len(flows), poll_seconds)
    with get_client(sync_client=True) as client:
        while not stop.is_set():
            due = []
            for deployment_id, limit in limits.items():  # each deployment's own due runs, up to its limit
                try:
                    due += client.read_flow_runs(
                        flow_run_filter=FlowRunFilter(
                            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                            next_scheduled_start_time=FlowRunFilterNextScheduledStartTime(
                                before_=datetime.now(UTC) + timedelta(seconds=poll_seconds)
                            ),
                        ),
                        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                        limit=limit,
                    )
                except Exception as exc:  # the API restarting: keep polling
                    log.warning("polling for flow runs failed: %s", exc)
            for run in sorted(due, key=lambda r: r.next_scheduled_start_time or r.created or 0):
                slot = slots.get(run.deployment_id) if run.deployment_id is not None else None
                if slot is None or not slot.acquire(blocking=False):
                    continue  # its deployment is at its limit: the run stays SCHEDULED for the next poll
                try:
                    claimed = client.set_flow_run_state(run.id, Pending()).status == SetStateStatus.ACCEPT
                except Exception as exc:
                    log.warning("could not claim flow run %s: %s", run.id, exc)
                    claimed = False
                if not claimed or run.deployment_id is None:
                    slot.release()
                    continue
                pool.submit(execute, flows[run.deployment_id], run.id, slot)
            wait_for_next_poll()
    pool.shutdown(wait=True)
