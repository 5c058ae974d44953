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


def layer_run_name(verb: str) -> Any:
    """`convert sha256:abcdef012345 (estargz)` — task runs named after what they touch."""

    def name() -> str:
        params = runtime.task_run.parameters
        layer = params["layer"]
        digest = layer.descriptor.digest if hasattr(layer, "descriptor") else layer["descriptor"]["digest"]
        driver = params.get("driver_type")
        return f"{verb} {short(digest)}" + (f" ({driver})" if driver else "")

    return name
