"""converter.limits.max_image_size through the convert-image flow against a real registry: an image whose
layers are each under max_layer_size but together over max_image_size fails, naming the limit and the
image, pushes nothing and leaves no partial output in the work dir — also when some of its layers were
converted before (answered by the task cache, not streamed again)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from accel.reference import Reference
from accel.registry import RegistryClient
from accel.store import ContentStore
from tests.harness import configs, imagegen, pushing

pytestmark = [pytest.mark.registry, pytest.mark.prefect]

MiB = 1 << 20


def limited_config(path: Path, registry_host: str) -> Path:
    """estargz, 4 MiB per layer, 5 MiB per image."""
    configs.write_config(path, {registry_host: {}}, [configs.driver("estargz")])
    settings = yaml.safe_load(path.read_text())
    settings["converter"]["limits"] = {"max_layer_size": "4MiB", "max_image_size": "5MiB"}
    path.write_text(yaml.safe_dump(settings))
    return path


def layer(seed: int) -> imagegen.TarBuilder:
    """3 MiB of random bytes: under the layer limit, two of them over the image limit."""
    return imagegen.TarBuilder(auto_parents=True).file_from_generator(f"data/{seed}.bin", 3 * MiB, seed)


def push(client: RegistryClient, store: ContentStore, host: str, layers: list[int]) -> Reference:
    image = imagegen.generate_image([layer(seed) for seed in layers], store)
    ref = Reference.parse(f"{host}/limits/{uuid.uuid4().hex[:10]}:v1")
    return ref.with_digest(pushing.push(client, store, ref, image))


def assert_refused(state, source: Reference, client: RegistryClient, work: Path) -> None:
    assert state.is_failed(), state
    message = state.message or ""
    assert "converter.limits.max_image_size" in message, message
    assert f"{source.registry}/{source.repository}@{source.digest}" in message, message  # the image
    assert "max_layer_size" not in message and "max_expansion_ratio" not in message
    assert client.list_tags(source) == ["v1"]  # no target tag pushed
    ingest = work / "content" / "ingest"
    assert list(ingest.iterdir()) == []  # the refused layer's partial outputs are gone


def test_layers_under_the_layer_limit_over_the_image_limit_fail_the_run(
    prefect_api, registry, client, source_store, tmp_path
):
    from flows.convert_image import convert_image

    config = limited_config(tmp_path / "config.yaml", registry.host)
    source = push(client, source_store, registry.host, [11, 12])
    state = convert_image(source=str(source), config=str(config), return_state=True)
    assert_refused(state, source, client, tmp_path / "work")


def test_layers_converted_before_still_count_toward_the_image(
    prefect_api, registry, client, source_store, tmp_path
):
    """The first image (one layer) converts; the second lists that layer (a task-cache hit, not streamed
    again) and one more: alone, the new layer streams under the image limit; together they are over it."""
    from flows.convert_image import convert_image

    config = limited_config(tmp_path / "config.yaml", registry.host)
    small = push(client, source_store, registry.host, [21])
    assert convert_image(source=str(small), config=str(config), return_state=True).is_completed()

    source = push(client, source_store, registry.host, [21, 22])
    state = convert_image(source=str(source), config=str(config), return_state=True)
    assert_refused(state, source, client, tmp_path / "work")
    # Sent again (acceld's retry of a FAILED run): still refused, by the sizes recorded when they streamed.
    again = convert_image(source=str(source), config=str(config), return_state=True)
    assert_refused(again, source, client, tmp_path / "work")


def test_an_image_over_max_layers_fails_before_any_layer_is_pulled(
    prefect_api, registry, client, source_store, tmp_path
):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.convert_image import convert_image

    config = configs.write_config(tmp_path / "config.yaml", {registry.host: {}}, [configs.driver("estargz")])
    settings = yaml.safe_load(config.read_text())
    settings["converter"]["limits"] = {"max_layers": 3}
    config.write_text(yaml.safe_dump(settings))
    image = imagegen.generate_image(
        [imagegen.TarBuilder(auto_parents=True).file(f"f{n}", b"x") for n in range(4)], source_store
    )
    source = Reference.parse(f"{registry.host}/limits/{uuid.uuid4().hex[:10]}:v1")
    source = source.with_digest(pushing.push(client, source_store, source, image))

    state = convert_image(source=str(source), config=str(config), return_state=True)
    assert state.is_failed(), state
    assert "has 4 layers, more than 3 (converter.limits.max_layers)" in (state.message or ""), state.message
    with get_client(sync_client=True) as prefect:
        runs = prefect.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    assert not [r.name for r in runs if r.name.startswith(("pull ", "convert "))]  # nothing per layer started
    assert client.list_tags(source) == ["v1"]
