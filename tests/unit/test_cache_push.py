"""`cache.push_cache` against the in-memory registry: races staged deterministically, no waiting."""

from __future__ import annotations

import threading

import pytest

from accel import cache
from accel import constants as mt
from accel import digest as dg
from accel.drivers.base import ConvertedLayer
from accel.oci import Descriptor, Manifest, Platform
from accel.reference import Reference
from accel.registry.memory import MemoryRegistry
from accel.store import ContentStore
from tests.harness.relabel import Relabel, RelabelOptions

REF = Reference.parse("registry.invalid/team/app:accel-cache")
AMD64 = Platform(os="linux", architecture="amd64")
VERSION = "v1"
DRIVER = Relabel(RelabelOptions())


def source_digest(n: int) -> str:
    return dg.of_bytes(f"source layer {n}".encode())


def records(store: ContentStore, *layers: int) -> list[cache.PlatformRecords]:
    """This conversion's records for source layers `layers` (their converted blobs in `store`)."""
    entries = []
    for n in layers:
        data = f"converted layer {n}".encode()
        converted = ConvertedLayer(
            source=Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=source_digest(n), size=10),
            descriptor=Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=store.put_bytes(data), size=len(data)),
            diff_id=dg.of_bytes(data),
        )
        entries.append(cache.cache_entry(DRIVER, converted, store))
    return [cache.PlatformRecords(platform=AMD64, entries=tuple(entries))]


def push(registry: MemoryRegistry, store: ContentStore, *layers: int, **kwargs) -> Descriptor:
    return cache.push_cache(
        registry, REF, store, records(store, *layers), version=VERSION, size=200, **kwargs
    )


def recorded(registry: MemoryRegistry) -> list[int]:
    """The source layers the cache at REF records, most recently used first."""
    raw = registry.manifest(REF)
    assert raw is not None
    by_digest = {source_digest(n): n for n in range(20)}
    return [
        by_digest[layer.annotation(mt.ACCEL_LAYER_SOURCE_DIGEST) or ""]
        for layer in Manifest.parse(raw).layers
    ]


def test_a_writer_that_pushed_while_we_merged_is_merged_in(store) -> None:
    registry = MemoryRegistry()
    push(registry, store, 0)
    # The other writer lands between our read and our check of the root.
    registry.before("resolve", lambda: push(registry, store, 1), target=REF.tag)

    push(registry, store, 2)

    assert recorded(registry) == [2, 1, 0]
    tag_pushes = [c for c in registry.calls if c.verb == "push_manifest" and c.target == REF.tag]
    assert len(tag_pushes) == 3  # 0, the other writer's 1, then ours once (the stale merge was never pushed)


def test_a_root_replaced_right_after_our_push_is_merged_again(store) -> None:
    registry = MemoryRegistry()
    push(registry, store, 0)
    stale = registry.manifest(REF)
    assert stale is not None
    stale_blob_owner = records(store, 1)  # the other writer's layer blob, in the registry too

    def other_process_overwrites() -> None:
        # Another process checked the root before our push and pushes its merge (of the old root) after it.
        for entry in stale_blob_owner[0].entries:
            registry.push_blob(REF, entry.layer, store)
        update = cache.plan_update(
            cache.fetch_cache(registry, REF.with_digest(dg.of_bytes(stale)), store, VERSION, [AMD64]),
            stale_blob_owner,
            size=200,
            version=VERSION,
            store=store,
        )
        for blob in update.blobs:
            registry.push_blob(REF, blob, store)
        registry.push_manifest(REF, store.read_bytes(update.root.digest), update.root.media_type)

    # Our resolves of the tag: the check before our push, then the read-back after it.
    registry.before("resolve", other_process_overwrites, target=REF.tag, skip=1)

    pushed = push(registry, store, 2)

    assert recorded(registry) == [2, 1, 0]
    assert registry.tags(REF)[REF.tag] == pushed.digest


def test_a_cache_that_keeps_changing_gives_up_after_the_attempts(store) -> None:
    registry = MemoryRegistry()
    push(registry, store, 0)
    others = iter(range(10, 20))
    busy = threading.Event()

    def another_writer() -> None:
        if busy.is_set():  # the other writer's own resolve
            return
        busy.set()
        try:
            push(registry, store, next(others))
        finally:
            busy.clear()

    registry.before("resolve", another_writer, target=REF.tag, times=100)

    with pytest.raises(cache.CacheConflict):
        push(registry, store, 2, attempts=3)

    assert recorded(registry) == [12, 11, 10, 0]  # three other writers won, one per attempt


def test_writers_of_one_process_take_turns_and_all_records_stay(store) -> None:
    registry = MemoryRegistry()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            push(registry, store, n)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert sorted(recorded(registry)) == list(range(6))
    root_pushes = [c for c in registry.calls if c.verb == "push_manifest" and c.target == REF.tag]
    assert len(root_pushes) == 6  # one root push each: no writer ever had to merge again


def test_records_whose_blobs_are_gone_are_dropped(store) -> None:
    registry = MemoryRegistry()
    push(registry, store, 0, 1)
    lost = records(store, 1)[0].entries[0].layer.digest
    registry.delete_blob(REF, lost)
    # The registry refuses a manifest naming a blob it lacks (MANIFEST_BLOB_UNKNOWN); our own record
    # would upload it again, so only a record kept from the old cache can lose its blob.
    push(registry, store, 2)

    assert recorded(registry) == [2, 0]


def test_a_merge_that_changes_nothing_reads_the_cache_once_and_pushes_nothing(store) -> None:
    registry = MemoryRegistry()
    first = push(registry, store, 0, 1)
    registry.calls.clear()

    # A warm run that used the most recent records, in their order: the merge is the cache as it is.
    again = push(registry, store, 0, 1)

    assert again.digest == first.digest
    assert [str(c) for c in registry.calls] == [f"fetch_manifest {REF.name} {REF.tag}"]


def test_a_merge_checks_only_the_blobs_the_cache_does_not_list(store) -> None:
    registry = MemoryRegistry()
    push(registry, store, 0, 1)
    registry.calls.clear()

    push(registry, store, 2, 0)

    assert recorded(registry) == [2, 0, 1]
    new_layer = records(store, 2)[0].entries[0].layer.digest
    checked = {c.target for c in registry.calls if c.verb in ("blob_exists", "mount_blob", "push_blob")}
    listed = {e.layer.digest for e in records(store, 0, 1)[0].entries}
    assert new_layer in checked and not checked & listed


def test_a_hit_is_mounted_into_a_fresh_target_repository_with_one_request_per_blob(store, tmp_path) -> None:
    from accel.model import SourceLayer

    registry = MemoryRegistry()
    push(registry, store, 0, 1)
    target = Reference.parse("registry.invalid/team/fresh:v1-relabel")
    fresh = ContentStore(tmp_path / "fresh")  # another machine
    found = cache.fetch_cache(registry, REF, fresh, VERSION, [AMD64])
    layers = [
        SourceLayer(
            descriptor=Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=source_digest(n), size=10),
            diff_id=source_digest(n),
        )
        for n in (0, 1)
    ]
    registry.calls.clear()

    restored = cache.restore_hits(registry, found, DRIVER, layers, target, fresh)

    assert set(restored.hits) == {source_digest(0), source_digest(1)}
    converted = [restored.hits[source_digest(n)].descriptor.digest for n in (0, 1)]
    assert [(c.verb, c.target) for c in registry.calls] == [("mount_blob", d) for d in converted]
    assert all(registry.blob_exists(target, d) for d in converted)
    assert restored.in_target == frozenset(converted)  # so the push does not ask about them again
