"""convert_image: plan → resolve → lookup cache → pull + convert what it misses (+ early uploads) → build
manifest-or-index → (verify) → push → merge cache → collect garbage → result artifact.

The flow only composes tasks; every step's logic lives in the engine (`accel`), and what the layer tasks of
one run share (slots, image budgets, announced pulls, early uploads) in its `tasks.session.ConversionSession`.
Layers are pulled, converted and uploaded in batches (`tasks.batches`), so that a run's task runs stay
bounded whatever its layer count.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import Artifact, create_markdown_artifact
from prefect.states import Cancelled, Failed, State
from prefect.utilities.timeout import timeout
from pydantic import BaseModel

from accel.context import context_for
from accel.digest import hex_of
from accel.drivers import DRIVER_TYPES, ConvertedLayer, detect_format
from accel.errors import AccelError, ConfigError, InvalidReference
from accel.image import produced_by_accel
from accel.model import BuiltImage, SourceImage, SourceLayer
from accel.oci import Descriptor
from accel.plan import ConversionPlan, is_cache_tag, plan_conversion, with_target
from accel.reference import Reference
from accel.store import ContentStore
from accel.transports import describe, parse_location
from flows.duplicates import duplicate_of, mark_duplicate
from flows.names import CONVERT_FLOW
from tasks import build_manifest, cancel, push_image, resolve, verify_image
from tasks.cache import CacheLookup, lookup_cache, merge_cache
from tasks.cancel import ConversionCancelled
from tasks.convert import uploads_early
from tasks.limits import (
    ConversionTimedOut,
    check_image_sizes,
    drivers_over_their_layer_bound,
    end_timed_out_process,
)
from tasks.process import die_with_runner
from tasks.session import BatchRun, ConversionSession
from tasks.store import collect_garbage

# The type of the artifact that carries a run's ConversionResult as JSON: acceld (any mode, any host) reads
# sizes and targets from it through the Prefect API, without result storage or the flow's code.
RESULT_ARTIFACT_TYPE = "accel-result"

# The run form's driver choices: every driver accel has (a run fails early if the config lacks one). A
# Literal, so Prefect's form offers them; built from the registry, so it never lists them twice.
DriverType = Literal[DRIVER_TYPES]  # type: ignore[valid-type]


class LayerResult(BaseModel):
    source_digest: str
    source_size: int
    target_digest: str
    target_size: int
    cached: bool  # answered by the remote conversion cache


class TargetResult(BaseModel):
    driver: str
    reference: str
    digest: str
    media_type: str
    source_size: int
    target_size: int
    layers: int
    cached_layers: int = 0  # answered by the remote conversion cache, not converted
    layer_sizes: list[LayerResult] = []


class TargetFailure(BaseModel):
    """A driver whose target was not pushed, and why (its first failing step's error)."""

    driver: str
    reference: str
    reason: str


class PlanRecord(BaseModel):
    """The plan the run resolved (drivers and targets), so every reader shows what actually ran."""

    drivers: list[str]
    targets: dict[str, str]  # driver type → target reference

    @classmethod
    def of(cls, plan: ConversionPlan) -> PlanRecord:
        return cls(drivers=list(plan.drivers), targets=plan.target_names())


class ConversionResult(BaseModel):
    source: str
    source_digest: str
    targets: list[TargetResult]
    seconds: dict[str, float]
    skipped: str | None = None  # why nothing was converted (a COMPLETED run, not a failure)
    plan: PlanRecord | None = None  # None in results written before plans were recorded
    failed: list[TargetFailure] = []  # drivers that failed while the others were pushed (a FAILED run)

    def failure_message(self) -> str:
        """`zstdchunked (host/repo:v1-zstd): DriverError: …; pushed: estargz` — the run's failure message."""
        failures = "; ".join(f"{f.driver} ({f.reference}): {f.reason}" for f in self.failed)
        pushed = ", ".join(t.driver for t in self.targets) or "nothing"
        total = len(self.failed) + len(self.targets)
        return f"{len(self.failed)} of {total} drivers failed: {failures}; pushed: {pushed}"


class ConversionFailed(AccelError):
    """A run in which some drivers failed: its message names each and why; `result` still lists what was
    pushed. The FAILED state's data, so a direct call of the flow raises it with that message."""

    def __init__(self, result: ConversionResult) -> None:
        super().__init__(result.failure_message())
        self.result = result

    def __reduce__(self) -> tuple[type[ConversionFailed], tuple[ConversionResult]]:
        return type(self), (self.result,)  # persisted with the state: rebuilt from the result, not the text


def _config_path(config: str | None) -> str:
    path = config or os.environ.get("ACCEL_CONFIG")
    if not path:
        raise ConfigError("no config: pass the `config` parameter or set ACCEL_CONFIG")
    return str(Path(path).resolve())


@flow(
    name=CONVERT_FLOW,
    flow_run_name="convert {source}",
    log_prints=True,
    on_failure=[end_timed_out_process],  # a run past converter.limits.timeout ends its process
)
def convert_image(
    source: str,
    drivers: list[DriverType] | None = None,
    config: str | None = None,
    target_repository: str | None = None,
    target: str | None = None,
) -> ConversionResult | State[ConversionResult]:
    """Convert `source` with each driver and push beside it (defaults: the matching rule, else every
    configured driver and the source's repository). `source` and `target` may name any transport
    (`oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`, `docker-archive:FILE` as a source, a registry reference).
    When some drivers fail, the others are still pushed and the run ends FAILED with a message naming each
    failed driver and why (its result lists both). Past the config's converter.limits.timeout the run ends
    FAILED (`TimedOut`).

    Args:
        source: The image to convert: `host/repo:tag`, `host/repo@sha256:…` or both. Its registry must be in
            the config's provider.source.
        drivers: Formats to produce. Empty: the first matching converter rule's drivers, else every driver in
            the config.
        config: Path of the accel config on the worker. Empty: $ACCEL_CONFIG.
        target_repository: Repository to push the converted images to. Empty: the matching rule's, else the
            source's own repository.
        target: Exact destination (any transport). Empty: beside the source, tag + the driver's suffix.
    """
    die_with_runner()  # in a process acceld's runner started for this run: it ends with the runner
    cancel.run_started()  # run in-process by accelctl or the local runner: Ctrl-C and Prefect cancel it
    config_path = _config_path(config)
    # The timeout of the config this run converts with, however it was started (acceld, a work-pool
    # worker, accelctl, the UI): a flow's own `timeout_seconds` is fixed before its parameters are read.
    seconds = float(context_for(config_path).settings.converter.limits.timeout)
    try:
        with timeout(seconds, timeout_exc_type=ConversionTimedOut):
            return _convert(source, drivers, config_path, target_repository, target)
    except ConversionCancelled as exc:
        get_run_logger().warning("%s", exc)
        return Cancelled(message=str(exc))
    except AccelError as exc:
        # Expected (a 404, refused credentials, a limit): the run ends FAILED with the error's one line as
        # its message, and its logs carry that line without a traceback (tasks/expected.py).
        message = _one_line(exc)
        get_run_logger().error("%s", message)
        return Failed(message=message, data=exc)
    except ConversionTimedOut:
        # Prefect's own state and message for a flow past its timeout (acceld names the setting).
        message = f"Flow run exceeded timeout of {seconds} second(s)"
        get_run_logger().error(message)
        return Failed(name="TimedOut", message=message, data=ConversionTimedOut(message))


def _convert(
    source: str,
    drivers: list[DriverType] | None,
    config_path: str,
    target_repository: str | None,
    target: str | None,
) -> ConversionResult | State[ConversionResult]:
    """plan → resolve → lookup cache → pull + convert (+ early uploads) → build → verify → push → merge cache
    → collect garbage → artifact."""
    logger = get_run_logger()
    ctx = context_for(config_path)
    source_ref = parse_location(source).reference
    # An untagged layout source (its only image) names its outputs as if tagged `latest`.
    named = source_ref if source_ref.tag or source_ref.digest else source_ref.with_tag("latest")
    # Unknown drivers fail here, before anything touches the registry.
    plan = plan_conversion(ctx.settings, named, drivers, target_repository)
    plan = with_target(plan, parse_location(target).reference if target else None)
    driver_types = list(plan.drivers)
    timings: dict[str, float] = {}
    if is_cache_tag(ctx.settings, source_ref):
        return _skipped(plan, "", f"tag {source_ref.tag!r} is a conversion cache tag")
    # Runs started by an event trigger carry no idempotency key: the flow itself makes a repeated event one
    # conversion, by the same key acceld submits with.
    if earlier := duplicate_of(ctx.settings, plan):
        return _skipped(plan, source_ref.digest or "", f"duplicate of flow run {earlier}", duplicate=True)

    with _timed(timings, "resolve"):
        image = resolve(source_ref, config_path)
    logger.info("resolved %s → %s (%d platform(s))", source_ref, image.root.digest, len(image.manifests))
    if produced := produced_by_accel(image):
        return _skipped(plan, image.root.digest, f"the image was produced by accel ({produced})")
    if already := detect_format([layer.descriptor for m in image.manifests for layer in m.layers]):
        return _skipped(plan, image.root.digest, f"the image already is {already} (layer annotations)")
    cancel.check("pulling")

    layers = image.unique_layers()
    target_refs = dict(plan.targets)
    cache_ref = plan.cache
    lookup = CacheLookup(hits={d: {} for d in driver_types})
    if cache_ref is not None:
        with _timed(timings, "cache lookup"):
            lookup = lookup_cache(image, driver_types, cache_ref, target_refs, config_path)
    # Drivers whose format holds fewer layers than the image has fail now, named; the others convert.
    refused = drivers_over_their_layer_bound(ctx, image, driver_types)
    hits = {d: lookup.hits.get(d, {}) for d in driver_types if d not in refused}

    targets = []
    # The session holds what the run's layer tasks share (slots, image budgets, announced pulls, early
    # uploads); closing it waits for the early uploads.
    with ConversionSession(config_path, source_ref, image) as session:
        # Drivers whose converted blobs go to their target while later layers still convert.
        early = {
            d: target_refs[d]
            for d in hits
            if uploads_early(ctx.driver(d), target_refs[d], ctx.settings.converter.verify)
        }
        with _timed(timings, "pull+convert"):
            converted, failures = _pull_and_convert(session, image, layers, hits, config_path, early)
        failures.update(refused)

        # Each driver's target is built and pushed on its own: one driver's refusal leaves the others pushed.
        for d in driver_types:
            if d in failures:
                continue
            target_ref = target_refs[d]
            cancel.check(f"building {d}")
            try:
                with _timed(timings, f"build {d}"):
                    built = build_manifest(image, converted[d], d, config_path)
                if ctx.settings.converter.verify:
                    with _timed(timings, f"verify {d}"):
                        # Raises when it cannot prove the image: this driver's target is not pushed.
                        verify_image(built, source_ref, target_ref, d, config_path)
                cancel.check(f"pushing {d}")
                with _timed(timings, f"push {d}"):
                    # After its early uploads: one that failed is done again (and reported) by the push.
                    pushed = push_image(
                        built,
                        target_ref,
                        source_ref,
                        config_path,
                        session.progress.push_meter(d),
                        present=lookup.in_target.get(d, []),
                        wait_for=session.uploads_of(d),
                    )
            except ConversionCancelled:
                raise
            except Exception as exc:
                failures[d] = _reason(exc)
                continue
            targets.append(_target_result(d, pushed, built, converted[d], hits[d], str(describe(target_ref))))
            logger.info(
                "pushed %s@%s (cached %d/%d layers)",
                describe(target_ref),
                pushed.digest,
                len(hits[d]),
                len(layers),
            )

    done = {t.driver for t in targets}
    if cache_ref is not None and done:
        # After every target is pushed; a cache failure is a warning, never a failed conversion.
        with _timed(timings, "cache merge"):
            merge_cache(
                image,
                {d: layers for d, layers in converted.items() if d in done},
                cache_ref,
                {d: ref for d, ref in target_refs.items() if d in done},
                lookup.gone,
                config_path,
            )

    collect_garbage(config_path)
    result = ConversionResult(
        source=describe(source_ref),
        source_digest=image.root.digest,
        targets=targets,
        seconds=timings,
        plan=PlanRecord.of(plan),
        failed=[
            TargetFailure(driver=d, reference=str(describe(target_refs[d])), reason=r)
            for d, r in failures.items()
        ],
    )
    _publish_artifact(result)
    if result.failed:
        # FAILED, so that the same request runs again (and retries only what is missing: pushed blobs and
        # converted layers are reused); the result still records what was pushed.
        logger.error("%s", result.failure_message())
        return Failed(message=result.failure_message(), data=ConversionFailed(result))
    return result


@contextlib.contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Record how long a stage took (a stage that raises records nothing)."""
    started = time.monotonic()
    yield
    timings[stage] = time.monotonic() - started


def _one_line(exc: BaseException, longest: int | None = None) -> str:
    """An exception's lines joined (a builder's cause often comes on the lines after its first), cut at
    `longest` characters, then its notes (a batch's task adds which layer failed: `tasks.convert`)."""
    text = _joined(str(exc))
    if longest is not None and len(text) > longest:
        text = text[: longest - 3] + "..."
    return " ".join(part for part in (text, _joined(*getattr(exc, "__notes__", ()))) if part)


def _joined(*texts: str) -> str:
    return " ".join(line.strip() for text in texts for line in text.splitlines() if line.strip())


def _reason(exc: BaseException) -> str:
    """An exception as one line for a failure message: its type and its message (at most 500 characters),
    with the layer it failed at."""
    text = _one_line(exc, longest=500)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _target_result(
    driver: str,
    pushed: Descriptor,
    built: BuiltImage,
    converted: list[ConvertedLayer],
    hits: dict[str, ConvertedLayer],
    reference: str,
) -> TargetResult:
    return TargetResult(
        driver=driver,
        reference=reference,
        digest=pushed.digest,
        media_type=pushed.media_type,
        source_size=sum(c.source.size for c in converted),
        target_size=sum(b.size for b in built.blobs()),
        layers=len(converted),
        cached_layers=len(hits),
        layer_sizes=[
            LayerResult(
                source_digest=c.source.digest,
                source_size=c.source.size,
                target_digest=c.descriptor.digest,
                target_size=c.descriptor.size,
                cached=c.source.digest in hits,
            )
            for c in converted
        ],
    )


def _pull_and_convert(
    session: ConversionSession,
    image: SourceImage,
    layers: list[SourceLayer],
    hits: dict[str, dict[str, ConvertedLayer]],
    config_path: str,
    early: dict[str, Reference],
) -> tuple[dict[str, list[ConvertedLayer]], dict[str, str]]:
    """Per driver, the converted layers in source order: cache hits as they are, the rest pulled (once, shared
    by every driver) and converted in parallel task runs, a batch of layers each (`tasks.batches`), each
    conversion reading its layers while they arrive. A driver whose conversion fails is left out and its
    first failing batch's error (naming the layer) returned for it (driver → reason); a failed pull fails
    every driver and raises. For the drivers in `early` (driver → target), each batch's converted blobs are
    uploaded to the target as soon as the batch is converted."""
    missed = {d: [layer for layer in layers if layer.descriptor.digest not in hits[d]] for d in hits}
    to_pull = {layer.descriptor.digest: layer for misses in missed.values() for layer in misses}
    pulls = session.pull(to_pull.values())  # once each, shared by every driver
    conversions = session.convert(missed)
    for d, target_ref in early.items():
        if d in conversions:
            session.upload(d, target_ref, conversions[d])
    for pull in pulls:
        # A failed pull raises its own error here; its conversions would only say `UnfinishedRun`.
        cancel.wait(pull, "its layers were pulled")
        pull.result()
    store = context_for(config_path).store
    settings = context_for(config_path).settings
    converted: dict[str, list[ConvertedLayer]] = {}
    failures: dict[str, str] = {}
    for d, runs in conversions.items():
        try:
            converted[d] = _converted_layers(session, d, layers, runs, hits[d], store)
            # Layers the task cache answered were not streamed in this run: their recorded sizes count.
            check_image_sizes(settings, image)
        except ConversionCancelled:
            raise
        except Exception as exc:
            failures[d] = _reason(exc)
            get_run_logger().error("%s: %s", d, failures[d])
    return converted, failures


def _converted_layers(
    session: ConversionSession,
    driver: str,
    layers: list[SourceLayer],
    runs: list[BatchRun],
    hits: dict[str, ConvertedLayer],
    store: ContentStore,
) -> list[ConvertedLayer]:
    fresh: dict[str, ConvertedLayer] = {}
    for run in runs:
        # All of this driver's batches settle before the first failure is reported.
        cancel.wait(run.future, "its layers were converted")
    for run in runs:
        for layer, result in zip(run.layers, run.future.result(), strict=True):
            fresh[layer.descriptor.digest] = result
    # Prefect-cached results whose blobs have since left the content store are converted again, together.
    gone = []
    for layer in (layer for run in runs for layer in run.layers):
        blob = fresh[layer.descriptor.digest].descriptor.digest
        if store.exists(blob):
            store.touch(blob)
        else:
            gone.append(layer)
    if gone:
        for layer, result in zip(gone, session.convert_again(gone, driver), strict=True):
            fresh[layer.descriptor.digest] = result
    return [hits.get(layer.descriptor.digest) or fresh[layer.descriptor.digest] for layer in layers]


def _skipped(plan: ConversionPlan, digest: str, reason: str, duplicate: bool = False) -> ConversionResult:
    get_run_logger().info("skipping: %s", reason)  # the run's name says which image
    if duplicate:
        mark_duplicate()
    result = ConversionResult(
        source=describe(plan.source),
        source_digest=digest,
        targets=[],
        seconds={},
        skipped=reason,
        plan=PlanRecord.of(plan),
    )
    _publish_artifact(result)
    return result


def artifact_key(source: str, digest: str) -> str:
    """`conversion-<repo>-<12 hex of the digest>`: one card per image on Prefect's Artifacts page. Prefect
    allows lowercase letters, digits and dashes only."""
    try:
        repository = Reference.parse(source).repository
    except (InvalidReference, ValueError):
        repository = source
    slug = re.sub(r"[^a-z0-9]+", "-", repository.lower()).strip("-")[:80] or "image"
    tail = hex_of(digest)[:12] if digest.startswith("sha256:") else "unresolved"
    return f"conversion-{slug}-{tail}"


def _layer_table(target: TargetResult) -> str:
    header = "| source layer | bytes | converted | bytes | cache |\n|---|---|---|---|---|\n"
    rows = "\n".join(
        f"| `{la.source_digest}` | {la.source_size:,} "
        f"| `{la.target_digest}` | {la.target_size:,} | {'hit' if la.cached else 'converted'} |"
        for la in target.layer_sizes
    )
    return f"\n\n### {target.driver} layers\n\n{header}{rows}"


def _publish_artifact(result: ConversionResult) -> None:
    rows = "\n".join(
        f"| {t.driver} | `{t.reference}` | `{t.digest}` | {t.source_size:,} | {t.target_size:,} "
        f"| cached {t.cached_layers}/{t.layers} layers |"
        for t in result.targets
    )
    per_layer = "".join(_layer_table(t) for t in result.targets)
    stages = "\n".join(f"| {k} | {v:.2f} s |" for k, v in result.seconds.items())
    skipped = f"**skipped**: {result.skipped}\n\n" if result.skipped else ""
    create_markdown_artifact(
        key=artifact_key(result.source, result.source_digest),
        description=f"conversion of {result.source}",
        markdown=(
            f"# {result.source}\n\nsource digest `{result.source_digest}`\n\n{skipped}"
            "| driver | target | digest | source bytes | target bytes | cache |\n|---|---|---|---|---|---|\n"
            f"{rows}{per_layer}\n\n| stage | time |\n|---|---|\n{stages}\n"
        ),
    )
    # The machine-readable twin (no key: it stays off the global Artifacts page).
    Artifact(
        type=RESULT_ARTIFACT_TYPE,
        description=f"ConversionResult of {result.source} (JSON)",
        data=result.model_dump(mode="json"),
    ).create()
