"""One pull task run for a run's batches (`tasks.convert.pull_layers`): the batches side by side, each one's
layers in order; a failing layer is named and the other batches are still pulled."""

from __future__ import annotations

import os
import uuid

import pytest

from accel import constants as mt
from accel import digest as dg
from accel.context import context_for
from accel.model import SourceLayer
from accel.oci import Descriptor
from accel.progress import ByteMeter
from accel.reference import Reference
from tests.harness import configs

pytestmark = [pytest.mark.registry]


def _pushed_layers(client, source: Reference, store, sizes: list[int]) -> list[SourceLayer]:
    layers = []
    for size in sizes:
        data = os.urandom(size)
        digest = store.put_bytes(data)
        descriptor = Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=digest, size=size)
        client.push_blob(source, descriptor, store)
        layers.append(SourceLayer(descriptor=descriptor, diff_id=digest))
    return layers


def test_one_task_run_pulls_every_batch_side_by_side(registry, client, source_store, tmp_path):
    """Called outside a task run: up to NAMED_LAYERS layers, which the run's log need not list."""
    from tasks.convert import pull_layers

    config = configs.write_config(tmp_path / "config.yaml", {registry.host: {}}, [configs.driver("estargz")])
    source = Reference.parse(f"{registry.host}/pulls/{uuid.uuid4().hex[:8]}:v1")
    layers = _pushed_layers(client, source, source_store, [3 << 20, 5000, 2 << 20])
    meters = [ByteMeter(layer.descriptor.size) for layer in layers]

    pulled = pull_layers.fn(source, layers, str(config), meters, [2, 1])

    assert pulled == layers  # in the order given, whatever finished first
    store = context_for(str(config)).store
    for layer in layers:
        data = store.path(layer.descriptor.digest).read_bytes()
        assert dg.of_bytes(data) == layer.descriptor.digest
    assert all(meter.finished and meter.value == meter.total for meter in meters)


def test_a_failing_layer_is_named_and_the_other_batches_are_still_pulled(
    registry, client, source_store, tmp_path
):
    from tasks.convert import pull_layers

    config = configs.write_config(tmp_path / "config.yaml", {registry.host: {}}, [configs.driver("estargz")])
    source = Reference.parse(f"{registry.host}/pulls/{uuid.uuid4().hex[:8]}:v1")
    good = _pushed_layers(client, source, source_store, [1 << 20, 4000])
    missing_digest = dg.of_bytes(b"never pushed")
    missing = SourceLayer(
        descriptor=Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=missing_digest, size=12),
        diff_id=missing_digest,
    )

    with pytest.raises(Exception) as caught:
        pull_layers.fn(source, [missing, good[0], good[1]], str(config), (), [1, 2])

    said = " ".join([str(caught.value), *getattr(caught.value, "__notes__", [])])
    assert dg.hex_of(missing_digest)[:12] in said  # the layer is named (its message, or a note)
    store = context_for(str(config)).store
    assert all(store.exists(layer.descriptor.digest) for layer in good)
    assert not store.exists(missing_digest)
