"""Prometheus metrics of the acceld service, in their own registry (no process-global state).

Labels are bounded on purpose: driver, result, webhook source, cache outcome. Never a repository or tag,
which would grow without limit.

Besides accel's own `accel_*` families, the Go acceleration service's are exported under its names, so
its dashboards and alerts keep working: `acceleration_service_core_conversions_op_{total,error_total,
duration_seconds}{op="convert"}` (one per conversion; the duration of successful ones only),
`acceleration_service_<server.name lower-cased>_{requests_total,request_duration_seconds,
request_size_bytes,response_size_bytes}{code,method,host,url}` (echo-contrib's middleware: every request
but `/metrics`, `url` the route template, sizes approximated the same way) and `process_*`. Histograms have
the Go service's buckets (client_golang's DefBuckets where it sets none), and bucket bounds are printed as
Go prints them (`le="1"`, not `le="1.0"`; last among the labels). accel's own probes (`/readyz`, `/livez`:
the Go service has none) are not counted as API requests.
"""

from __future__ import annotations

import math
import platform
import re
from decimal import Decimal
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from accel import __version__

# Conversion durations range from seconds (small images, cached layers) to an hour (multi-GB images).
_DURATION_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)

RESULT_SUCCESS = "success"
RESULT_FAILURE = "failure"
CACHE_HIT = "hit"
CACHE_MISS = "miss"

# The Go service's names (pkg/metrics, and echo-contrib's prometheus middleware).
ACCELD_CORE = "acceleration_service_core"
ACCELD_OP_CONVERT = "convert"
_KB = 1024.0
_MB = 1024.0 * _KB
_ACCELD_SIZE_BUCKETS = (
    _KB, 2 * _KB, 5 * _KB, 10 * _KB, 100 * _KB, 500 * _KB, _MB, 2.5 * _MB, 5 * _MB, 10 * _MB
)  # fmt: skip
_API_LABELS = ["code", "method", "host", "url"]
# client_golang's prometheus.DefBuckets: what Go's op duration and echo-contrib's request duration use
# (prometheus_client's defaults add 0.075, 0.75 and 7.5).
GO_DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# A bucket sample's `le` label: prometheus_client sorts it among the others, client_golang writes it last.
_LE_LABEL = re.compile(rb'(?P<sep>[{,])le="(?P<bound>[-+0-9.eInfa]+)"(?=[,}])')


def _go_bucket_line(line: bytes) -> bytes:
    """One exposition line with its `le` bound, if any, as Go writes it: Go's float form, last label."""
    match = _LE_LABEL.search(line)
    close = line.rfind(b"}")
    if match is None or line.startswith(b"#") or close < match.end():
        return line
    bound = b'le="' + go_float(float(match["bound"])).encode() + b'"'
    before = line[: match.start()] + (b"{" if match["sep"] == b"{" else b"")
    rest = line[match.end() : close].removeprefix(b",") if match["sep"] == b"{" else line[match.end() : close]
    labels = before + rest
    return labels + (b"," if not labels.endswith(b"{") else b"") + bound + line[close:]


def go_float(value: float) -> str:
    """`value` as client_golang's text exposition writes it: strconv.FormatFloat(value, 'g', -1, 64), so
    `1`, `0.005`, `512000`, `2.62144e+06`."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    point = len(text) + exponent  # digits before the decimal point
    decimal_exponent = point - 1
    prefix = "-" if sign else ""
    if decimal_exponent < -4 or decimal_exponent >= 6:  # Go's %e threshold for the shortest form
        mantissa = text[0] + (f".{text[1:]}" if len(text) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if decimal_exponent < 0 else '+'}{abs(decimal_exponent):02d}"
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{text}"
    if point >= len(text):
        return f"{prefix}{text}{'0' * (point - len(text))}"
    return f"{prefix}{text[:point]}.{text[point:]}"


def acceld_api_prefix(server_name: str) -> str:
    """`acceleration_service_<server.name>`, as the Go service names its API metrics."""
    return f"acceleration_service_{server_name.lower()}"


def _version_of(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, server_name: str = "API") -> None:
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
        self._acceld_metrics(server_name)
        ProcessCollector(registry=self.registry)

    def _acceld_metrics(self, server_name: str) -> None:
        self.acceld_ops = Counter(
            f"{ACCELD_CORE}_conversions_op",
            "How many conversions operations.",
            ["op"],
            registry=self.registry,
        )
        self.acceld_op_errors = Counter(
            f"{ACCELD_CORE}_conversions_op_error",
            "How many conversions operation errors.",
            ["op"],
            registry=self.registry,
        )
        self.acceld_op_duration = Histogram(
            f"{ACCELD_CORE}_conversions_op_duration_seconds",
            "The latency of conversions operations in seconds.",
            ["op"],
            buckets=GO_DEFAULT_BUCKETS,
            registry=self.registry,
        )
        prefix = acceld_api_prefix(server_name)
        self.api_requests = Counter(
            f"{prefix}_requests",
            "How many HTTP requests processed, partitioned by status code and HTTP method.",
            _API_LABELS,
            registry=self.registry,
        )
        self.api_duration = Histogram(
            f"{prefix}_request_duration_seconds", "The HTTP request latencies in seconds.",
            _API_LABELS, buckets=GO_DEFAULT_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.api_request_size = Histogram(
            f"{prefix}_request_size_bytes", "The HTTP request sizes in bytes.",
            _API_LABELS, buckets=_ACCELD_SIZE_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.api_response_size = Histogram(
            f"{prefix}_response_size_bytes", "The HTTP response sizes in bytes.",
            _API_LABELS, buckets=_ACCELD_SIZE_BUCKETS, registry=self.registry,
        )  # fmt: skip

    def api_request(
        self,
        code: int,
        method: str,
        host: str,
        url: str,
        seconds: float,
        request_size: int,
        response_size: int,
    ) -> None:
        labels = (str(code), method, host, url)
        self.api_requests.labels(*labels).inc()
        self.api_duration.labels(*labels).observe(max(seconds, 0.0))
        self.api_request_size.labels(*labels).observe(request_size)
        self.api_response_size.labels(*labels).observe(response_size)

    def webhook_request(self, source: str, result: str) -> None:
        self.webhook_requests.labels(source, result).inc()

    def conversion_finished(self, drivers: list[str], succeeded: bool, seconds: float | None) -> None:
        result = RESULT_SUCCESS if succeeded else RESULT_FAILURE
        # acceld counts one operation per conversion, its duration only when it succeeded.
        self.acceld_ops.labels(ACCELD_OP_CONVERT).inc()
        if not succeeded:
            self.acceld_op_errors.labels(ACCELD_OP_CONVERT).inc()
        elif seconds is not None:
            self.acceld_op_duration.labels(ACCELD_OP_CONVERT).observe(max(seconds, 0.0))
        for driver in drivers:
            self.conversions.labels(driver, result).inc()
            if seconds is not None:
                self.conversion_duration.labels(driver).observe(max(seconds, 0.0))

    def layer_converted(self, driver: str, cached: bool, count: int = 1) -> None:
        self.layers.labels(driver, CACHE_HIT if cached else CACHE_MISS).inc(count)

    def render(self) -> bytes:
        # Bucket bounds as Go prints them, so Go-written dashboards and recording rules match label values.
        return b"\n".join(_go_bucket_line(line) for line in generate_latest(self.registry).split(b"\n"))
