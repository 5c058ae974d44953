"""bulk_reconvert: walk the configured registries and convert every tag lacking an up-to-date converted image.

"Up to date" means the target tag exists and its manifest (or index) says, in accel's provenance
annotations, that it was made from the source's current digest by the current driver version. Conversions
start as runs of the `convert-image` deployment (concurrency and retries stay with whoever serves it), linked
to the bulk run as its child runs; the bulk run waits for them (at most `wait_minutes`) and fails when one of
them failed or did not finish, so a failed re-conversion shows on the bulk run. Each run is named
`bulk-reconvert <UTC date and time>` and leaves a `bulk-reconvert` artifact: every stale image, why, its
run and that run's final state. Without a deployment the conversions run here as subflows, one after another.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from typing import Any

from prefect import flow, get_client, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import Failed, State
from pydantic import BaseModel

from accel import constants as mt
from accel.config import Settings
from accel.context import context_for
from accel.errors import AccelError
from accel.plan import is_own_output, plan_conversion
from accel.reference import Reference
from accel.registry.errors import NotFound
from flows.convert_image import _config_path, convert_image
from flows.names import BULK_FLOW, CONVERT_DEPLOYMENT
from tasks.process import die_with_runner


class StaleImage(BaseModel):
    source: str  # pinned: repo:tag@digest
    drivers: list[str]
    target_repository: str | None
    reasons: list[str]


class BulkResult(BaseModel):
    repositories: int
    stale: list[StaleImage]
    runs: list[str]  # flow run ids (deployment mode) or targets pushed (subflow mode)
    states: dict[str, str] = {}  # flow run id → its final state name (deployment mode)


class BulkIncomplete(AccelError):
    """A bulk run some of whose conversions did not complete: the FAILED state's data, so a direct call of
    the flow raises it with the message; `result` still lists every stale image and run."""

    def __init__(self, message: str, result: BulkResult) -> None:
        super().__init__(message)
        self.result = result

    def __reduce__(self) -> tuple[type[BulkIncomplete], tuple[str, BulkResult]]:
        return type(self), (str(self), self.result)


ARTIFACT_KEY = "bulk-reconvert"
_FINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}
_POLL_SECONDS = 5.0


def bulk_run_name() -> str:
    return f"bulk-reconvert {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}"


def _provenance(raw: bytes) -> tuple[str | None, str | None]:
    """(source digest, driver version) recorded in a converted manifest or index."""
    try:
        annotations = json.loads(raw).get("annotations") or {}
    except (ValueError, AttributeError):
        return None, None
    source = annotations.get(mt.ACCEL_SOURCE_DIGEST) or annotations.get(mt.HARBOR_SOURCE_DIGEST)
    version = annotations.get(mt.ACCEL_DRIVER_VERSION) or annotations.get(mt.HARBOR_DRIVER_VERSION)
    return source, version


@task(name="list-repositories")
def list_repositories(config_path: str, repositories: list[str] | None) -> list[str]:
    """`host/repo` names: the ones given, else bulk.repositories, else each source host's catalog."""
    ctx = context_for(config_path)
    named = repositories or ctx.settings.bulk.repositories
    if named:
        return list(dict.fromkeys(named))
    found = []
    for host in ctx.settings.provider.source:
        found += [f"{host}/{repo}" for repo in ctx.client.catalog(host)]
    return found


@task(name="plan-repository", task_run_name="plan {repository}")
def plan_repository(config_path: str, repository: str, drivers: list[str] | None) -> list[StaleImage]:
    ctx = context_for(config_path)
    base = Reference.parse(f"{repository}:latest")
    if base.registry not in ctx.settings.provider.source:
        raise ValueError(f"{repository}: registry {base.registry} is not configured in provider.source")
    tags = ctx.client.list_tags(base)
    present = set(tags)
    stale = []
    for tag in tags:
        source = base.with_tag(tag)
        if is_own_output(ctx.settings, source):
            continue  # accel's own outputs: converted images, referrers indexes, conversion caches
        plan = plan_conversion(ctx.settings, source, drivers)
        try:
            digest = ctx.client.resolve(source).digest
        except NotFound:
            continue  # deleted since the tag list was read
        pinned = source.with_digest(digest)
        need: list[str] = []
        reasons: list[str] = []
        for driver_type, target in plan.targets.items():
            if target.repository == source.repository and target.tag not in present:
                need.append(driver_type)
                reasons.append(f"{driver_type}: {target.tag} missing")
                continue
            try:
                _, raw = ctx.client.fetch_manifest(target)
            except NotFound:
                need.append(driver_type)
                reasons.append(f"{driver_type}: {target} missing")
                continue
            made_from, version = _provenance(raw)
            if made_from is None:
                continue  # no provenance (e.g. a Docker-format target): cannot tell, leave it alone
            if made_from != digest:
                need.append(driver_type)
                reasons.append(f"{driver_type}: {target} was made from {made_from}, source is now {digest}")
            elif version is not None and version != ctx.driver(driver_type).version:
                need.append(driver_type)
                reasons.append(
                    f"{driver_type}: made by driver {version}, now {ctx.driver(driver_type).version}"
                )
        if need:
            stale.append(
                StaleImage(
                    source=str(pinned),
                    drivers=need,
                    target_repository=plan.target_repository,
                    reasons=reasons,
                )
            )
    return stale


