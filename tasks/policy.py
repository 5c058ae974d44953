"""Retry and naming policy shared by every task."""

from __future__ import annotations

from typing import Any

from prefect import runtime

from accel.digest import short
from accel.registry import is_transient

# Backoff for transient registry trouble (5xx, resets, timeouts); 4xx and format errors fail at once.
RETRY_DELAYS = [2, 10, 30]


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except Exception as exc:  # the task's own exception, re-raised by Prefect
        return is_transient(exc)
    return False


def layer_run_name(verb: str) -> Any:
    """`convert sha256:abcdef012345 (estargz)` — task runs named after what they touch."""

    def name() -> str:
        params = runtime.task_run.parameters
        layer = params["layer"]
        digest = layer.descriptor.digest if hasattr(layer, "descriptor") else layer["descriptor"]["digest"]
        driver = params.get("driver_type")
        return f"{verb} {short(digest)}" + (f" ({driver})" if driver else "")

    return name
