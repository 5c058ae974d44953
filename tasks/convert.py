"""The conversion DAG's tasks. Results are descriptors; blobs stay in the content store. Only the
conversions' results are persisted (Prefect's task cache: a retried run reuses its converted layers); the
other tasks' results are read by their own flow run only, in memory, so they are never written (not even
under acceld's PREFECT_RESULTS_PERSIST_BY_DEFAULT).

Layers are pulled, converted and uploaded in batches (`tasks.batches`): one task run per batch and step
(and driver), the batch's layers one after another through the per-layer functions (`pull_layer`,
`convert_layer`, `upload_layer`), so that a run's task runs stay bounded whatever its layer count."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from prefect import get_run_logger, task
from prefect.context import TaskRunContext

from accel import cancel, copy, publish
from accel import image as img
from accel.compression import ExpansionLimits, ImageBudget
from accel.context import context_for
from accel.digest import hex_of
from accel.drivers import ConvertedLayer, LayerInput
from accel.drivers.base import CONVERTED_LAYER_SCHEMA, Driver
from accel.drivers.dependencies import stage_dependency_blobs
from accel.model import BuiltImage, SourceImage, SourceLayer
from accel.oci import Descriptor
from accel.progress import ByteMeter
from accel.reference import Reference
from accel.transports import Transports, is_local
from accel.verify import VerifyError, verify_built
from tasks.batches import batch_id, batch_size
from tasks.limits import LayerSizes, check_layer_count
from tasks.policy import NAMED_LAYERS, layer_run_name
from tasks.progress import counting
from tasks.slots import ConversionSlots


@task(name="resolve", task_run_name="resolve {source}", persist_result=False)
def resolve(source: Reference, config_path: str) -> SourceImage:
    ctx = context_for(config_path)
    platforms = ctx.settings.converter.platform_filter()
    image = img.resolve_source(Transports(ctx.client), source, ctx.store, platforms)
    check_layer_count(ctx.settings, image)  # before any layer is pulled
    return image


@task(name="pull-layers", task_run_name=layer_run_name("pull"), persist_result=False)
def pull_layers(
    source: Reference,
    layers: list[SourceLayer],
    config_path: str,
    meters: Sequence[ByteMeter | None] = (),
    batches: Sequence[int] = (),
) -> list[SourceLayer]:
    """Layers into the content store, in the order their conversions read them. `batches`: how many of
    `layers` each batch (`tasks.batches`) holds, in order; the batches are pulled side by side, each one's
    layers one after another (none given: one batch), so a conversion holding a slot reads behind its own
    pull while the later batches arrive. One task run pulls every batch of a run: a task run per batch
    costs the Prefect server three state events each. `meters`: per layer, the run's count of its bytes
    pulled (`tasks.progress`)."""
    _log_batch("pulling", layers)
    per_layer = list(zip(layers, _per_layer(meters, layers), strict=True))
    sizes = list(batches) or [len(layers)]
    if sum(sizes) != len(layers):
        raise ValueError(f"batches of {sum(sizes)} layers for {len(layers)} layers")
    starts = [sum(sizes[:n]) for n in range(len(sizes))]
    groups = [per_layer[start : start + size] for start, size in zip(starts, sizes, strict=True)]

    def pull_batch(group: list[tuple[SourceLayer, ByteMeter | None]]) -> list[SourceLayer]:
        return [pull_layer(source, layer, config_path, meter) for layer, meter in group]

    if len(groups) == 1:
        return pull_batch(groups[0])
    # Each thread in a copy of this context: the run's cancel token and the meters' context variables.
    with ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="pull") as pool:
        futures = [pool.submit(cancel.in_this_context(pull_batch), group) for group in groups]
        wait(futures)  # every batch ends, well or not, before the task run does (and gives up the rest)
    return [layer for future in futures for layer in future.result()]  # the first failure raises


def pull_layer(
    source: Reference, layer: SourceLayer, config_path: str, meter: ByteMeter | None = None
) -> SourceLayer:
    """Into the content store, digest-verified; a blob already there is not fetched again."""
    ctx = context_for(config_path)
    with _naming(layer, "pulling"), counting(meter):
        Transports(ctx.client).fetch_blob(source, layer.descriptor, ctx.store)
    return layer


def _convert_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Same source layers + driver + options + driver version + store → same converted blobs. A batch is
    named by its layers' digests: the grouping is deterministic (`tasks.batches`), so a retried run's
    batches are the same and answered here."""
    ctx = context_for(parameters["config_path"])
    driver = ctx.driver(parameters["driver_type"])
    layers: list[SourceLayer] = parameters["layers"]
    # The result names blobs in *this* store, so another store must not reuse it.
    store_id = hashlib.sha256(str(ctx.store.root).encode()).hexdigest()[:12]
    # The schema: a result persisted before ConvertedLayer changed shape is converted again.
    return (
        f"convert-batch-{batch_id(tuple(layers))}-{driver.cache_key()}-{store_id}-r{CONVERTED_LAYER_SCHEMA}"
    )


