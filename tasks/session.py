"""One flow run's conversion session: the state its layer task runs share, opened and closed by the flow.

A `convert-image` run pulls each layer it misses once, converts it with every driver in parallel task runs
(threads of the flow's process) and, for some drivers, uploads each converted blob to its target early.
Layers go in batches (`tasks.batches`: large layers alone, small ones together, a bounded number per step),
one task run per batch and step: the session groups the image's layers once, and every step (the pulls,
each driver's conversions and uploads) uses that grouping, narrowed to the layers it has to do; the pulls
are one task run, which pulls its batches side by side.
For the length of the run those task runs share state, and the session owns all of it:

- the conversion slots (`tasks.slots`): at most `layer_conversions()` batches at once, the largest first;
- the image budgets (converter.limits.max_image_size, `tasks.limits`), one per (driver, platform image);
- the pulls it announced to the content store (`ContentStore.expect`/`give_up`), which conversions read
  behind (`ContentStore.open_following`);
- the early uploads, which the push of their driver waits for;
- the run's live progress (`tasks.progress`): a byte meter per layer (and step, and driver), handed to the
  batch task runs, published to the run's artifacts and to a watcher in this process.

The session submits those task runs itself and passes each what it needs as parameters (the slots, its
layers' budgets): no task looks anything up by flow run id. The rules of order live here: every conversion
is announced before the first is submitted, and withdrawn when its task run ends (one answered by the task
cache never asks for a slot); on a clean exit closing waits for the early uploads, so none outlives the run.
After a failure (a failed pull, converter.limits.timeout) it does not wait: an upload may be waiting on a
conversion that reads behind a stalled pull.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from prefect import allow_failure
from prefect.futures import PrefectFuture

from accel.compression import ImageBudget
from accel.context import context_for
from accel.drivers import ConvertedLayer
from accel.model import SourceImage, SourceLayer
from accel.progress import ByteMeter
from accel.reference import Reference
from tasks.batches import Batch, batch_layers, batch_size, only
from tasks.convert import convert_layers, layer_conversions, pull_layers, slot_key, upload_layers
from tasks.limits import images_of_layers
from tasks.progress import RunProgress
from tasks.slots import ConversionSlots


@dataclass(frozen=True)
class BatchRun:
    """A batch's conversion task run: its layers, and the future of their converted layers (same order)."""

    layers: Batch
    future: PrefectFuture[list[ConvertedLayer]]


