"""Conversion tasks as Prefect flow runs of the `convert-image` deployment.

A task id is the flow run id. The task list (and acceld's conversion metrics) are the `convert-image` runs
acceld's API created, which carry SUBMITTED_TAG, and those the `harbor.artifact.pushed` trigger started (a
push reaching Prefect as an event rather than a webhook; Prefect records an automation as their creator).
As the Go service lists only the tasks it was sent, runs started on the same Prefect server by `accelctl
convert`, the UI, `prefect deployment run` or `bulk-reconvert` are not acceld's tasks.

The list survives acceld restarts (it is Prefect's). Each run acceld creates records the plan it was
submitted with (PLAN_LABEL: drivers and targets); the run's result artifact (its `ConversionResult` as JSON,
written by the flow, with the plan the run itself resolved) gives sizes and pushed targets once it ends, read
through the Prefect API, so it works in every mode with no shared result storage and no flow code to
unpickle. Nothing is recomputed from acceld's current config: it may have changed since the run started.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
    DeploymentFilter,
    DeploymentFilterId,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterCreatedBy,
    FlowRunFilterEndTime,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
    Operator,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Failed, Scheduled

from accel.config import Settings
from accel.plan import attempt_key
from flows.convert_image import RESULT_ARTIFACT_TYPE, ConversionResult, PlanRecord
from flows.duplicates import DUPLICATE_TAG
from flows.names import CONVERT_DEPLOYMENT, CONVERT_FLOW
from service.api.conversions import (
    COMPLETED,
    FAILED,
    PROCESSING,
    BackendUnavailable,
    ConversionTask,
    Status,
    SubmitRequest,
    TargetStatus,
    TaskNotFound,
)
from service.metrics import Metrics
from tasks.policy import layers_in_run_name

log = logging.getLogger("acceld.prefect")
T = TypeVar("T")

FAILED_TYPES = (StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)
FINAL_TYPES = (StateType.COMPLETED, *FAILED_TYPES)
LIVE_TYPES = (StateType.RUNNING, StateType.PENDING, StateType.CANCELLING)
_RESULT_CACHE_LIMIT = 4096
_PAGE = 200
# Runs of one conversion before a repeated request stops starting new ones (each failed one is kept).
MAX_ATTEMPTS = 100
# On every run acceld's API creates: acceld's tasks and metrics are exactly these runs.
SUBMITTED_TAG = "acceld"
# The flow run label holding the plan acceld submitted the run with (a PlanRecord as JSON).
PLAN_LABEL = "accel.plan"
# Prefect's creator type of a run an automation (a deployment trigger) started.
TRIGGERED_BY = "AUTOMATION"
# acceld's tasks: created by its API, or by the push event trigger.
_ACCELD_TASKS = FlowRunFilter(
    operator=Operator.or_,
    tags=FlowRunFilterTags(all_=[SUBMITTED_TAG]),
    created_by=FlowRunFilterCreatedBy(type_=[TRIGGERED_BY]),
)


def is_acceld_task(run: FlowRun) -> bool:
    """Whether acceld's API or the push event trigger created this run (see the module's docstring)."""
    return SUBMITTED_TAG in (run.tags or []) or (
        run.created_by is not None and run.created_by.type == TRIGGERED_BY
    )


# A read of runs that Prefect has not answered in this time means Prefect is not answering: the API says
# 503 rather than hang. Only the reads that find the runs are bounded; describing many runs may take longer.
ANSWER_WITHIN = 4.0


async def _answered(call: Awaitable[T]) -> T:
    try:
        return await asyncio.wait_for(call, timeout=ANSWER_WITHIN)
    except TimeoutError:
        raise BackendUnavailable(f"Prefect API did not answer within {ANSWER_WITHIN:g} s") from None


def parse_result(data: Any) -> ConversionResult:
    """A result artifact's data (JSON text, or already decoded) as the ConversionResult the flow wrote."""
    if isinstance(data, str | bytes):
        return ConversionResult.model_validate_json(data)
    return ConversionResult.model_validate(data)


def status_of(run: FlowRun) -> Status:
    state_type = run.state.type if run.state else None
    if state_type == StateType.COMPLETED:
        return COMPLETED
    if state_type in FAILED_TYPES:
        return FAILED
    return PROCESSING


