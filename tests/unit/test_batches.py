"""How a run groups its layers into batches (tasks.batches), and what its batch task runs are named."""

from __future__ import annotations

import hashlib

from accel.model import SourceLayer
from accel.oci import Descriptor
from tasks.batches import (
    BATCH_LAYERS,
    MOST_OWN_RUNS,
    OWN_RUN_BYTES,
    batch_id,
    batch_layers,
    batch_size,
    only,
)
from tasks.policy import batch_run_name, layers_in_run_name

KiB = 1 << 10
MiB = 1 << 20


def layer(size: int, seed: int) -> SourceLayer:
    digest = "sha256:" + hashlib.sha256(f"{seed}".encode()).hexdigest()
    media_type = "application/vnd.oci.image.layer.v1.tar+gzip"
    return SourceLayer(descriptor=Descriptor(media_type=media_type, digest=digest, size=size), diff_id=digest)


def digests(batches) -> list[list[str]]:
    return [[x.descriptor.digest for x in batch] for batch in batches]


def test_a_small_image_is_one_batch():
    layers = [layer(300 * KiB, 0), layer(2 * KiB, 1), layer(40 * KiB, 2)]

    [batch] = batch_layers(layers, conversions=2)

    assert sorted(batch, key=lambda x: x.descriptor.digest) == sorted(
        layers, key=lambda x: x.descriptor.digest
    )
    assert [x.descriptor.size for x in batch] == [300 * KiB, 40 * KiB, 2 * KiB]  # largest first


def test_large_layers_keep_their_own_batch_the_largest_first():
    small = [layer(10 * KiB, i) for i in range(5)]
    large = [layer(OWN_RUN_BYTES, 10), layer(3 * OWN_RUN_BYTES, 11)]

    batches = batch_layers([*small, *large], conversions=2)

    assert batches[0] == (large[1],) and batches[1] == (large[0],)
    assert sorted(x.descriptor.digest for b in batches[2:] for x in b) == sorted(
        x.descriptor.digest for x in small
    )


def test_500_tiny_layers_make_one_batch_per_conversion_slot_balanced_by_size():
    layers = [layer(1 * KiB + i, i) for i in range(500)]

    batches = batch_layers(layers, conversions=2)

    assert len(batches) == 2 and sorted(len(b) for b in batches) == [250, 250]
    assert abs(batch_size(batches[0]) - batch_size(batches[1])) <= 500
    assert len(batch_layers(layers, conversions=64)) == 500 // BATCH_LAYERS + 1  # no more than they need


def test_batches_are_bounded_whatever_the_layer_count_and_sizes():
    layers = [layer(OWN_RUN_BYTES + i, i) for i in range(500)]

    batches = batch_layers(layers, conversions=4)

    assert len(batches) == MOST_OWN_RUNS + 4
    assert sum(len(b) for b in batches) == 500


def test_the_grouping_is_the_same_whatever_the_order_layers_come_in():
    layers = [layer((i * 7919) % 5000, i) for i in range(100)]

    assert batch_layers(layers, 3) == batch_layers(list(reversed(layers)), 3)


def test_a_step_uses_the_grouping_narrowed_to_its_layers():
    layers = [layer(OWN_RUN_BYTES, 0), layer(5, 1), layer(4, 2), layer(3, 3)]
    batches = batch_layers(layers, conversions=1)

    narrowed = only(batches, {layers[2].descriptor.digest, layers[3].descriptor.digest})

    assert digests(narrowed) == [[layers[2].descriptor.digest, layers[3].descriptor.digest]]
    assert batch_id(narrowed[0]) != batch_id(batches[1])  # another batch, another cache key


def test_run_names_say_which_layers_a_batch_holds():
    one = [layer(1, 0)]
    many = [layer(1, i) for i in range(5)]
    short = [x.descriptor.digest[:19] for x in many]

    assert batch_run_name("convert", one, "estargz") == f"convert {one[0].descriptor.digest[:19]} (estargz)"
    assert batch_run_name("pull", many[:2]) == f"pull 2 layers: {short[0]}, {short[1]}"
    assert batch_run_name("upload", many, "nydus") == (
        f"upload 5 layers: {short[0]}, {short[1]}, {short[2]} and 2 more (nydus)"
    )
    assert [layers_in_run_name(batch_run_name("convert", x, "zstdchunked")) for x in (one, many)] == [1, 5]