def layer_conversions() -> int:
    """How many layers one flow run converts at a time: one per CPU. A conversion already spreads its codec
    work over every CPU; more at once only adds memory (each holds its own buffers and threads: two per CPU
    took a zstd:chunked runner from ~230 to ~265 MiB on a 200 MiB image, and gained Nydus ~0.1 s).
    ACCEL_LAYER_CONVERSIONS overrides."""
    value = os.environ.get("ACCEL_LAYER_CONVERSIONS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return max(1, os.cpu_count() or 1)


def slot_key(layers: Sequence[SourceLayer], driver_type: str) -> str:
    """A batch's conversion's name among the run's conversion slots."""
    return f"{batch_id(tuple(layers))} {driver_type}"


@task(
    name="convert-layers",
    task_run_name=layer_run_name("convert"),
    cache_key_fn=_convert_cache_key,
    persist_result=True,
)
def convert_layers(
    layers: list[SourceLayer],
    driver_type: str,
    config_path: str,
    slots: ConversionSlots | None = None,
    budgets: Sequence[tuple[ImageBudget, ...]] = (),
    meters: Sequence[ByteMeter | None] = (),
) -> list[ConvertedLayer]:
    """A batch of layers (`tasks.batches`) converted one after another; the converted layers in the same
    order. `slots`: the flow run's conversion slots, of which the batch holds one while it runs (none: it
    runs at once). `budgets`: per layer, the flow run's budgets of the platform images that list it, each
    bounded by converter.limits.max_image_size together with its other layers. Both come from the run's
    `tasks.session.ConversionSession`, and are not part of the cache key, nor are `meters` (per layer, the
    run's count of its bytes converted: `tasks.progress`)."""
    _log_batch(f"converting with {driver_type}", layers)
    # At most layer_conversions() of this flow run's batches at once, the largest first.
    slot = (
        contextlib.nullcontext()
        if slots is None
        else slots.slot(slot_key(layers, driver_type), batch_size(layers))
    )
    with slot:
        return [
            convert_layer(layer, driver_type, config_path, layer_budgets, meter)
            for layer, layer_budgets, meter in zip(
                layers, budgets or [()] * len(layers), _per_layer(meters, layers), strict=True
            )
        ]


def convert_layer(
    layer: SourceLayer,
    driver_type: str,
    config_path: str,
    budgets: tuple[ImageBudget, ...] = (),
    meter: ByteMeter | None = None,
) -> ConvertedLayer:
    """One layer of a batch: `driver.convert_layer` under converter.limits."""
    ctx = context_for(config_path)
    driver = ctx.driver(driver_type)
    limits = ctx.settings.converter.limits
    expansion = ExpansionLimits(
        max_bytes=limits.max_layer_bytes,
        max_ratio=limits.max_expansion_ratio,
        images=budgets,
        max_entries=limits.max_entries,
    )
    with _naming(layer, f"converting ({driver_type})"), counting(meter):
        converted = driver.convert_layer(LayerInput(layer.descriptor, layer.diff_id, ctx.store, expansion))
    # The driver read the layer to its end (the DiffID is checked there): its whole uncompressed size.
    if budgets and (size := budgets[0].counted(hex_of(layer.descriptor.digest))):
        LayerSizes(ctx.settings).record(layer.descriptor.digest, size)
    return converted


def uploads_early(driver: Driver, target_ref: Reference, verify: bool) -> bool:
    """Whether each converted layer's blob may go to the target repository as soon as it is converted,
    while later layers still convert: only when the driver keeps its converted blobs as they are
    (`Driver.keeps_converted_blobs`), the target is a registry (a layout or an archive is
    written whole, at the push), and nothing has to be proven first (`converter.verify` refuses before any
    blob leaves). The push still checks every blob, then writes manifests and the tag last."""
    return driver.keeps_converted_blobs() and not is_local(target_ref) and not verify


@task(name="upload-layers", task_run_name=layer_run_name("upload"), persist_result=False)
def upload_layers(
    layers: list[SourceLayer],
    converted: list[ConvertedLayer] | BaseException,
    target_ref: Reference,
    source_ref: Reference,
    driver_type: str,
    config_path: str,
    meters: Sequence[ByteMeter | None] = (),
) -> list[copy.BlobCopy | None]:
    """The converted blobs of a batch of layers into the target repository as soon as the batch is
    converted, ahead of the push, which then finds them there. Named after the source layers, like their
    pull and conversion. Uploads nothing when the conversion failed (submitted with `allow_failure`: that
    failure is the driver's, reported by the flow). `meters`: per layer, the run's count of bytes pushed."""
    if isinstance(converted, BaseException):
        return [None] * len(layers)
    _log_batch(f"uploading ({driver_type})", layers)
    uploaded = []
    for layer, blob, meter in zip(layers, converted, _per_layer(meters, layers), strict=True):
        with _naming(layer, f"uploading ({driver_type})"):
            uploaded.append(upload_layer(blob, target_ref, source_ref, config_path, meter))
    return uploaded


def upload_layer(
    converted: ConvertedLayer,
    target_ref: Reference,
    source_ref: Reference,
    config_path: str,
    meter: ByteMeter | None = None,
) -> copy.BlobCopy | None:
    """One converted blob into the target repository (mounted from the source repository when an earlier
    conversion left it there). None, uploading nothing, when its blob is not in the store (a cached
    conversion whose blob was collected: the flow converts it again, the push uploads it)."""
    ctx = context_for(config_path)
    if not ctx.store.exists(converted.descriptor.digest):
        return None
    routes = Transports(ctx.client, writing=[target_ref])
    mount_from = [source_ref.repository] if source_ref.registry == target_ref.registry else []
    with counting(meter, total=converted.descriptor.size):  # the run's count of bytes pushed
        return copy.copy_blob(routes, target_ref, converted.descriptor, ctx.store, mount_from)


@contextlib.contextmanager
def _naming(layer: SourceLayer, doing: str) -> Iterator[None]:
    """An error of one layer of a batch says which layer (the run's name lists only a few): a note, so the
    error keeps its type; the flow's failure message carries it (flows.convert_image)."""
    try:
        yield
    except Exception as exc:
        digest = layer.descriptor.digest
        if hex_of(digest)[:12] not in str(exc):
            exc.add_note(f"{doing} layer {digest}")
        raise


def _per_layer(
    meters: Sequence[ByteMeter | None], layers: Sequence[SourceLayer]
) -> Sequence[ByteMeter | None]:
    """A batch's meters, one per layer (none given: no counting)."""
    return meters or [None] * len(layers)


def _log_batch(doing: str, layers: Sequence[SourceLayer]) -> None:
    """Every layer of a batch in its run's log: its name lists a few."""
    if len(layers) > NAMED_LAYERS:
        digests = ", ".join(layer.descriptor.digest for layer in layers)
        get_run_logger().info("%s %d layers: %s", doing, len(layers), digests)


def build_manifest(
    source: SourceImage,
    converted: list[ConvertedLayer],
    driver_type: str,
    config_path: str,
) -> BuiltImage:
    """The driver's image from its converted layers (Nydus merges its bootstraps here). Called in the flow
    run itself, not as a task run: nothing reads its result but the push, a retried run builds again anyway,
    and its task run cost three state events and server bookkeeping per driver; the flow's `seconds`
    (`build <driver>`) and the result artifact still show its time."""
    ctx = context_for(config_path)
    by_source = {c.source.digest: c for c in converted}
    options = img.BuildOptions(harbor_annotation=ctx.settings.converter.harbor_annotation)
    return img.build_image(source, by_source, ctx.driver(driver_type), ctx.store, options)


@task(name="push", task_run_name="push {target_ref}", persist_result=False)
def push_image(
    image: BuiltImage,
    target_ref: Reference,
    source_ref: Reference,
    config_path: str,
    meter: ByteMeter | None = None,
    present: list[str] | None = None,
) -> Descriptor:
    """Blobs (mounted from the source repository when they are there), manifests, index, tag last.
    `present`: blobs the cache lookup put in the target repository (not asked about again)."""
    ctx = context_for(config_path)
    mount_from = [source_ref.repository] if source_ref.registry == target_ref.registry else []
    # The target may be a layout or an archive (accel.transports).
    routes = Transports(ctx.client, writing=[target_ref])
    try:
        # Blobs of images a driver depends on (a Nydus chunk dictionary) live in those images' repositories.
        stage_dependency_blobs(routes, target_ref, image, ctx.dependencies.resolved(), ctx.store)
        # `meter`: the run's count of the bytes the push sends (`tasks.progress`); blobs there send none.
        with counting(meter, total=sum(blob.size for blob in image.blobs())):
            pushed = publish.push_image(routes, target_ref, image, ctx.store, mount_from, present or ())
        routes.commit(target_ref)  # an oci-archive target is written now, atomically
    finally:
        routes.discard()
    return pushed


@task(name="verify", task_run_name="verify {driver_type} image", persist_result=False)
def verify_image(
    image: BuiltImage, source_ref: Reference, target_ref: Reference, driver_type: str, config_path: str
) -> str:
    """converter.verify: prove the built image against its source before it is pushed; raise when it fails."""
    ctx = context_for(config_path)
    routes = Transports(ctx.client)
    verdict = verify_built(
        routes,
        source_ref,
        ctx.store,
        image.root,
        work_dir=ctx.store.root / "verify",
        platforms=ctx.settings.converter.platform_filter(),
        target=routes,
        target_ref=target_ref,
    )
    if not verdict.ok:
        raise VerifyError(
            f"{driver_type} image of {source_ref} not pushed, it fails verification:\n{verdict.table()}"
        )
    return verdict.table()
