"""Retry and naming policy shared by every task.

Retries live in ONE place: the registry client retries each transient request (5xx other than to malformed
input, 429, resets, timeouts, truncated bodies) with capped exponential backoff, honouring Retry-After.
Tasks do not retry on top of it: a task retry would redo every request of the task (at a 20% fault rate a
push of N blobs succeeds with 0.8^N per attempt) and multiplied the attempts (3 × 4 before). Permanent
errors (4xx, TLS verification, DNS, refused connections, digest/size mismatches, format refusals) fail the
task at once with their message.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from prefect import runtime

from accel.digest import short

NAMED_LAYERS = 3  # a batch's run name lists this many of its layers; the run's log lists them all


def layer_run_name(verb: str) -> Any:
    """Task runs named after the layers they touch: `convert sha256:abcdef012345 (estargz)` for one,
    `convert 3 layers: sha256:abcdef012345, sha256:…, sha256:… (estargz)` for a batch, and past
    NAMED_LAYERS `… and 247 more (estargz)`."""

    def name() -> str:
        params = runtime.task_run.parameters
        return batch_run_name(verb, params["layers"], params.get("driver_type"))

    return name


def batch_run_name(verb: str, layers: Sequence[Any], driver: str | None = None) -> str:
    digests = [short(_digest_of(layer)) for layer in layers]
    if len(digests) == 1:
        named = digests[0]
    else:
        named = f"{len(digests)} layers: " + ", ".join(digests[:NAMED_LAYERS])
        if len(digests) > NAMED_LAYERS:
            named += f" and {len(digests) - NAMED_LAYERS} more"
    return f"{verb} {named}" + (f" ({driver})" if driver else "")


def layers_in_run_name(name: str) -> int:
    """How many layers a run named by `batch_run_name` holds (acceld's layer metrics count them)."""
    batch = re.match(r"[\w-]+ (\d+) layers:", name)
    return int(batch[1]) if batch else 1


def _digest_of(layer: Any) -> str:
    """A SourceLayer's digest, or its serialised form's (parameters as Prefect may hand them back)."""
    return layer.descriptor.digest if hasattr(layer, "descriptor") else layer["descriptor"]["digest"]