def _idempotency_key(settings: Settings, image: StaleImage, run_scope: str) -> str:
    plan = plan_conversion(settings, Reference.parse(image.source), image.drivers, image.target_repository)
    # Scoped to this bulk run: its own retries reuse runs, a later bulk run may retry a failed conversion.
    return f"{plan.idempotency_key}-bulk-{run_scope}"


@flow(name=BULK_FLOW, flow_run_name=bulk_run_name, log_prints=True)
def bulk_reconvert(
    config: str | None = None,
    repositories: list[str] | None = None,
    drivers: list[str] | None = None,
    dry_run: bool = False,
    use_deployment: bool = True,
    wait_minutes: float = 60.0,
) -> BulkResult | State:
    """Find stale tags in `repositories` and convert them.

    Args:
        config: Path of the accel config on the worker. Empty: $ACCEL_CONFIG.
        repositories: `host/repo` names to walk. Empty: the config's bulk.repositories, else every repository
            in each source registry's catalog.
        drivers: Formats to check and produce. Empty: each image's matching rule, else every configured
            driver.
        dry_run: List the stale images (in the artifact) and convert nothing.
        use_deployment: Start each conversion as a run of the convert-image deployment (else convert here,
            one after another).
        wait_minutes: How long to wait for the conversion runs; the bulk run fails if any is not done by then.
    """
    from prefect.runtime import flow_run

    die_with_runner()  # in a process acceld's runner started for this run: it ends with the runner
    logger = get_run_logger()
    config_path = _config_path(config)
    repos = list_repositories(config_path, repositories)
    plans = [plan_repository.submit(config_path, repo, drivers) for repo in repos]
    stale = [image for future in plans for image in future.result()]
    logger.info("%d repositories, %d stale image(s)", len(repos), len(stale))
    runs: list[str] = []
    if dry_run:
        result = BulkResult(repositories=len(repos), stale=stale, runs=runs)
        _publish_artifact(result, {}, dry_run=True)
        return result
    scope = str(flow_run.get_id() or "local")
    run_of: dict[str, str] = {}  # source → flow run id
    for image in stale:
        logger.info("converting %s (%s)", image.source, "; ".join(image.reasons))
        parameters: dict[str, Any] = {
            "source": image.source,
            "drivers": image.drivers,
            "config": config_path,
            "target_repository": image.target_repository,
        }
        if use_deployment:
            try:
                run = run_deployment(
                    CONVERT_DEPLOYMENT,
                    # The run uses its own runner's config: it may run on another worker.
                    parameters={k: v for k, v in parameters.items() if k != "config"},
                    timeout=0,
                    idempotency_key=_idempotency_key(context_for(config_path).settings, image, scope),
                    as_subflow=True,  # the UI shows each conversion as a child of this run
                )
                runs.append(str(run.id))
                run_of[image.source] = str(run.id)
                continue
            except ObjectNotFound:
                logger.warning("deployment %s not found; converting in this flow run", CONVERT_DEPLOYMENT)
                use_deployment = False
        converted = convert_image(**parameters)
        runs += [t.reference for t in converted.targets]
    finals = _wait_for(list(run_of.values()), wait_minutes * 60) if run_of else {}
    states = {str(run_id): run.state.name if run.state else "unknown" for run_id, run in finals.items()}
    result = BulkResult(repositories=len(repos), stale=stale, runs=runs, states=states)
    _publish_artifact(result, run_of)
    failed = [
        source
        for source, run_id in run_of.items()
        if (run := finals.get(run_id)) is None or run.state is None or run.state.type != StateType.COMPLETED
    ]
    if failed:
        message = f"{len(failed)} of {len(run_of)} conversion(s) did not complete: {', '.join(failed)}"
        return Failed(message=message, data=BulkIncomplete(message, result))
    return result


def _wait_for(run_ids: list[str], seconds: float) -> dict[str, FlowRun]:
    """The runs as they are when all are final or `seconds` have passed."""
    deadline = time.monotonic() + seconds
    ids = [uuid.UUID(r) for r in run_ids]
    with get_client(sync_client=True) as client:
        while True:
            read = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
            runs = {str(r.id): r for r in read}
            done = all(r.state is not None and r.state.type in _FINAL for r in runs.values())
            if (done and len(runs) == len(ids)) or time.monotonic() >= deadline:
                return runs
            time.sleep(_POLL_SECONDS)


def _publish_artifact(result: BulkResult, run_of: dict[str, str], dry_run: bool = False) -> None:
    rows = "\n".join(
        f"| `{image.source}` | {', '.join(image.drivers)} | {'; '.join(image.reasons)} "
        f"| {run_of.get(image.source, '—')} | {result.states.get(run_of.get(image.source, ''), '—')} |"
        for image in result.stale
    )
    heading = "dry run: nothing converted" if dry_run else f"{len(result.stale)} stale image(s) re-converted"
    create_markdown_artifact(
        key=ARTIFACT_KEY,
        description=f"bulk re-conversion: {heading}",
        markdown=(
            f"# {heading}\n\n{result.repositories} repositories walked.\n\n"
            "| source | drivers | why | flow run | state |\n|---|---|---|---|---|\n"
            f"{rows}\n"
        ),
    )