class ConversionSession:
    """Created by the flow once it has resolved the source image (`with ConversionSession(...) as session`)
    and closed by it before the conversion cache is merged."""

    def __init__(self, config_path: str, source: Reference, image: SourceImage) -> None:
        self._config_path = config_path
        self._source = source
        ctx = context_for(config_path)
        self._store = ctx.store
        self._max_image_bytes = ctx.settings.converter.limits.max_image_bytes
        self._images = images_of_layers(image)  # layer digest → the platform images listing it
        # This run's own slots: runs in one process (acceld's in-process runner) each keep their own pace.
        self._slots = ConversionSlots(layer_conversions())
        # One grouping of the image's layers for every step, the same on a retried run (the task cache).
        self._batches = batch_layers(image.unique_layers(), layer_conversions())
        self._budgets: dict[tuple[str, str], ImageBudget] = {}  # (driver, platform image) → its budget
        self._uploads: dict[str, list[PrefectFuture[Any]]] = {}  # driver → its early uploads
        self.progress = RunProgress(str(source), image).start()  # the push's meter: `progress.push_meter`

    def __enter__(self) -> ConversionSession:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(wait_for_uploads=exc_type is None)

    def close(self, wait_for_uploads: bool = True) -> None:
        """Forget the image budgets (their layers are converted) and, unless the run failed, wait for the
        early uploads (whatever their outcome: a failure shows in the upload's own state, and the push
        uploaded that blob again)."""
        self._budgets.clear()
        uploads = [u for driver_uploads in self._uploads.values() for u in driver_uploads]
        self._uploads.clear()
        if wait_for_uploads:
            for upload in uploads:
                with contextlib.suppress(Exception):
                    upload.wait()
        self.progress.stop(finished=wait_for_uploads)  # its last state, 100 % after a clean run

    def pull(self, layers: Iterable[SourceLayer]) -> list[PrefectFuture[list[SourceLayer]]]:
        """Submit the pulls of `layers`: one task run, its batches pulled side by side (`pull_layers`).
        Conversions need not wait for them: each reads its layers while the pull writes them, and ends only
        once the pull has committed each blob, digest verified. A pull that ends without a blob fails the
        conversions reading it."""
        batches = only(self._batches, {layer.descriptor.digest for layer in layers})
        if not batches:
            return []
        pulled = [layer for batch in batches for layer in batch]
        digests = [layer.descriptor.digest for layer in pulled]
        for digest in digests:
            self._store.expect(digest)  # before the run exists: a conversion may start first
        meters = [self.progress.pull_meter(layer) for layer in pulled]
        sizes = [len(batch) for batch in batches]
        pull = pull_layers.submit(self._source, pulled, self._config_path, meters, sizes)
        _done_when_completed(pull, meters)
        pull.add_done_callback(lambda _: self._give_up(digests))
        return [pull]

    def convert(self, layers: dict[str, list[SourceLayer]]) -> dict[str, list[BatchRun]]:
        """Submit the conversion of each driver's layers (driver → layers), a task run per batch, the largest
        batches taking the slots first."""
        batches = {d: only(self._batches, {x.descriptor.digest for x in xs}) for d, xs in layers.items()}
        for driver_type, driver_batches in batches.items():
            for batch in driver_batches:
                self._slots.announce(slot_key(batch, driver_type), batch_size(batch))
        self.progress.conversions(layers)
        conversions: dict[str, list[BatchRun]] = {}
        for driver_type, driver_batches in batches.items():
            runs = conversions[driver_type] = []
            for batch in driver_batches:
                meters = [self.progress.convert_meter(layer, driver_type) for layer in batch]
                future = convert_layers.submit(
                    list(batch),
                    driver_type,
                    self._config_path,
                    self._slots,
                    self._budgets_of(batch, driver_type),
                    meters,
                )
                # One the task cache answered counts nothing, and is done all the same.
                _done_when_completed(future, meters)
                # One that ends without asking for a slot no longer holds smaller batches back.
                key = slot_key(batch, driver_type)
                future.add_done_callback(lambda _, key=key: self._slots.withdraw(key))
                runs.append(BatchRun(batch, future))
        return conversions

    def convert_again(self, layers: list[SourceLayer], driver_type: str) -> list[ConvertedLayer]:
        """Convert `layers` (one batch) in the flow's thread whatever Prefect's task cache holds (cached
        results whose blobs have since left the content store)."""
        refresh = convert_layers.with_options(refresh_cache=True)
        batch = tuple(layers)
        meters = [self.progress.convert_meter(layer, driver_type) for layer in batch]
        return refresh(
            layers, driver_type, self._config_path, self._slots, self._budgets_of(batch, driver_type), meters
        )

    def upload(self, driver_type: str, target: Reference, conversions: list[BatchRun]) -> None:
        """Upload each batch's converted blobs to `target` as soon as the batch is converted (a failed
        conversion's upload uploads nothing); the push of `driver_type` waits for them (`uploads_of`)."""
        self._uploads[driver_type] = [
            upload_layers.submit(
                list(run.layers),
                allow_failure(run.future),
                target,
                self._source,
                driver_type,
                self._config_path,
                [self.progress.upload_meter(layer, driver_type) for layer in run.layers],
            )
            for run in conversions
        ]

    def uploads_of(self, driver_type: str) -> list[allow_failure]:
        """The `wait_for` of the driver's push: its early uploads, done well or not (the push checks every
        blob, and uploads what an upload failed to)."""
        return [allow_failure(upload) for upload in self._uploads.get(driver_type, [])]

    def _give_up(self, digests: list[str]) -> None:
        for digest in digests:  # each announced pull ends with its batch's task run, well or not
            self._store.give_up(digest, "its pull-layers task run failed")

    def _budgets_of(self, batch: Batch, driver_type: str) -> tuple[tuple[ImageBudget, ...], ...]:
        """Per layer of `batch`, the budgets of the platform images listing it, shared by every layer of that
        image converted by this driver (each driver streams the layers itself)."""
        return tuple(
            tuple(
                self._budgets.setdefault((driver_type, label), ImageBudget(self._max_image_bytes, label))
                for label in self._images[layer.descriptor.digest]
            )
            for layer in batch
        )


def _done_when_completed(future: PrefectFuture[Any], meters: list[ByteMeter]) -> None:
    """Each layer of a batch's task run is done in the run's progress once the run completed (or the task
    cache answered it), whatever its meter counted."""
    for meter in meters:
        future.add_done_callback(RunProgress.done_when_completed(meter))