class PrefectBackend:
    def __init__(
        self,
        settings: Settings,
        config_path: str,
        metrics: Metrics | None = None,
        deployment_name: str = CONVERT_DEPLOYMENT,
        poll_interval: float = 1.0,
        serves_deployments: bool = False,
        on_scheduled: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        # acceld's runner registers the deployment with this acceld's config as its default: until it has,
        # runs would use whatever config registered it last (another acceld, an earlier start).
        self.serves_deployments = serves_deployments
        # Called when a submission has a run waiting to start (acceld: wake its runner, which would otherwise
        # find it at its next poll).
        self.on_scheduled = on_scheduled
        self.metrics = metrics
        self.deployment_name = deployment_name
        self.poll_interval = poll_interval
        self.started_at = dt.datetime.now(dt.UTC)
        self._deployment_id: uuid.UUID | None = None
        self._results: dict[
            uuid.UUID, ConversionResult | None
        ] = {}  # final runs only: their results never change
        self._observed: set[uuid.UUID] = set()
        self._shared: PrefectClient | None = None

    # --- Prefect plumbing -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[PrefectClient]:
        """One client (one connection pool) for the app's event loop; opening one per request is slow."""
        if self._shared is None:
            client = get_client()
            await client.__aenter__()
            self._shared = client
        yield self._shared

    async def aclose(self) -> None:
        client, self._shared = self._shared, None
        if client is not None:
            await client.__aexit__(None, None, None)

    async def _deployment(self, client: PrefectClient) -> uuid.UUID:
        if self._deployment_id is None:
            try:
                deployment = await client.read_deployment_by_name(self.deployment_name)
            except ObjectNotFound:
                raise BackendUnavailable(
                    f"deployment {self.deployment_name} is not registered yet "
                    "(is acceld or a worker serving it?)"
                ) from None
            self._deployment_id = deployment.id
        return self._deployment_id

    # --- the backend protocol -------------------------------------------------------------------------

    async def submit(self, request: SubmitRequest) -> ConversionTask:
        # No `config`: the run uses its runner's (acceld binds its own as the served deployment's default;
        # a work-pool worker has ACCEL_CONFIG), so workers can differ from acceld in work_dir.
        parameters: dict[str, Any] = {
            "source": str(request.source),
            "drivers": list(request.drivers),
            "target_repository": request.target_repository,
        }
        try:
            async with self._client() as client:
                try:
                    run = await self._create_run(client, await self._deployment(client), parameters, request)
                except ObjectNotFound:
                    self._deployment_id = None  # deleted and re-created under a new id: look it up again
                    run = await self._create_run(client, await self._deployment(client), parameters, request)
                if self.on_scheduled is not None and run.state is not None and run.state.is_scheduled():
                    self.on_scheduled()
                return await self._task(client, run)
        except BackendUnavailable:
            raise
        except Exception as exc:  # httpx errors, 5xx from the Prefect API
            raise BackendUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def _create_run(
        self,
        client: PrefectClient,
        deployment_id: uuid.UUID,
        parameters: dict[str, Any],
        request: SubmitRequest,
    ) -> FlowRun:
        """The live or COMPLETED run of this conversion, else a new one: a key whose run ended FAILED,
        CRASHED or CANCELLED moves on to the next attempt's key, so a repeated request retries the
        conversion while concurrent repeats still meet on one run (they walk the same keys)."""
        run: FlowRun | None = None
        for attempt in range(MAX_ATTEMPTS):
            run = await client.create_flow_run_from_deployment(
                deployment_id,
                parameters=parameters,
                idempotency_key=attempt_key(request.idempotency_key, attempt),
                tags=["accel", SUBMITTED_TAG, *(f"driver:{d}" for d in request.drivers)],
                labels={PLAN_LABEL: _plan_label(request)},
                name=run_name(str(request.source)),  # the flow's own run name, from the start
            )
            if run.state is None or run.state.type not in FAILED_TYPES:
                return run
            log.info("%s: attempt %d ended %s; trying again", request.source, attempt, run.state.type.value)
        assert run is not None
        log.warning("%s failed %d times; not starting another run", request.source, MAX_ATTEMPTS)
        return run

    async def get(self, task_id: str) -> ConversionTask:
        try:
            run_id = uuid.UUID(task_id)
        except ValueError:
            raise TaskNotFound(task_id) from None
        async with self._client() as client:
            try:
                run = await _answered(client.read_flow_run(run_id))
            except ObjectNotFound:
                raise TaskNotFound(task_id) from None
            except BackendUnavailable:
                raise
            except Exception as exc:
                raise BackendUnavailable(f"{type(exc).__name__}: {exc}") from exc
            if not is_acceld_task(run) or not await self._is_conversion(client, run):
                raise TaskNotFound(task_id)  # not one of acceld's tasks
            return await self._task(client, run)

    async def list(self, limit: int) -> list[ConversionTask]:
        try:
            async with self._client() as client:
                runs: list[FlowRun] = []
                while len(runs) < limit:  # the Prefect API caps a page at 200 runs
                    page = await _answered(
                        client.read_flow_runs(
                            flow_filter=FlowFilter(name=FlowFilterName(any_=[CONVERT_FLOW])),
                            flow_run_filter=_ACCELD_TASKS,
                            sort=FlowRunSort.START_TIME_DESC,
                            limit=min(_PAGE, limit - len(runs)),
                            offset=len(runs),
                        )
                    )
                    runs += page
                    if len(page) < _PAGE:
                        break
                # A run that skipped as a duplicate (the event trigger fired twice) is not a task of its own.
                runs = [r for r in runs if DUPLICATE_TAG not in (r.tags or [])]
                runs.sort(key=lambda r: r.created or self.started_at, reverse=True)
                return [await self._task(client, run) for run in runs]
        except BackendUnavailable:
            raise
        except Exception as exc:
            raise BackendUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def wait(self, task_id: str, timeout: float) -> ConversionTask:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            task = await self.get(task_id)
            if task.status != PROCESSING or asyncio.get_running_loop().time() >= deadline:
                return task
            await asyncio.sleep(self.poll_interval)

    async def problems(self) -> list[str]:
        try:
            async with self._client() as client:
                error = await client.api_healthcheck()
                if error is not None:
                    return [f"Prefect API at {client.api_url} is not healthy: {error}"]
                await self._deployment(client)
                if self.serves_deployments:
                    deployment = await client.read_deployment(await self._deployment(client))
                    registered = (deployment.parameters or {}).get("config")
                    if registered != self.config_path:
                        return [
                            f"deployment {self.deployment_name} runs with config {registered}, not "
                            f"{self.config_path} (its runner has not registered this acceld's config yet)"
                        ]
        except BackendUnavailable as exc:
            return [str(exc)]
        except Exception as exc:
            return [f"Prefect API unreachable: {type(exc).__name__}: {exc}"]
        return []

    # --- runs → tasks ---------------------------------------------------------------------------------

    async def _is_conversion(self, client: PrefectClient, run: FlowRun) -> bool:
        flow = await client.read_flow(run.flow_id)
        return flow.name == CONVERT_FLOW

    @staticmethod
    def _recorded_plan(run: FlowRun) -> PlanRecord | None:
        """The plan acceld created the run with (its PLAN_LABEL), if it has one."""
        text = (run.labels or {}).get(PLAN_LABEL)
        if not isinstance(text, str):
            return None
        try:
            return PlanRecord.model_validate_json(text)
        except ValueError:
            return None

    async def _result(self, run: FlowRun) -> ConversionResult | None:
        if run.id in self._results:
            return self._results[run.id]
        result: ConversionResult | None = None
        try:
            async with self._client() as client:
                artifacts = await client.read_artifacts(
                    artifact_filter=ArtifactFilter(
                        flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]),
                        type=ArtifactFilterType(any_=[RESULT_ARTIFACT_TYPE]),
                    ),
                    limit=1,
                )
            if artifacts:
                result = parse_result(artifacts[0].data)
        except Exception as exc:  # the API failed us (asked again next time), or an incompatible result
            log.debug("no result for flow run %s: %s", run.id, exc)
            return None
        if len(self._results) >= _RESULT_CACHE_LIMIT:
            self._results.clear()
        self._results[run.id] = result
        return result

    async def _task(self, client: PrefectClient, run: FlowRun) -> ConversionTask:
        status = status_of(run)
        plan = self._recorded_plan(run)
        drivers = (
            list(plan.drivers) if plan is not None else list((run.parameters or {}).get("drivers") or [])
        )
        targets = [plan.targets[d] for d in plan.drivers if d in plan.targets] if plan is not None else []
        reason = ""
        source_size = target_size = 0
        result = await self._result(run) if status != PROCESSING else None
        if result is not None:
            if result.plan is not None:  # what the run itself resolved wins over our reading
                drivers = list(result.plan.drivers)
                targets = list(result.plan.targets.values())
            if result.targets:
                source_size = result.targets[0].source_size
                target_size = sum(t.target_size for t in result.targets)
            if result.skipped:
                reason = result.skipped
        if status == FAILED and run.state is not None:
            reason = failure_reason(run.state.message) or run.state.name
            if run.state.name == "TimedOut":  # Prefect's message gives the seconds; say which setting
                reason = f"{reason} (converter.limits.timeout)"
        per_target = _target_status(
            status, reason, drivers, dict(zip(drivers, targets, strict=False)), result
        )
        if result is not None and (result.targets or result.failed):
            targets = [t.target for t in per_target]
        if status != PROCESSING:
            await self._observe(client, run, drivers)
        return ConversionTask(
            id=str(run.id),
            created=run.created or run.expected_start_time or self.started_at,
            finished=run.end_time if status != PROCESSING else None,
            source=str((run.parameters or {}).get("source", "")),
            target=",".join(targets),
            targets=targets,
            source_size=source_size,
            target_size=target_size,
            status=status,
            reason=reason,
            drivers=drivers,
            target_status=per_target,
        )

    # --- metrics from run states --------------------------------------------------------------------

    async def _observe(self, client: PrefectClient, run: FlowRun, drivers: list[str]) -> None:
        """Count each run that finished while this process was up, once (counters restart with us)."""
        if self.metrics is None or run.id in self._observed:
            return
        self._observed.add(run.id)
        if run.end_time is None or run.end_time < self.started_at:
            return
        seconds = run.total_run_time.total_seconds() if run.total_run_time else None
        self.metrics.conversion_finished(drivers, status_of(run) == COMPLETED, seconds)
        try:
            task_runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
            )
        except Exception as exc:
            log.debug("cannot read task runs of %s: %s", run.id, exc)
            return
        for task_run in task_runs:
            # Task runs are named `convert sha256:abcdef012345 (estargz)`, or for a batch of layers
            # `convert 12 layers: sha256:…, … (estargz)` (tasks/policy.py); cache hits end in state "Cached".
            name = task_run.name or ""
            if not name.startswith("convert ") or "(" not in name or task_run.state is None:
                continue
            if task_run.state.type != StateType.COMPLETED:
                continue
            driver = name.rsplit("(", 1)[1].rstrip(")")
            count = layers_in_run_name(name)
            self.metrics.layer_converted(driver, cached=task_run.state.name == "Cached", count=count)
        # Layers the remote cache image answered have no convert task run at all: the result counts them.
        result = await self._result(run) if status_of(run) == COMPLETED else None
        for target in result.targets if result is not None else []:
            if target.cached_layers:
                self.metrics.layer_converted(target.driver, cached=True, count=target.cached_layers)

    async def poll_forever(self, interval: float = 10.0) -> None:
        """Keep conversion metrics current even when nobody lists tasks."""
        since = self.started_at
        while True:
            await asyncio.sleep(interval)
            try:
                async with self._client() as client:
                    runs = await client.read_flow_runs(
                        flow_filter=FlowFilter(name=FlowFilterName(any_=[CONVERT_FLOW])),
                        flow_run_filter=FlowRunFilter(
                            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(FINAL_TYPES))),
                            end_time=FlowRunFilterEndTime(after_=since - dt.timedelta(seconds=interval)),
                        ),
                        limit=200,
                    )
                    for run in filter(is_acceld_task, runs):
                        await self._task(client, run)  # observes each finished run once
                    since = dt.datetime.now(dt.UTC)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("metrics poll failed: %s", exc)


