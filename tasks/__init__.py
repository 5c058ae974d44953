"""Thin Prefect tasks over the accel engine: cache keys, run names, no retries (`tasks.policy`) — no format
logic here. `tasks.session` holds what one flow run's layer tasks share."""

from tasks import expected
from tasks.convert import build_manifest, convert_layers, pull_layers, push_image, resolve, verify_image

__all__ = ["build_manifest", "convert_layers", "pull_layers", "push_image", "resolve", "verify_image"]

# Every process that runs accel's flows imports this package: expected failures log without tracebacks.
expected.install()
