"""A conversion's Prefect bookkeeping is bounded whatever its layer count: an image of
converter.limits.max_layers (500) tiny layers converts with every driver in a few dozen task runs, and the
Prefect server's event queue never overflows (`Subscription queue is full`, which hid every other run's
task states)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from accel.reference import Reference
from accel.registry import HostConfig, RegistryClient
from accel.store import ContentStore
from tests.harness import configs, imagegen, pushing
from tests.harness import nydus as nh
from tests.harness.prefectapi import reporting_to
from tests.harness.proof import assert_proven
from tests.harness.services import PrefectServer
from tests.harness.taskruns import task_run_count

if TYPE_CHECKING:
    from flows.convert_image import ConversionResult

pytestmark = [pytest.mark.registry, pytest.mark.prefect, pytest.mark.nydus, nh.needs_builder]

DRIVERS = ["estargz", "zstdchunked", "nydus"]
# resolve, pull and convert batches, early uploads, a build and a push per driver, garbage collection: at 500
# layers, a few dozen (one per layer, step and driver made 3,507).
MAX_TASK_RUNS = 40


@pytest.fixture(scope="module")
def logged_prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A Prefect server of this module's own, whose log the tests read (the session's test harness keeps
    none); flows run in this process report to it."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    root = tmp_path_factory.mktemp("prefect-many-layers")
    server = PrefectServer(root)
    server.start()
    try:
        with reporting_to(server.api_url, {PREFECT_LOCAL_STORAGE_PATH: root / "results"}):
            yield server
    finally:
        server.stop()


def _tiny_layers(count: int) -> list[imagegen.TarBuilder]:
    layers = []
    for index in range(count):
        layer = imagegen.TarBuilder(auto_parents=True)
        layer.file(f"layers/{index:03d}.txt", f"layer {index} {uuid.uuid4()}\n".encode())
        layers.append(layer)
    return layers


def _convert_all_drivers(
    server: PrefectServer, registry_host: str, tmp_path, layers: list[imagegen.TarBuilder], repository: str
) -> tuple[int, ConversionResult]:
    """Push an image of `layers`, convert it with every driver, prove each target pushed: the number of task
    runs the server recorded, and the result."""
    from flows.convert_image import ConversionFailed, convert_image

    source = Reference.parse(f"{registry_host}/{repository}/{uuid.uuid4().hex[:8]}:v1")
    store = ContentStore(tmp_path / "source")
    image = imagegen.generate_image(layers, store)
    with RegistryClient({registry_host: HostConfig()}) as client:
        pushing.push(client, store, source, image)
        drivers = [configs.driver(d) for d in DRIVERS]
        config = configs.write_config(tmp_path / "config.yaml", {registry_host: {}}, drivers)

        started = time.monotonic()
        state = convert_image(source=str(source), config=str(config), return_state=True)
        seconds = time.monotonic() - started

        if state.is_completed():
            result = state.result()
        else:
            failure = state.result(raise_on_failure=False)
            assert isinstance(failure, ConversionFailed), state.message
            result = failure.result
        for target in result.targets:
            assert_proven(client, source, target.reference)
    runs = task_run_count(server.api_url, state.state_details.flow_run_id)
    layers_count = len(image.layers)
    print(f"\n{repository}: {layers_count} layers, {len(DRIVERS)} drivers: {runs} task runs, {seconds:.1f} s")
    return runs, result


def test_500_tiny_layers_convert_with_every_driver_in_a_bounded_number_of_task_runs(
    logged_prefect, registry, tmp_path
):
    runs, result = _convert_all_drivers(
        logged_prefect, registry.host, tmp_path, _tiny_layers(500), "many-layers"
    )

    # nydus-image 2.2.0 merges at most 255 layer blobs into one bootstrap (a u8 blob index: it panics at
    # `blob_idx < u8::MAX`), so Nydus is refused up front, by name; the other drivers are pushed.
    assert sorted(t.driver for t in result.targets) == ["estargz", "zstdchunked"]
    [refused] = result.failed
    assert refused.driver == "nydus"
    assert "has 500 layers, more than the 255 a nydus image holds" in refused.reason
    assert runs <= MAX_TASK_RUNS
    assert "queue is full" not in logged_prefect.log_path.read_text(errors="replace")


def test_the_standard_image_takes_fewer_task_runs_than_one_per_layer_and_driver(
    logged_prefect, registry, tmp_path
):
    layers = imagegen.standard_layers(64 * imagegen.KiB)
    runs, result = _convert_all_drivers(logged_prefect, registry.host, tmp_path, layers, "few-layers")

    assert sorted(t.driver for t in result.targets) == sorted(DRIVERS)
    # Small layers share their pull, conversion and upload task runs: fewer than one per layer, step and
    # driver made (29: 3 pulls, 9 conversions, 9 early uploads, resolve, 3 builds, 3 pushes, garbage).
    assert runs < 29
