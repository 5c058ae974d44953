"""Prometheus metrics of the acceld service, in their own registry (no process-global state).

Labels are bounded on purpose: driver, result, webhook source, cache outcome. Never a repository or tag,
which would grow without limit.
"""

from __future__ import annotations

import platform
from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from accel import __version__

# Conversion durations range from seconds (small images, cached layers) to an hour (multi-GB images).
_DURATION_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)

RESULT_SUCCESS = "success"
RESULT_FAILURE = "failure"
CACHE_HIT = "hit"
CACHE_MISS = "miss"


def _version_of(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.conversions = Counter(
            "accel_conversions",
            "Finished image conversions by driver and result (success|failure).",
            ["driver", "result"],
            registry=self.registry,
        )
        self.conversion_duration = Histogram(
            "accel_conversion_duration_seconds",
            "Wall time of finished conversions, from flow run start to end.",
            ["driver"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.webhook_requests = Counter(
            "accel_webhook_requests",
            "Webhook requests by payload source and outcome.",
            ["source", "result"],
            registry=self.registry,
        )
        self.layers = Counter(
            "accel_layers",
            "Converted layers by driver and whether the conversion cache answered (hit|miss).",
            ["driver", "cache"],
            registry=self.registry,
        )
        build_info = Gauge(
            "accel_build_info",
            "accel build information; the value is always 1.",
            ["version", "prefect_version", "python_version"],
            registry=self.registry,
        )
        build_info.labels(__version__, _version_of("prefect"), platform.python_version()).set(1)

    def webhook_request(self, source: str, result: str) -> None:
        self.webhook_requests.labels(source, result).inc()

    def conversion_finished(self, drivers: list[str], succeeded: bool, seconds: float | None) -> None:
        result = RESULT_SUCCESS if succeeded else RESULT_FAILURE
        for driver in drivers:
            self.conversions.labels(driver, result).inc()
            if seconds is not None:
                self.conversion_duration.labels(driver).observe(max(seconds, 0.0))

    def layer_converted(self, driver: str, cached: bool, count: int = 1) -> None:
        self.layers.labels(driver, CACHE_HIT if cached else CACHE_MISS).inc(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
