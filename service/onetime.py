"""What accelctl and the warm local runner share about a one-time conversion request: the input check that
runs before any Prefect work, and the one line a failure prints.

Only the standard library at module level: accelctl imports this before it knows whether the engine is
needed (the runner, when up, checks the request itself).
"""

from __future__ import annotations


def check_request(source: str, config: str, drivers: list[str] | None, target: str | None) -> str | None:
    """Config, reference and drivers checked before anything Prefect runs: a bad call fails in a fraction of
    a second with its cause, and starts no server. Returns the error message, or None."""
    from accel.config import load_file
    from accel.errors import AccelError
    from accel.plan import plan_conversion, with_target
    from accel.transports import parse_location

    try:
        settings = load_file(config)
        reference = parse_location(source).reference
        plan = plan_conversion(settings, reference, drivers or None)
        with_target(plan, parse_location(target).reference if target else None)
    except AccelError as exc:
        return str(exc)
    return None


def describe_failure(exc: BaseException) -> str:
    """The one-line cause accelctl prints: an accel error as is, anything else with its type."""
    from accel.errors import AccelError

    return str(exc) if isinstance(exc, AccelError) else f"{type(exc).__name__}: {exc}"
