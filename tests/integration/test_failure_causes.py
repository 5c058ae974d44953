"""A failing conversion names its real cause: the first failing task's error, never `UnfinishedRun`."""

from __future__ import annotations

import json
import uuid

import pytest

from accel import constants as mt
from accel.oci import Descriptor
from accel.reference import Reference
from accel.registry import BlobSizeMismatch
from tests.harness import configs, imagegen

pytestmark = [pytest.mark.registry, pytest.mark.prefect]


def test_a_failed_pull_is_the_flow_failure(prefect_api, registry, client, source_store, tmp_path):
    """A manifest whose layer descriptor states the wrong size: the pull fails (a complete read of the wrong
    size is permanent), and the flow's failure is that error, once, with its message."""
    from flows.convert_image import convert_image

    config = configs.write_config(tmp_path / "config.yaml", {registry.host: {}}, [configs.driver("estargz")])
    image = imagegen.standard_image(source_store, big_file_size=1024)
    manifest = json.loads(image.manifest_raw)
    manifest["layers"][0]["size"] += 7
    raw = json.dumps(manifest).encode()
    source = Reference.parse(f"{registry.host}/causes/{uuid.uuid4().hex[:8]}:v1")
    for layer in image.layers:
        client.push_blob(source, layer, source_store)
    client.push_blob(source, Descriptor.of(mt.OCI_CONFIG, image.config_raw), source_store)
    client.push_manifest(source, raw, mt.OCI_MANIFEST)

    state = convert_image(source=str(source), config=str(config), return_state=True)
    assert state.is_failed()
    assert "UnfinishedRun" not in (state.message or "")
    assert "descriptor says" in (state.message or "")
    with pytest.raises(BlobSizeMismatch, match="descriptor says"):
        state.result()
