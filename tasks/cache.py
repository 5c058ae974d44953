"""Remote conversion cache tasks: lookup before converting, merge after the targets are pushed.

Neither ever fails a conversion: cache trouble is logged as a warning and the conversion goes on without it.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from pydantic import BaseModel

from accel import cache
from accel.context import context_for
from accel.drivers import ConvertedLayer
from accel.errors import AccelError
from accel.model import SourceImage
from accel.reference import Reference
from accel.registry import RegistryError


class CacheLookup(BaseModel):
    """Hits per driver (source layer digest → converted layer) and blobs found gone from the cache."""

    hits: dict[str, dict[str, ConvertedLayer]] = {}
    gone: list[str] = []
    # Per driver, the hits' blobs the lookup made sure are in the target repository: its push skips them.
    in_target: dict[str, list[str]] = {}


@task(name="lookup-cache", task_run_name="lookup cache {cache_ref}")
def lookup_cache(
    image: SourceImage,
    driver_types: list[str],
    cache_ref: Reference,
    targets: dict[str, Reference],
    config_path: str,
) -> CacheLookup:
    """Read the cache image and make each hit usable: blob in the target repository, extra blobs local."""
    ctx = context_for(config_path)
    provider = ctx.settings.provider
    layers = image.unique_layers()
    ref = cache_ref
    try:
        found = cache.fetch_cache(
            ctx.client, ref, ctx.store, provider.cache_version, [m.platform for m in image.manifests]
        )
        lookup = CacheLookup()
        gone: set[str] = set()
        for driver_type in driver_types:
            restored = cache.restore_hits(
                ctx.client,
                found,
                ctx.driver(driver_type),
                layers,
                targets[driver_type],
                ctx.store,
            )
            lookup.hits[driver_type] = restored.hits
            lookup.in_target[driver_type] = sorted(restored.in_target)
            gone |= restored.gone
        lookup.gone = sorted(gone)
    except (RegistryError, AccelError, OSError, ValueError) as exc:
        get_run_logger().warning("conversion cache %s is unusable, converting without it: %s", ref, exc)
        return CacheLookup()
    for driver_type, hits in lookup.hits.items():
        get_run_logger().info(
            "cache %s: %d/%d layers cached for %s", ref, len(hits), len(layers), driver_type
        )
    return lookup


@task(name="merge-cache", task_run_name="merge cache {cache_ref}")
def merge_cache(
    image: SourceImage,
    converted: dict[str, list[ConvertedLayer]],
    cache_ref: Reference,
    targets: dict[str, Reference],
    gone: list[str],
    config_path: str,
) -> str | None:
    """Merge this conversion's records into the cache image and push it; the pushed root digest or None."""
    ctx = context_for(config_path)
    provider = ctx.settings.provider
    ref = cache_ref
    if provider.cache_size == 0:
        get_run_logger().info("provider.cache_size is 0: no records are stored in %s", ref)
        return None
    records = cache.records_for(image, {ctx.driver(d): layers for d, layers in converted.items()}, ctx.store)
    # New blobs are already in the target repositories: mount them from there.
    mount_from = [t.repository for t in targets.values() if t.registry == ref.registry]
    try:
        pushed = cache.push_cache(
            ctx.client,
            ref,
            ctx.store,
            records,
            version=provider.cache_version,
            size=provider.cache_size,
            mount_from=list(dict.fromkeys(mount_from)),
            gone=frozenset(gone),
            index_root=provider.cache_index_root,
        )
    except (RegistryError, AccelError, OSError, ValueError) as exc:
        get_run_logger().warning(
            "could not update conversion cache %s (the targets are pushed): %s", ref, exc
        )
        return None
    get_run_logger().info("cache %s → %s", ref, pushed.digest)
    return pushed.digest
