"""converter.limits.max_image_size across the layers of one image.

The layers of an image convert in parallel task runs of one flow run (threads of its process): they charge
one shared `ImageBudget` per (driver, platform image) while they stream, so an image over the limit stops
while its bytes are counted, whatever its manifest declares. Each driver streams the layers itself, hence
one budget per driver. The run's `tasks.session.ConversionSession` holds its budgets and hands each
conversion those of its layer.

A layer answered by Prefect's task cache is not streamed again; the uncompressed size counted when it was
converted is recorded beside the content store (`<work_dir>/layer-sizes/<hex>`), so a retried run, whose
earlier layers come from that cache, still counts them (`check_image_sizes`, after the conversions).
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

from accel.compression import ImageBudget
from accel.config import Settings
from accel.context import Context
from accel.digest import hex_of
from accel.errors import LimitExceeded
from accel.model import SourceImage, SourceManifest


def image_label(source: str, manifest: SourceManifest) -> str:
    """`host/repo@sha256:… (linux/arm64)`: the image a limit failure names (the platform's manifest)."""
    repository = source.split("@", 1)[0]
    if ":" in repository.rsplit("/", 1)[-1]:
        repository = repository.rsplit(":", 1)[0]
    platform = manifest.platform
    where = f" ({platform.os}/{platform.architecture})" if platform is not None else ""
    return f"{repository}@{manifest.descriptor.digest}{where}"


def images_of_layers(image: SourceImage) -> dict[str, list[str]]:
    """Source layer digest → the labels of the platform images that list it."""
    found: dict[str, list[str]] = {}
    for manifest in image.manifests:
        label = image_label(image.reference, manifest)
        for layer in manifest.layers:
            labels = found.setdefault(layer.descriptor.digest, [])
            if label not in labels:
                labels.append(label)
    return found


class LayerSizes:
    """Uncompressed sizes of source layers as counted while they streamed, one small file per layer."""

    def __init__(self, settings: Settings) -> None:
        self.root = Path(settings.provider.work_dir) / "layer-sizes"

    def get(self, digest: str) -> int | None:
        try:
            return int((self.root / hex_of(digest)).read_text())
        except (OSError, ValueError):
            return None

    def record(self, digest: str, size: int) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / hex_of(digest)
        temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        temp.write_text(str(size))
        temp.replace(path)  # readers see a whole number or none


def check_image_sizes(settings: Settings, image: SourceImage) -> None:
    """Every platform image against max_image_size by the recorded sizes of its layers: the check for
    layers this run did not stream (answered by the task cache). Raises LimitExceeded naming the image."""
    sizes = LayerSizes(settings)
    for manifest in image.manifests:
        known = {}
        for layer in manifest.layers:
            if (size := sizes.get(layer.descriptor.digest)) is not None:
                known[hex_of(layer.descriptor.digest)] = size
        label = image_label(image.reference, manifest)
        ImageBudget(settings.converter.limits.max_image_bytes, label, known).check()


def check_layer_count(settings: Settings, image: SourceImage) -> None:
    """Every platform image against converter.limits.max_layers, before anything is pulled. Raises
    LimitExceeded naming the image."""
    limit = settings.converter.limits.max_layers
    for manifest in image.manifests:
        if len(manifest.layers) > limit:
            label = image_label(image.reference, manifest)
            count = len(manifest.layers)
            raise LimitExceeded(
                f"{label} has {count:,} layers, more than {limit:,} (converter.limits.max_layers)"
            )


def drivers_over_their_layer_bound(ctx: Context, image: SourceImage, drivers: list[str]) -> dict[str, str]:
    """Driver → why it is refused: the drivers whose format holds fewer layers than a platform image of
    `image` has (`Driver.max_layers`). The other drivers still convert."""
    refused: dict[str, str] = {}
    for driver_type in drivers:
        limit = ctx.driver(driver_type).max_layers
        deepest = max(image.manifests, key=lambda m: len(m.layers))
        if limit is not None and len(deepest.layers) > limit:
            label = image_label(image.reference, deepest)
            refused[driver_type] = (
                f"LimitExceeded: {label} has {len(deepest.layers):,} layers, "
                f"more than the {limit:,} a {driver_type} image holds"
            )
    return refused


class ConversionTimedOut(TimeoutError):
    """A conversion past converter.limits.timeout; its run ends FAILED in Prefect's `TimedOut` state."""


def end_timed_out_process(flow: Any, flow_run: Any, state: Any) -> None:
    """An `on_failure` hook: a run past converter.limits.timeout (Prefect's `TimedOut` state, already
    recorded) ends its process at once. Its task threads — a pull the registry stopped answering, a
    conversion still streaming — would otherwise keep the process, and with it the runner's worker slot,
    until they finished on their own. Only in a process started for this very run (the runner's); a run in
    a thread of a longer-lived process (in-process runs, direct calls) is left alone."""
    if state.name != "TimedOut" or os.environ.get("PREFECT__FLOW_RUN_ID") != str(flow_run.id):
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):  # the state is recorded: logs and events are best effort
            worker.drain_all(timeout=5)
    os._exit(0)  # 0: the run's own state says it failed; the runner must not report it crashed over that
