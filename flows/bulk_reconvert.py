"""bulk_reconvert: walk the configured registries and convert every tag lacking an up-to-date converted image.

A tag is stale when one of its converted targets is missing, or was made from another source digest (the
tag moved), or by another driver version, as the target's manifest (or index) says in accel's provenance
annotations. Accel's own outputs are never candidates, whatever config made them: tags this config would
push (suffixes, cache and referrers tags), and any image whose manifest says it is a converted image, a
conversion cache or already in an accelerated format (Go's acceld outputs included).

Conversions start as runs of the `convert-image` deployment (concurrency and retries stay with whoever serves
it), linked to the bulk run as its child runs; the bulk run waits for them (at most `wait_minutes`) without
holding a conversion slot (acceld serves it with a slot of its own, prefect.yaml limits it to one run) and
fails when one of them failed or did not finish, so a failed re-conversion shows on the bulk run. Each run
is named `bulk-reconvert <UTC date and time>` and leaves a `bulk-reconvert` artifact: every stale image, why,
its run and that run's final state, then what happened to every tag walked (converted, skipped by its run and
why, failed, up to date, accel's output). Without a deployment the conversions run here as subflows, one
after another.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from typing import Any, Literal

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
from accel.drivers import detect_format
from accel.errors import AccelError
from accel.oci import Descriptor
from accel.plan import is_own_output, plan_conversion
from accel.reference import Reference
from accel.registry.errors import NotFound
from flows.convert_image import RESULT_ARTIFACT_TYPE, ConversionResult, _config_path, convert_image
from flows.names import BULK_FLOW, CONVERT_DEPLOYMENT
from tasks.process import die_with_runner


class StaleImage(BaseModel):
    source: str  # pinned: repo:tag@digest
    drivers: list[str]
    target_repository: str | None
    reasons: list[str]


Outcome = Literal["converted", "skipped", "failed", "up to date", "accel output"]


class ImageOutcome(BaseModel):
    """What the bulk run did with one tag it walked, and why."""

    source: str  # pinned when it was resolved
    outcome: Outcome
    detail: str = ""


class BulkResult(BaseModel):
    repositories: int
    stale: list[StaleImage]
    runs: list[str]  # flow run ids (deployment mode) or targets pushed (subflow mode)
    states: dict[str, str] = {}  # flow run id → its final state name (deployment mode)
    outcomes: list[ImageOutcome] = []  # every tag walked

    def count(self, outcome: Outcome) -> int:
        return sum(1 for o in self.outcomes if o.outcome == outcome)

    def summary(self) -> str:
        """`2 converted, 1 skipped, 0 failed of 3 stale image(s); 4 up to date, 5 accel output(s)`."""
        return (
            f"{self.count('converted')} converted, {self.count('skipped')} skipped, "
            f"{self.count('failed')} failed of {len(self.stale)} stale image(s); "
            f"{self.count('up to date')} up to date, {self.count('accel output')} accel output(s)"
        )


class RepositoryPlan(BaseModel):
    stale: list[StaleImage]
    passed: list[ImageOutcome]  # tags that need nothing: up to date, or accel's own output


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


# Annotations only outputs of accel (or of Go's acceld) carry on their root: converted images, caches.
_OUTPUT_ANNOTATIONS = {
    mt.ACCEL_DRIVER: "converted image",
    mt.ACCEL_SOURCE_DIGEST: "converted image",
    mt.HARBOR_SOURCE_DIGEST: "converted image",
    mt.HARBOR_DRIVER_NAME: "converted image",
    mt.ACCEL_CACHE_VERSION: "conversion cache",
    mt.ORIGINAL_CACHE_VERSION: "conversion cache",
}
_CACHE_LAYER_ANNOTATIONS = (mt.ACCEL_CACHE_RECORD, mt.ACCEL_CACHE_BLOB_OF, mt.ORIGINAL_CACHE_SOURCE_DIGEST)


def output_kind(raw: bytes) -> str | None:
    """Why a tag's manifest (or index) is an output of accel or of Go's acceld under any config, or None for
    a source image: its root names a source digest, a driver or a cache version, its layers are cache
    records, or they already are in an accelerated format."""
    try:
        document = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    annotations = document.get("annotations") or {}
    for key, kind in _OUTPUT_ANNOTATIONS.items():
        if key in annotations:
            return f"{kind} ({key}={annotations[key]})"
    layers = [layer for layer in document.get("layers") or [] if isinstance(layer, dict)]
    if any(key in (layer.get("annotations") or {}) for layer in layers for key in _CACHE_LAYER_ANNOTATIONS):
        return "conversion cache (cache records in its layers)"
    try:
        already = detect_format([Descriptor.model_validate(layer) for layer in layers])
    except ValueError:
        return None
    return f"already {already} (layer annotations)" if already else None


def _first_child_output_kind(ctx: Any, source: Reference, raw: bytes) -> str | None:
    """For an index whose root says nothing: what its first image manifest says (outputs are per driver,
    so one child tells for all)."""
    try:
        children = json.loads(raw).get("manifests") or []
    except (ValueError, AttributeError):
        return None
    child = next(
        (c for c in children if isinstance(c, dict) and c.get("mediaType") in mt.MANIFEST_TYPES), None
    )
    if child is None or not isinstance(child.get("digest"), str):
        return None
    try:
        _, child_raw = ctx.client.fetch_manifest(source.with_digest(child["digest"]))
    except NotFound:
        return None
    return output_kind(child_raw)


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
def plan_repository(config_path: str, repository: str, drivers: list[str] | None) -> RepositoryPlan:
    ctx = context_for(config_path)
    base = Reference.parse(f"{repository}:latest")
    if base.registry not in ctx.settings.provider.source:
        raise ValueError(f"{repository}: registry {base.registry} is not configured in provider.source")
    tags = ctx.client.list_tags(base)
    present = set(tags)
    stale: list[StaleImage] = []
    passed: list[ImageOutcome] = []
    for tag in tags:
        source = base.with_tag(tag)
        if is_own_output(ctx.settings, source):
            # Converted images, referrers indexes, conversion caches of this config: by name.
            passed.append(ImageOutcome(source=str(source), outcome="accel output", detail="by its tag"))
            continue
        try:
            descriptor, raw = ctx.client.fetch_manifest(source)
        except NotFound:
            continue  # deleted since the tag list was read
        digest = descriptor.digest
        pinned = source.with_digest(digest)
        if kind := output_kind(raw) or _first_child_output_kind(ctx, source, raw):
            # Another config's (or Go acceld's) output: by its content.
            passed.append(ImageOutcome(source=str(pinned), outcome="accel output", detail=kind))
            continue
        plan = plan_conversion(ctx.settings, source, drivers)
        need: list[str] = []
        reasons: list[str] = []
        for driver_type, target in plan.targets.items():
            if target.repository == source.repository and target.tag not in present:
                need.append(driver_type)
                reasons.append(f"{driver_type}: {target.tag} missing")
                continue
            try:
                _, target_raw = ctx.client.fetch_manifest(target)
            except NotFound:
                need.append(driver_type)
                reasons.append(f"{driver_type}: {target} missing")
                continue
            made_from, version = _provenance(target_raw)
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
        else:
            targets = ", ".join(str(t) for t in plan.targets.values())
            passed.append(ImageOutcome(source=str(pinned), outcome="up to date", detail=targets))
    return RepositoryPlan(stale=stale, passed=passed)


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
    plans = [plan_repository.submit(config_path, repo, drivers).result() for repo in repos]
    stale = [image for plan in plans for image in plan.stale]
    passed = [image for plan in plans for image in plan.passed]
    logger.info(
        "%d repositories, %d stale image(s), %d up to date, %d accel output(s)",
        len(repos),
        len(stale),
        sum(1 for p in passed if p.outcome == "up to date"),
        sum(1 for p in passed if p.outcome == "accel output"),
    )
    runs: list[str] = []
    if dry_run:
        result = BulkResult(repositories=len(repos), stale=stale, runs=runs, outcomes=passed)
        _publish_artifact(result, {}, dry_run=True)
        return result
    scope = str(flow_run.get_id() or "local")
    run_of: dict[str, str] = {}  # source → flow run id
    done_here: dict[str, ImageOutcome] = {}  # source → outcome of its conversion in this run (subflow mode)
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
                    flow_run_name=f"convert {image.source}",  # its name from the start, not a random one
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
        state = convert_image(**parameters, return_state=True)
        converted = state.result(raise_on_failure=False) if state.is_completed() else None
        if isinstance(converted, ConversionResult):
            runs += [t.reference for t in converted.targets]
        done_here[image.source] = _outcome(image.source, state.name, state.message, converted)
    finals = _wait_for(list(run_of.values()), wait_minutes * 60) if run_of else {}
    states = {str(run_id): run.state.name if run.state else "unknown" for run_id, run in finals.items()}
    outcomes = [
        done_here.get(image.source) or _run_outcome(image.source, finals.get(run_of.get(image.source, "")))
        for image in stale
    ]
    result = BulkResult(
        repositories=len(repos), stale=stale, runs=runs, states=states, outcomes=outcomes + passed
    )
    _publish_artifact(result, run_of)
    logger.info("%s", result.summary())
    failed = [o.source for o in outcomes if o.outcome == "failed"]
    if failed:
        message = f"{len(failed)} of {len(stale)} conversion(s) did not complete: {', '.join(failed)}"
        return Failed(message=message, data=BulkIncomplete(message, result))
    return result


def _outcome(source: str, state: str, message: str | None, result: ConversionResult | None) -> ImageOutcome:
    """A conversion's outcome from its final state and result: a COMPLETED run may have skipped (the image
    turned out to be accel's own output, a duplicate, already accelerated), which is no conversion."""
    if result is None:
        return ImageOutcome(source=source, outcome="failed", detail=f"{state}: {message or ''}".rstrip(": "))
    if result.skipped:
        return ImageOutcome(source=source, outcome="skipped", detail=result.skipped)
    return ImageOutcome(
        source=source, outcome="converted", detail=", ".join(t.reference for t in result.targets)
    )


