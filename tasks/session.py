"""One flow run's conversion session: the state its layer task runs share, opened and closed by the flow.

A `convert-image` run pulls each layer it misses once, converts it with every driver in parallel task runs
(threads of the flow's process) and, for some drivers, uploads each converted blob to its target early.
For the length of the run those task runs share state, and the session owns all of it:

- the conversion slots (`tasks.slots`): at most `layer_conversions()` at once, the largest layers first;
- the image budgets (converter.limits.max_image_size, `tasks.limits`), one per (driver, platform image);
- the pulls it announced to the content store (`ContentStore.expect`/`give_up`), which conversions read
  behind (`ContentStore.open_following`);
- the early uploads, which the push of their driver waits for;
- the run's live progress (`tasks.progress`): a byte meter per layer task run, published to the run's
  artifacts and to a watcher in this process.

The session submits those task runs itself and passes each what it needs as parameters (the slots, the
layer's budgets): no task looks anything up by flow run id. The rules of order live here: every conversion
is announced before the first is submitted, and withdrawn when its task run ends (one answered by the task
cache never asks for a slot); on a clean exit closing waits for the early uploads, so none outlives the run.
After a failure (a failed pull, converter.limits.timeout) it does not wait: an upload may be waiting on a
conversion that reads behind a stalled pull.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from prefect import allow_failure
from prefect.futures import PrefectFuture

from accel.compression import ImageBudget
from accel.context import context_for
from accel.drivers import ConvertedLayer
from accel.model import SourceImage, SourceLayer
from accel.reference import Reference
from tasks.convert import convert_layer, layer_conversions, pull_layer, slot_key, upload_layer
from tasks.limits import images_of_layers
from tasks.progress import RunProgress
from tasks.slots import ConversionSlots


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

    def pull(self, layers: Iterable[SourceLayer]) -> dict[str, PrefectFuture[SourceLayer]]:
        """Submit each layer's pull (digest → its run). Conversions need not wait for them: each reads its
        layer while the pull writes it, and ends only once the pull has committed the blob, digest
        verified. A pull that ends without the blob fails the conversions reading it."""
        pulls: dict[str, PrefectFuture[SourceLayer]] = {}
        for layer in layers:
            digest = layer.descriptor.digest
            self._store.expect(digest)  # before the run exists: a conversion may start first
            meter = self.progress.pull_meter(layer)
            pull = pull_layer.submit(self._source, layer, self._config_path, meter)
            pull.add_done_callback(RunProgress.done_when_completed(meter))
            pull.add_done_callback(
                lambda _, digest=digest: self._store.give_up(digest, "its pull-layer task run failed")
            )
            pulls[digest] = pull
        return pulls

    def convert(self, layers: dict[str, list[SourceLayer]]) -> dict[str, list[PrefectFuture[ConvertedLayer]]]:
        """Submit the conversion of each layer with each driver (driver → layers; the futures in the same
        order), the largest layers taking the slots first."""
        for driver_type, driver_layers in layers.items():
            for layer in driver_layers:
                self._slots.announce(slot_key(layer, driver_type), layer.descriptor.size)
        self.progress.conversions(layers)
        conversions: dict[str, list[PrefectFuture[ConvertedLayer]]] = {}
        for driver_type, driver_layers in layers.items():
            futures = conversions[driver_type] = []
            for layer in driver_layers:
                meter = self.progress.convert_meter(layer, driver_type)
                future = convert_layer.submit(
                    layer,
                    driver_type,
                    self._config_path,
                    self._slots,
                    self._budgets_of(layer, driver_type),
                    meter,
                )
                # One the task cache answered counts nothing, and is done all the same.
                future.add_done_callback(RunProgress.done_when_completed(meter))
                # One that ends without asking for a slot no longer holds smaller layers back.
                key = slot_key(layer, driver_type)
                future.add_done_callback(lambda _, key=key: self._slots.withdraw(key))
                futures.append(future)
        return conversions

    def convert_again(self, layer: SourceLayer, driver_type: str) -> ConvertedLayer:
        """Convert `layer` in the flow's thread whatever Prefect's task cache holds (a cached result whose
        blob has since left the content store)."""
        refresh = convert_layer.with_options(refresh_cache=True)
        meter = self.progress.convert_meter(layer, driver_type)
        return refresh(
            layer, driver_type, self._config_path, self._slots, self._budgets_of(layer, driver_type), meter
        )

    def upload(
        self,
        driver_type: str,
        target: Reference,
        layers: list[SourceLayer],
        conversions: list[PrefectFuture[ConvertedLayer]],
    ) -> None:
        """Upload each converted blob to `target` as soon as its conversion ends (a failed conversion's
        upload uploads nothing); the push of `driver_type` waits for them (`uploads_of`)."""
        self._uploads[driver_type] = [
            upload_layer.submit(
                layer,
                allow_failure(conversion),
                target,
                self._source,
                driver_type,
                self._config_path,
                self.progress.upload_meter(layer, driver_type),
            )
            for layer, conversion in zip(layers, conversions, strict=True)
        ]

    def uploads_of(self, driver_type: str) -> list[allow_failure]:
        """The `wait_for` of the driver's push: its early uploads, done well or not (the push checks every
        blob, and uploads what an upload failed to)."""
        return [allow_failure(upload) for upload in self._uploads.get(driver_type, [])]

    def _budgets_of(self, layer: SourceLayer, driver_type: str) -> tuple[ImageBudget, ...]:
        """The budgets of the platform images listing `layer`, shared by every layer of that image converted
        by this driver (each driver streams the layers itself)."""
        return tuple(
            self._budgets.setdefault((driver_type, label), ImageBudget(self._max_image_bytes, label))
            for label in self._images[layer.descriptor.digest]
        )