def run_name(source: str) -> str:
    """`convert <source>`: the name convert-image's flow gives its runs, set when acceld creates one so the
    UI never shows a random name while the run waits."""
    return f"convert {source}"


def _plan_label(request: SubmitRequest) -> str:
    record = PlanRecord(drivers=list(request.drivers), targets=dict(request.targets))
    return record.model_dump_json()


# Prefect's prefix on the message of a flow run that raised (prefect.flow_engine): the cause follows it.
_PREFECT_FAILURE_PREFIX = "Flow run encountered an exception:"


def failure_reason(message: str | None) -> str:
    """A failed run's state message as the reason acceld reports: the cause, without Prefect's prefix."""
    text = (message or "").strip()
    return text.removeprefix(_PREFECT_FAILURE_PREFIX).strip()


def _target_status(
    status: Status,
    reason: str,
    drivers: list[str],
    names: dict[str, str],
    result: ConversionResult | None,
) -> list[TargetStatus]:
    """Each driver's target with its own status: from the run's result when it has one (pushed targets
    COMPLETED, failed ones FAILED with their reason), else the run's status for every planned target."""
    if result is not None and (result.targets or result.failed):
        pushed = [
            TargetStatus(driver=t.driver, target=t.reference, status=COMPLETED, digest=t.digest)
            for t in result.targets
        ]
        failed = [
            TargetStatus(driver=f.driver, target=f.reference, status=FAILED, reason=f.reason)
            for f in result.failed
        ]
        order = {d: i for i, d in enumerate(drivers)}
        return sorted(pushed + failed, key=lambda t: order.get(t.driver, len(order)))
    return [
        TargetStatus(
            driver=d, target=names.get(d, ""), status=status, reason=reason if status == FAILED else ""
        )
        for d in drivers
    ]