def _run_outcome(source: str, run: FlowRun | None) -> ImageOutcome:
    if run is None or run.state is None:
        return ImageOutcome(source=source, outcome="failed", detail="its run was not found")
    if run.state.type != StateType.COMPLETED:
        detail = "did not finish in time" if run.state.type not in _FINAL else (run.state.message or "")
        return _outcome(source, run.state.name, detail, None)
    return _outcome(source, run.state.name, run.state.message, _recorded_result(run.id))


def _recorded_result(run_id: uuid.UUID) -> ConversionResult | None:
    """A finished conversion run's result, from its `accel-result` artifact."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
                type=ArtifactFilterType(any_=[RESULT_ARTIFACT_TYPE]),
            ),
            limit=1,
        )
    if not artifacts:
        return None
    data = artifacts[0].data
    try:
        if isinstance(data, str | bytes):
            return ConversionResult.model_validate_json(data)
        return ConversionResult.model_validate(data)
    except ValueError:
        return None


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
    outcomes = "\n".join(f"| `{o.source}` | {o.outcome} | {o.detail} |" for o in result.outcomes)
    heading = "dry run: nothing converted" if dry_run else result.summary()
    create_markdown_artifact(
        key=ARTIFACT_KEY,
        description=f"bulk re-conversion: {heading}",
        markdown=(
            f"# {heading}\n\n{result.repositories} repositories walked.\n\n"
            "| source | drivers | why | flow run | state |\n|---|---|---|---|---|\n"
            f"{rows}\n\n## every tag walked\n\n| image | outcome | detail |\n|---|---|---|\n{outcomes}\n"
        ),
    )
