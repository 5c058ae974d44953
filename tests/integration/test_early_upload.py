"""Converted blobs go to the target while later layers still convert; the push finds them there, and the
tag is still written after every blob."""

from __future__ import annotations

import uuid

import pytest

from accel.oci import Manifest
from accel.reference import Reference
from accel.registry import HostConfig, RegistryClient
from accel.store import ContentStore
from tests.harness import configs, imagegen, pushing
from tests.harness.taskruns import completed_task_runs, named_layers

pytestmark = [pytest.mark.registry, pytest.mark.prefect]


def test_each_converted_blob_goes_up_once_by_an_upload_task_and_the_tag_after_all(
    prefect_api, fault_proxy, tmp_path
):
    from flows.convert_image import convert_image

    store = ContentStore(tmp_path / "source")
    image = imagegen.generate_image(imagegen.standard_layers(64 << 10), store)
    source = Reference.parse(f"{fault_proxy.host}/early/{uuid.uuid4().hex[:8]}:v1")
    with RegistryClient({fault_proxy.host: HostConfig()}) as client:
        pushing.push(client, store, source, image)
        config = configs.write_config(
            tmp_path / "config.yaml", {fault_proxy.host: {}}, [configs.driver("zstdchunked")]
        )
        fault_proxy.clear()

        state = convert_image(source=str(source), config=str(config), return_state=True)

        assert state.is_completed(), state.message
        [target] = state.result().targets
        _, raw = client.fetch_manifest(Reference.parse(target.reference))
        manifest = Manifest.parse(raw)
    uploads = completed_task_runs(state.state_details.flow_run_id, "upload ")
    assert all(upload.endswith(" (zstdchunked)") for upload in uploads)
    assert sorted(named_layers(uploads)) == sorted(layer.digest[:19] for layer in image.layers)
    hits = list(fault_proxy.hits)
    blob_puts = [i for i, h in enumerate(hits) if h.method == "PUT" and "/blobs/uploads/" in h.path]
    # Each new blob once (the push found the early uploads there); the rest is mounted from the source.
    in_source = set(image.blobs)
    new_blobs = {d.digest for d in [*manifest.layers, manifest.config]} - in_source
    assert len(blob_puts) == len(new_blobs) >= len(manifest.layers)
    tag = "/manifests/v1-zstdchunked"
    [tag_put] = [i for i, h in enumerate(hits) if h.method == "PUT" and h.path.endswith(tag)]
    assert tag_put > max(blob_puts)


def test_a_layout_target_gets_no_early_uploads(prefect_api, registry, tmp_path):
    from flows.convert_image import convert_image

    store = ContentStore(tmp_path / "source")
    _, source = pushing.push_standard_image(registry.host, store, "early")
    drivers = [configs.driver("zstdchunked")]
    config = configs.write_config(tmp_path / "config.yaml", {registry.host: {}}, drivers)

    state = convert_image(
        source=str(source), config=str(config), target=f"oci:{tmp_path / 'layout'}:z", return_state=True
    )

    assert state.is_completed(), state.message
    names = completed_task_runs(state.state_details.flow_run_id)
    assert any(n.startswith("convert ") for n in names)
    assert not [n for n in names if n.startswith("upload ")]
    assert (tmp_path / "layout" / "index.json").exists()