# A conversion run left behind by a dead runner is run again from the start (the layers it converted are in
# Prefect's task cache), until it has been started this many times: one that keeps going down with its runner
# is failed instead, so a run that kills acceld is not started again forever.
MAX_ORPHANED_STARTS = 10


@dataclass(frozen=True)
class RecoveredRuns:
    """What `recover_orphaned_runs` did with each live-looking run of the deployments it was given."""

    rescheduled: list[uuid.UUID] = field(default_factory=list)
    failed: list[uuid.UUID] = field(default_factory=list)
    cancelled: list[uuid.UUID] = field(default_factory=list)


async def recover_orphaned_runs(
    rerun: Iterable[str],
    fail: Iterable[str],
    reason: str,
    max_starts: int = MAX_ORPHANED_STARTS,
) -> RecoveredRuns:
    """Runs of these deployments that are RUNNING, PENDING or CANCELLING; the caller knows no one runs them.

    acceld calls this before it starts its runner, holding the work dir lock: it is the only runner of those
    deployments, so a live-looking run is one a previous runner left behind when it died (its process died
    with it: tasks/process.py). Such a run of a `rerun` deployment is SCHEDULED again, as itself: the runner
    about to start picks it up, its idempotency key still answers a repeated webhook with it, and nothing
    accepted is lost (its push was answered 2xx, and Harbor does not send it again). Runs of `fail`
    deployments (bulk-reconvert: its schedule runs it again), and runs started `max_starts` times already,
    are marked FAILED with `reason`; a run being cancelled is CANCELLED.
    """
    rerun, fail = list(rerun), list(fail)
    recovered = RecoveredRuns()
    async with get_client() as client:
        ids: dict[uuid.UUID, bool] = {}  # deployment id → whether its orphaned runs run again
        for names, again in ((rerun, True), (fail, False)):
            for name in names:
                try:
                    ids[(await client.read_deployment_by_name(name)).id] = again
                except ObjectNotFound:
                    continue
        if not ids:
            return recovered
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=list(ids))),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(LIVE_TYPES)))
            ),
        )
        for run in runs:
            state_type = run.state.type if run.state else None
            if state_type == StateType.CANCELLING:
                await client.set_flow_run_state(run.id, Cancelled(message=reason), force=True)
                recovered.cancelled.append(run.id)
            elif ids.get(run.deployment_id or uuid.UUID(int=0)) and run.run_count < max_starts:
                again = Scheduled(
                    scheduled_time=dt.datetime.now(dt.UTC),
                    message=f"{reason}; running it again (start {run.run_count + 1} of at most {max_starts})",
                )
                await client.set_flow_run_state(run.id, again, force=True)
                recovered.rescheduled.append(run.id)
            else:
                why = reason
                if run.run_count >= max_starts:
                    why = f"{reason}, {run.run_count} times; not started again: push again to retry"
                await client.set_flow_run_state(run.id, Failed(message=why), force=True)
                recovered.failed.append(run.id)
    return recovered
