"""Retry and naming policy shared by every task.

Retries live in ONE place: the registry client retries each transient request (5xx other than to malformed
input, 429, resets, timeouts, truncated bodies) with capped exponential backoff, honouring Retry-After.
Tasks do not retry on top of it: a task retry would redo every request of the task (at a 20% fault rate a
push of N blobs succeeds with 0.8^N per attempt) and multiplied the attempts (3 × 4 before). Permanent
errors (4xx, TLS verification, DNS, refused connections, digest/size mismatches, format refusals) fail the
task at once with their message.
"""

from __future__ import annotations

from typing import Any

from prefect import runtime

from accel.digest import short
from accel.registry import is_transient


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """A Prefect `retry_condition_fn` for tasks whose transient failures are not already retried below
    them (none of accel's registry tasks: the client retries its requests)."""
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
