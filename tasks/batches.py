"""Layers grouped into batches, so that a conversion's Prefect bookkeeping stays bounded whatever its layers.

Every task run costs the Prefect server a state record and a few events (tens of milliseconds of its CPU);
one per layer, driver and step made ~3,000 for a legal 500-layer image with three drivers and overflowed
the server's event queue (`Subscription queue is full`), hiding every other run's task states. So one task
run pulls, converts (per driver) or uploads (per driver) a batch of layers, one after another:

- a large layer (at least `OWN_RUN_BYTES`, compressed) keeps a batch of its own, since its work dwarfs a
  task run's cost and it should start at once; at most `MOST_OWN_RUNS` of them, the largest;
- the other layers share batches, as few as hold `BATCH_BYTES` or `BATCH_LAYERS` each and at most one per
  conversion slot (more would only wait for a slot), balanced by size (largest first into the lightest).

A run therefore has at most `MOST_OWN_RUNS + conversions` batches per step: at 500 tiny layers, on two CPUs,
two. The grouping is a pure function of the image's layers and the slot count, so a retried run groups the
same layers the same way and Prefect's task cache answers its batches (`tasks.convert`). The pulls are one
task run whatever the batches: `tasks.convert.pull_layers` pulls them side by side.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence

from accel.model import SourceLayer

MiB = 1 << 20
OWN_RUN_BYTES = 16 * MiB  # a layer this large converts for longer than its task run costs, by far
MOST_OWN_RUNS = 16
BATCH_BYTES = 16 * MiB
BATCH_LAYERS = 64  # per-layer costs (a builder process each, for Nydus) are still worth spreading

Batch = tuple[SourceLayer, ...]


def batch_layers(layers: Sequence[SourceLayer], conversions: int) -> list[Batch]:
    """`layers` (each once) in batches, the largest batch first, each batch's layers largest first."""
    by_size = sorted(layers, key=_size_then_digest, reverse=True)
    own = [layer for layer in by_size if layer.descriptor.size >= OWN_RUN_BYTES][:MOST_OWN_RUNS]
    shared = by_size[len(own) :]
    batches: list[list[SourceLayer]] = [[layer] for layer in own]
    if shared:
        total = sum(layer.descriptor.size for layer in shared)
        wanted = max(math.ceil(total / BATCH_BYTES), math.ceil(len(shared) / BATCH_LAYERS))
        count = max(1, min(len(shared), wanted, conversions))
        bins: list[list[SourceLayer]] = [[] for _ in range(count)]
        loads = [0] * count
        for layer in shared:  # largest first, each into the lightest batch so far
            lightest = loads.index(min(loads))
            bins[lightest].append(layer)
            loads[lightest] += layer.descriptor.size
        batches.extend(bins)
    return [tuple(batch) for batch in sorted(batches, key=batch_size, reverse=True)]


def only(batches: Iterable[Batch], digests: set[str]) -> list[Batch]:
    """The batches narrowed to the layers in `digests` (those some driver still has to convert), empty
    ones left out: every step of a run uses one grouping, so a conversion reads its layers in the order its
    batch's pull writes them."""
    narrowed = (tuple(layer for layer in batch if layer.descriptor.digest in digests) for batch in batches)
    return [batch for batch in narrowed if batch]


def batch_size(batch: Batch) -> int:
    return sum(layer.descriptor.size for layer in batch)


def batch_id(batch: Batch) -> str:
    """A short name of exactly these layers in this order (slot keys, cache keys)."""
    digests = "\n".join(layer.descriptor.digest for layer in batch)
    return hashlib.sha256(digests.encode()).hexdigest()[:16]


def _size_then_digest(layer: SourceLayer) -> tuple[int, str]:
    return layer.descriptor.size, layer.descriptor.digest  # ties by digest: one order on every run
