"""Live progress of one conversion run: bytes pulled, converted and pushed per layer and driver, cache hits.

The run's `ConversionSession` keeps a `RunProgress` and hands each layer task run its `ByteMeter` as a
parameter (like its slots; never looked up by flow run); the task counts into it while the engine moves
bytes (`counting`, over `accel.progress.metering`). What the meters say is published two ways, from one
thread of the run:

- to Prefect, for the UI: a progress artifact (percent) and a markdown artifact (a row per layer) of the
  flow run, created once the run's layers have been moving for `ARTIFACTS_AFTER_SECONDS` (a run done
  sooner creates none: its result artifact says it all, and four requests per run are saved), then updated
  every `ARTIFACT_SECONDS` at most and only when something moved, and once at the end; the same for runs of
  acceld, of work pools and of the local runner;
- to a watcher in this process (`watching`: the local runner and `accelctl convert --in-process`, for the
  terminal), every `WATCH_SECONDS`: the run is in their thread, so nothing goes through the Prefect API.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

from accel.digest import short
from accel.model import SourceImage, SourceLayer
from accel.progress import ByteMeter, human_bytes, metering

log = logging.getLogger("accel.progress")

ARTIFACT_SECONDS = 5.0  # at most one pair of artifact updates per run this often: the server is shared
ARTIFACTS_AFTER_SECONDS = 2.0  # a run whose layers are done sooner leaves no progress artifacts
WATCH_SECONDS = 0.5  # a terminal's display redraws at least every 2 s with a second to spare

Snapshot = dict[str, Any]
Watcher = Callable[[Snapshot], None]

_watchers: dict[int, Watcher] = {}
_watchers_lock = threading.Lock()


@contextlib.contextmanager
def watching(watcher: Watcher) -> Iterator[None]:
    """A conversion run in the calling thread inside this block sends its progress snapshots to `watcher`
    (from another thread) while it runs, and a last one when its layers are done."""
    ident = threading.get_ident()
    with _watchers_lock:
        previous = _watchers.get(ident)
        _watchers[ident] = watcher
    try:
        yield
    finally:
        with _watchers_lock:
            if previous is None:
                _watchers.pop(ident, None)
            else:
                _watchers[ident] = previous


@contextlib.contextmanager
def counting(meter: ByteMeter | None, total: int | None = None) -> Iterator[None]:
    """A task's engine call, counted into its meter (`total`: the bytes it will move, when the task is the
    first to know); the meter is done when the call returns."""
    if meter is not None and total is not None:
        meter.total = total
    with metering(meter):
        yield
    if meter is not None:
        meter.done()


class _Layer:
    def __init__(self, layer: SourceLayer) -> None:
        self.digest = layer.descriptor.digest
        self.size = layer.descriptor.size
        self.pull: ByteMeter | None = None  # None: not pulled by this run (cache hits only)
        self.convert: dict[str, ByteMeter] = {}
        self.upload: dict[str, ByteMeter] = {}
        self.cached: set[str] = set()  # drivers the remote conversion cache answered


class RunProgress:
    """What one run's layer task runs have done so far; see the module docstring."""

    def __init__(self, source: str, image: SourceImage) -> None:
        self.source = source
        self.started = time.monotonic()
        self._layers = {layer.descriptor.digest: _Layer(layer) for layer in image.unique_layers()}
        self._drivers: list[str] = []
        self._pushes: dict[str, ByteMeter] = {}
        self.finished = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watcher = _watchers.get(threading.get_ident())
        self._artifacts: tuple[UUID, UUID] | None = None
        self._artifacts_tried = False  # created once, when the run has lasted ARTIFACTS_AFTER_SECONDS
        self._published: tuple[Any, ...] | None = None

    # --- the meters the session hands its task runs -----------------------------------------------
    def pull_meter(self, layer: SourceLayer) -> ByteMeter:
        row = self._layers[layer.descriptor.digest]
        row.pull = row.pull or ByteMeter(row.size)
        return row.pull

    def convert_meter(self, layer: SourceLayer, driver: str) -> ByteMeter:
        row = self._layers[layer.descriptor.digest]
        return row.convert.setdefault(driver, ByteMeter(row.size))

    def upload_meter(self, layer: SourceLayer, driver: str) -> ByteMeter:
        # Its total is the converted blob's size, which the upload task sets (`counting`).
        return self._layers[layer.descriptor.digest].upload.setdefault(driver, ByteMeter())

    def push_meter(self, driver: str) -> ByteMeter:
        return self._pushes.setdefault(driver, ByteMeter())

    def conversions(self, missed: dict[str, list[SourceLayer]]) -> None:
        """The drivers of the run and, per driver, the layers it converts: the others are cache hits."""
        for driver, layers in missed.items():
            if driver not in self._drivers:
                self._drivers.append(driver)
            converting = {layer.descriptor.digest for layer in layers}
            for row in self._layers.values():
                if row.digest in converting:
                    row.convert.setdefault(driver, ByteMeter(row.size))  # weighed from the start
                else:
                    row.cached.add(driver)

    @staticmethod
    def done_when_completed(meter: ByteMeter) -> Callable[[Any], None]:
        """A future's done callback: a task run that completed (or the task cache answered) is done,
        whatever its meter counted."""

        def done(future: Any) -> None:
            with contextlib.suppress(Exception):
                if _final_state(future).is_completed():
                    meter.done()

        return done

    # --- what they say ------------------------------------------------------------------------------
    def percent(self) -> float:
        """Pulls, conversions and pushes, each weighted by the source bytes it covers."""
        weight = done = 0.0
        for row in self._layers.values():
            fractions = [row.pull.fraction()] if row.pull is not None else []
            fractions += [meter.fraction() for meter in row.convert.values()]
            fractions += [self._sent(row, driver) for driver in row.convert]
            weight += row.size * len(fractions)
            done += row.size * sum(fractions)
        for driver in self._drivers:  # manifests and tag: a push step even when every layer was cached
            push = self._pushes.get(driver)
            weight += 1
            done += 1 if push is not None and push.finished else 0
        if self.finished:
            return 100.0
        return min(99.9, 100 * done / weight) if weight else 0.0

    def _sent(self, row: _Layer, driver: str) -> float:
        """How far the layer's converted blob is on its way to the target: its early upload's, else its
        driver's push's (which sends every blob not there yet)."""
        push, upload = self._pushes.get(driver), row.upload.get(driver)
        if push is not None and push.finished:
            return 1.0
        meter = upload or push
        return 0.0 if meter is None else meter.fraction()

    def snapshot(self) -> Snapshot:
        """JSON values: the terminal display's and the markdown artifact's input."""

        def meter(m: ByteMeter | None) -> list[Any] | None:
            return None if m is None else [m.value, m.total, m.finished]

        return {
            "source": self.source,
            "elapsed": round(time.monotonic() - self.started, 1),
            "percent": round(self.percent(), 1),
            "finished": self.finished,
            "drivers": list(self._drivers),
            "layers": [
                {
                    "digest": row.digest,
                    "size": row.size,
                    "pulled": meter(row.pull),
                    "drivers": {
                        d: {
                            "cached": d in row.cached,
                            "converted": meter(row.convert.get(d)),
                            "uploaded": meter(row.upload.get(d)),
                        }
                        for d in self._drivers
                    },
                }
                for row in self._layers.values()
            ],
            "pushes": {d: meter(m) for d, m in self._pushes.items()},
        }

    # --- publishing ---------------------------------------------------------------------------------
    def start(self) -> RunProgress:
        """Start publishing (the artifacts are created by the publishing thread, once the run has lasted
        ARTIFACTS_AFTER_SECONDS); from the flow's thread."""
        # Prefect's settings and flow run travel in context variables, which a new thread does not inherit.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._publish_until_stopped,), name="run-progress", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, finished: bool) -> None:
        """The layers are done (`finished`: and every target pushed): publish the last state and stop
        (once: a second call does nothing)."""
        if self._stop.is_set():
            return
        self.finished = finished
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._publish(force=True)

    def _publish_until_stopped(self) -> None:
        last_artifact = time.monotonic()
        while not self._stop.wait(WATCH_SECONDS):
            self._watch()
            if not self._artifacts_tried:
                if self._create_artifacts_when_due():
                    last_artifact = time.monotonic()
            elif time.monotonic() - last_artifact >= ARTIFACT_SECONDS:
                self._update_artifacts()
                last_artifact = time.monotonic()

    def _publish(self, force: bool = False) -> None:
        self._watch()
        if not self._artifacts_tried:
            self._create_artifacts_when_due()  # a run that ended before its artifacts were due: none
        self._update_artifacts(force)

    def _create_artifacts_when_due(self) -> bool:
        """Create the run's artifacts once it has lasted ARTIFACTS_AFTER_SECONDS; whether this call tried."""
        if time.monotonic() - self.started < ARTIFACTS_AFTER_SECONDS:
            return False
        self._artifacts_tried = True
        self._artifacts = _create_artifacts(self)
        self._published = _moved(self.snapshot())  # created with what it says now
        return True

    def _watch(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(Exception):  # a caller that left does not stop the run
                self._watcher(self.snapshot())

    def _update_artifacts(self, force: bool = False) -> None:
        if self._artifacts is None:
            return
        snapshot = self.snapshot()
        moved = _moved(snapshot)
        if moved == self._published and not force:
            return  # nothing moved: no request
        self._published = moved
        try:
            _update_artifacts(self._artifacts, snapshot)
        except Exception as exc:  # the UI's view is never worth a conversion
            log.debug("cannot update the progress artifacts of %s: %s", self.source, exc)


def _final_state(future: Any) -> Any:
    """A finished task run's final state: from the thread pool's own future when there is one (its result is
    the state), else `future.state`, which asks the Prefect API (one request per task run)."""
    from prefect.states import State

    wrapped = getattr(future, "wrapped_future", None)
    if wrapped is not None and wrapped.done() and isinstance(state := wrapped.result(), State):
        return state
    return future.state


def _moved(snapshot: Snapshot) -> tuple[Any, ...]:
    """What an artifact update shows: unchanged, no request."""
    return (snapshot["percent"], snapshot["layers"], snapshot["pushes"])


def _create_artifacts(progress: RunProgress) -> tuple[UUID, UUID] | None:
    from prefect.artifacts import create_markdown_artifact, create_progress_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return None  # a session outside a flow run (tests): nobody to show it to
    try:
        percent = create_progress_artifact(progress.percent(), description=f"conversion of {progress.source}")
        table = create_markdown_artifact(
            markdown=progress_markdown(progress.snapshot()), description=f"layers of {progress.source}"
        )
    except Exception as exc:
        log.debug("cannot create the progress artifacts of %s: %s", progress.source, exc)
        return None
    return percent, table


def _update_artifacts(artifacts: tuple[UUID, UUID], snapshot: Snapshot) -> None:
    from prefect.artifacts import update_progress_artifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactUpdate

    percent, table = artifacts
    update_progress_artifact(percent, snapshot["percent"])
    with get_client(sync_client=True) as client:
        client.update_artifact(table, ArtifactUpdate(data=progress_markdown(snapshot)))


def _cell(meter: list[Any] | None) -> str:
    if meter is None:
        return "–"
    value, total, finished = meter
    if finished:
        return f"done {human_bytes(max(value, total))}"
    if total:
        return f"{100 * value / total:.0f} % of {human_bytes(total)}"
    return human_bytes(value)


def progress_markdown(snapshot: Snapshot) -> str:
    """The per-layer table of the run's markdown artifact."""
    drivers = snapshot["drivers"]
    header = "| layer | size | pulled |" + "".join(f" {d} converted | {d} uploaded |" for d in drivers)
    rule = "|---|---|---|" + "---|---|" * len(drivers)
    rows = []
    for layer in snapshot["layers"]:
        cells = [f"`{short(layer['digest'])}`", human_bytes(layer["size"]), _cell(layer["pulled"])]
        for d in drivers:
            state = layer["drivers"][d]
            if state["cached"]:
                cells += ["cache hit", "cache hit"]
            else:
                cells += [_cell(state["converted"]), _cell(state["uploaded"])]
        rows.append("| " + " | ".join(cells) + " |")
    pushes = "".join(f"\n- {d} push: {_cell(m)}" for d, m in snapshot["pushes"].items())
    state = "done" if snapshot["finished"] else f"{snapshot['percent']:.0f} %"
    return (
        f"# {snapshot['source']}\n\n{state} after {snapshot['elapsed']:.0f} s\n\n{header}\n{rule}\n"
        + "\n".join(rows)
        + (f"\n{pushes}" if pushes else "")
        + "\n"
    )
