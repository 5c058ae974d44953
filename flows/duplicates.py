"""One conversion per idempotency key, whoever started the run.

acceld submits runs with the plan's idempotency key, so Prefect itself answers a repeated webhook with the run
it already has. A run started by the `harbor.artifact.pushed` event trigger has no such key (automations key
its runs by the event), so the flow checks for itself: among the deployment's recent runs that are not
failed, crashed or cancelled, and not duplicates themselves, the ones whose parameters give the same key are
one conversion, and the earliest created does the work. Every racer sees the same runs (a run exists from
the moment it is scheduled), so two runs of one event started at once agree on which one converts.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort

from accel.config import Settings
from accel.plan import ConversionPlan, plan_conversion, with_target
from accel.transports import parse_location

log = logging.getLogger(__name__)

DUPLICATE_TAG = "accel-duplicate"  # a run that skipped because another run converts the same image
WINDOW = dt.timedelta(days=1)  # how far back a run counts as "the same event again"
_LIVE_OR_DONE = [
    StateType.SCHEDULED,
    StateType.PENDING,
    StateType.RUNNING,
    StateType.PAUSED,
    StateType.COMPLETED,
]
_PAGE = 200
_MAX_RUNS = 2000


Identity = tuple[str, tuple[tuple[str, str], ...]]


def identity(plan: ConversionPlan) -> Identity:
    """The plan's idempotency key and its targets: an explicit `target` does not change the key (yet), and a
    run writing elsewhere is not a duplicate."""
    return plan.idempotency_key, tuple(sorted(plan.target_names().items()))


def key_of_run(settings: Settings, run: FlowRun) -> Identity | None:
    """The identity a run's parameters give under `settings`, planned as the flow plans them; None for
    parameters that plan nothing."""
    params = run.parameters or {}
    try:
        source = parse_location(str(params.get("source", ""))).reference
        named = source if source.tag or source.digest else source.with_tag("latest")
        plan = plan_conversion(
            settings, named, params.get("drivers") or None, params.get("target_repository")
        )
        target = params.get("target")
        plan = with_target(plan, parse_location(str(target)).reference if target else None)
    except Exception:  # another config's driver, a bad source: not this conversion
        return None
    return identity(plan)


def earliest_of(runs: list[FlowRun], settings: Settings, key: Identity) -> FlowRun | None:
    """The run that converts for `key`: the earliest created (then lowest id) that is not a duplicate."""
    same = [r for r in runs if DUPLICATE_TAG not in (r.tags or []) and key_of_run(settings, r) == key]
    epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
    return min(same, key=lambda r: (r.created or epoch, str(r.id)), default=None)


def duplicate_of(settings: Settings, plan: ConversionPlan) -> uuid.UUID | None:
    """The id of an earlier run converting the same plan, when this run is a deployment run; else None."""
    from prefect.context import FlowRunContext

    # The run as the engine read or created it. (`prefect.runtime.deployment.get_id` looks for the
    # deployment on the context itself, never finds it there, and reads the run again through a new API
    # client: ~60 ms and two requests per run.)
    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    run_id, deployment_id = (run.id, run.deployment_id) if run is not None else (None, None)
    if not run_id or not deployment_id:
        return None  # a subflow or a plain call: its caller decides what runs
    since = dt.datetime.now(dt.UTC) - WINDOW
    runs: list[FlowRun] = []
    with get_client(sync_client=True) as client:
        while len(runs) < _MAX_RUNS:
            page = client.read_flow_runs(
                deployment_filter=DeploymentFilter(
                    id=DeploymentFilterId(any_=[uuid.UUID(str(deployment_id))])
                ),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=_LIVE_OR_DONE)),
                    expected_start_time=FlowRunFilterExpectedStartTime(after_=since),
                ),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=_PAGE,
                offset=len(runs),
            )
            runs += page
            if len(page) < _PAGE:
                break
    if not any(str(r.id) == str(run_id) for r in runs):
        return None  # our own run is not listed (clock skew, paging): never skip on a partial view
    winner = earliest_of(runs, settings, identity(plan))
    if winner is None or str(winner.id) == str(run_id):
        return None
    return winner.id


def mark_duplicate() -> None:
    """Tag this run as a duplicate, so later runs of the same key do not wait on it."""
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    if not run_id:
        return
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(uuid.UUID(str(run_id)))
        client.update_flow_run(run.id, tags=[*(run.tags or []), DUPLICATE_TAG])
