"""The conversion DAG's tasks. Results are descriptors; blobs stay in the content store."""

from __future__ import annotations

import hashlib
from typing import Any

from prefect import task
from prefect.context import TaskRunContext

from accel import image as img
from accel import publish
from accel.compression import ExpansionLimits
from accel.context import context_for
from accel.digest import hex_of
from accel.drivers import ConvertedLayer, LayerInput
from accel.drivers.base import CONVERTED_LAYER_SCHEMA
from accel.drivers.dependencies import stage_dependency_blobs
from accel.oci import Descriptor
from accel.reference import Reference
from accel.transports import Transports
from accel.verify import VerifyError, verify_built
from tasks.limits import LayerSizes, image_budgets
from tasks.policy import layer_run_name


@task(
    name="resolve",
    task_run_name="resolve {source}",
)
def resolve(source: Reference, config_path: str) -> img.SourceImage:
    ctx = context_for(config_path)
    platforms = ctx.settings.converter.platform_filter()
    return img.resolve_source(Transports(ctx.client), source, ctx.store, platforms)


@task(
    name="pull-layer",
    task_run_name=layer_run_name("pull"),
)
def pull_layer(source: Reference, layer: img.SourceLayer, config_path: str) -> img.SourceLayer:
    """Into the content store, digest-verified; a blob already there is not fetched again."""
    ctx = context_for(config_path)
    Transports(ctx.client).fetch_blob(source, layer.descriptor, ctx.store)
    return layer


def _convert_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Same source layer + driver + options + driver version + store → same converted blob."""
    ctx = context_for(parameters["config_path"])
    driver = ctx.driver(parameters["driver_type"])
    layer: img.SourceLayer = parameters["layer"]
    # The result names a blob in *this* store, so another store must not reuse it.
    store_id = hashlib.sha256(str(ctx.store.root).encode()).hexdigest()[:12]
    # The schema: a result persisted before ConvertedLayer changed shape is converted again.
    return f"convert-{layer.descriptor.digest}-{driver.cache_key()}-{store_id}-r{CONVERTED_LAYER_SCHEMA}"


@task(
    name="convert-layer",
    task_run_name=layer_run_name("convert"),
    cache_key_fn=_convert_cache_key,
    persist_result=True,
)
def convert_layer(
    layer: img.SourceLayer, driver_type: str, config_path: str, images: list[str] | None = None
) -> ConvertedLayer:
    """`images`: the platform images that list the layer (`tasks.limits.image_label`), each bounded by
    converter.limits.max_image_size together with its other layers."""
    ctx = context_for(config_path)
    driver = ctx.driver(driver_type)
    limits = ctx.settings.converter.limits
    budgets = image_budgets(ctx.settings, driver_type, images or [])
    expansion = ExpansionLimits(
        max_bytes=limits.max_layer_bytes, max_ratio=limits.max_expansion_ratio, images=budgets
    )
    converted = driver.convert_layer(LayerInput(layer.descriptor, layer.diff_id, ctx.store, expansion))
    # The driver read the layer to its end (the DiffID is checked there): its whole uncompressed size.
    if budgets and (size := budgets[0].counted(hex_of(layer.descriptor.digest))):
        LayerSizes(ctx.settings).record(layer.descriptor.digest, size)
    return converted


@task(name="build-manifest", task_run_name="build {driver_type} manifest")
def build_image(
    source: img.SourceImage,
    converted: list[ConvertedLayer],
    driver_type: str,
    config_path: str,
) -> img.BuiltImage:
    ctx = context_for(config_path)
    by_source = {c.source.digest: c for c in converted}
    options = img.BuildOptions(harbor_annotation=ctx.settings.converter.harbor_annotation)
    return img.build_image(source, by_source, ctx.driver(driver_type), ctx.store, options)


@task(
    name="push",
    task_run_name="push {target_ref}",
)
def push_image(
    image: img.BuiltImage, target_ref: Reference, source_ref: Reference, config_path: str
) -> Descriptor:
    """Blobs (mounted from the source repository when they are there), manifests, index, tag last."""
    ctx = context_for(config_path)
    mount_from = [source_ref.repository] if source_ref.registry == target_ref.registry else []
    # The target may be a layout or an archive (accel.transports).
    routes = Transports(ctx.client, writing=[target_ref])
    try:
        # Blobs of images a driver depends on (a Nydus chunk dictionary) live in those images' repositories.
        stage_dependency_blobs(routes, target_ref, image, ctx.dependencies.resolved(), ctx.store)
        pushed = publish.push_image(routes, target_ref, image, ctx.store, mount_from)
        routes.commit(target_ref)  # an oci-archive target is written now, atomically
    finally:
        routes.discard()
    return pushed


@task(name="verify", task_run_name="verify {driver_type} image")
def verify_image(
    image: img.BuiltImage, source_ref: Reference, target_ref: Reference, driver_type: str, config_path: str
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
