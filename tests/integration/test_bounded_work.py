"""Bounded work per image (issue 22's acceptance), with the default limits: a layer of 1,000,000 empty files
(7 MB of gzip, under the expansion-ratio limit) and an image of 10,000 tiny layers each fail within 60 s,
naming the limit (converter.limits.max_entries, converter.limits.max_layers), with the run's peak RSS under
500 MiB and no `queue is full` line in the Prefect server's log.

The convert-image flow runs in a process of its own (`tests.harness.measuredrun`), as acceld's runner starts
it, so its peak RSS is the run's alone; against a Prefect server of this module whose output is a log file.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from accel.reference import Reference
from accel.registry import RegistryClient
from accel.store import ContentStore
from tests.harness import configs, imagegen, measuredrun, pushing, services

pytestmark = [pytest.mark.registry, pytest.mark.prefect]

MiB = 1 << 20
PEAK_RSS = 500 * MiB
WITHIN = 60  # seconds


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.PrefectServer]:
    server = services.PrefectServer(tmp_path_factory.mktemp("bounded-prefect"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def million_entries(registry, client: RegistryClient, source_store: ContentStore) -> tuple[Reference, str]:
    """The image of one layer of 1,000,000 entries, pushed; its reference and the layer's digest."""
    image = imagegen.generate_image([imagegen.ManyEntriesLayer(1_000_000)], source_store)
    assert image.layers[0].size < 10 * MiB  # 512 MB of tar headers
    ref = Reference.parse(f"{registry.host}/bounded/{uuid.uuid4().hex[:10]}:v1")
    return ref.with_digest(pushing.push(client, source_store, ref, image)), image.layers[0].digest


def _run(
    prefect: services.PrefectServer, source: Reference, config: Path, home: Path
) -> measuredrun.MeasuredRun:
    return measuredrun.run(str(source), config, prefect.client_env(home))


def _image(source: Reference) -> str:
    return f"{source.registry}/{source.repository}@{source.digest}"


def _no_queue_overflow(prefect: services.PrefectServer, run: measuredrun.MeasuredRun) -> None:
    assert "queue is full" not in prefect.log_path.read_text(errors="replace")
    assert "queue is full" not in run.output  # the run's own event and log workers


@pytest.mark.parametrize("driver_type", ["estargz", "zstdchunked", "nydus"])
def test_a_layer_of_a_million_entries_fails_within_a_minute_naming_max_entries(
    prefect_server, million_entries, client, tmp_path, driver_type
):
    source, layer = million_entries
    config = configs.write_config(
        tmp_path / "config.yaml", {source.registry: {}}, [configs.driver(driver_type)]
    )
    run = _run(prefect_server, source, config, tmp_path / "home")

    assert run.state == "Failed", run
    assert f"layer {layer} of {_image(source)} (linux/amd64) has more than " in run.message, run.message
    assert " tar entries (converter.limits.max_entries)" in run.message, run.message
    assert run.seconds < WITHIN, run
    # The run's process, and with Nydus its builder as well: together under the bound.
    assert run.peak_rss + run.peak_child_rss < PEAK_RSS, run
    assert client.list_tags(source) == ["v1"]  # nothing pushed
    _no_queue_overflow(prefect_server, run)


def test_an_image_of_ten_thousand_layers_fails_within_a_minute_naming_max_layers(
    prefect_server, registry, client, source_store, tmp_path
):
    image = imagegen.tiny_layers_image(10_000, source_store)
    source = Reference.parse(f"{registry.host}/bounded/{uuid.uuid4().hex[:10]}:v1")
    source = source.with_digest(pushing.push_many_layers(registry, client, source_store, source, image))
    config = configs.write_config(
        tmp_path / "config.yaml", {source.registry: {}}, [configs.driver("estargz")]
    )
    run = _run(prefect_server, source, config, tmp_path / "home")

    assert run.state == "Failed", run
    assert (
        f"{_image(source)} (linux/amd64) has 10,000 layers, more than 500 (converter.limits.max_layers)"
        in run.message
    )
    assert run.seconds < WITHIN, run
    assert run.peak_rss < PEAK_RSS, run
    assert client.list_tags(source) == ["v1"]
    _no_queue_overflow(prefect_server, run)
