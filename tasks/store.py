"""Keeping the content store within `provider.gcpolicy.threshold`."""

from __future__ import annotations

from prefect import get_run_logger, task

from accel.config import parse_size
from accel.context import context_for


@task(name="collect-garbage", task_run_name="collect garbage")
def collect_garbage(config_path: str) -> int:
    """Least recently used blobs go first; blobs used in the last hour stay. Returns the bytes freed."""
    ctx = context_for(config_path)
    limit = parse_size(ctx.settings.provider.gcpolicy.threshold)
    before = ctx.store.total_size()
    removed = ctx.store.gc(limit)
    freed = before - ctx.store.total_size()
    if removed:
        get_run_logger().info(
            "content store over %s: removed %d blobs, %d bytes",
            ctx.settings.provider.gcpolicy.threshold,
            len(removed),
            freed,
        )
    return freed
