"""Keeping the content store within `provider.gcpolicy.threshold`."""

from __future__ import annotations

import contextlib
import stat
import time
from pathlib import Path

from prefect import get_run_logger

from accel.config import parse_size
from accel.context import context_for


def collect_garbage(config_path: str) -> int:
    """Least recently used blobs go first; blobs used in the last hour stay. Returns the bytes freed. Runs
    in the flow run itself (no task run: usually nothing to free, and its lines go to the flow's log)."""
    ctx = context_for(config_path)
    # A run killed or timed out mid-write leaves its partial file behind; no live run is older than its
    # timeout (converter.limits.timeout ends it, and its process), so twice that is safely abandoned.
    stale = sweep_abandoned_ingest(
        ctx.store.root / "ingest", max(2 * ctx.settings.converter.limits.timeout, 3600)
    )
    if stale:
        get_run_logger().info("removed %d partial files of interrupted runs from the content store", stale)
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


def sweep_abandoned_ingest(ingest: Path, older_than: float) -> int:
    """Remove files in the store's `ingest/` untouched for `older_than` seconds; returns how many."""
    now = time.time()
    removed = 0
    for entry in ingest.iterdir() if ingest.is_dir() else ():
        with contextlib.suppress(FileNotFoundError):
            st = entry.lstat()
            if stat.S_ISREG(st.st_mode) and now - st.st_mtime > older_than:
                entry.unlink()
                removed += 1
    return removed
