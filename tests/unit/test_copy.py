"""`accel.copy` and `publish.push_image` against the in-memory registry: what is sent, and in which order."""

from __future__ import annotations

import threading

import pytest

from accel import copy, progress, publish
from accel.copy import BlobCopy
from accel.oci import Descriptor
from accel.reference import Reference
from accel.registry import NotFound, RegistryError
from accel.registry.memory import MemoryRegistry
from accel.store import ContentStore
from tests.harness.relabel import SOURCE, build

TARGET = Reference.parse("registry.invalid/team/app-converted:v1-relabel")
ELSEWHERE = Reference.parse("other-registry.invalid/mirror/app:v1")


def blob(store: ContentStore, data: bytes) -> Descriptor:
    return Descriptor(media_type="application/octet-stream", digest=store.put_bytes(data), size=len(data))


# --- one blob --------------------------------------------------------------------------------------


def test_existing_blob_is_neither_mounted_nor_uploaded(store) -> None:
    registry = MemoryRegistry()
    desc = blob(store, b"present")
    registry.push_blob(TARGET, desc, store)
    registry.clear_calls()

    assert copy.copy_blob(registry, TARGET, desc, store, mount_from=[SOURCE.repository]) is BlobCopy.EXISTS
    assert registry.verbs() == [f"blob_exists {TARGET.name} {desc.digest}"]


def test_blob_in_a_candidate_repository_is_mounted(store) -> None:
    registry = MemoryRegistry()
    desc = blob(store, b"base layer")
    registry.push_blob(SOURCE, desc, store)
    registry.clear_calls()
    candidates = [TARGET.repository, "team/empty", SOURCE.repository, SOURCE.repository]

    assert copy.copy_blob(registry, TARGET, desc, store, mount_from=candidates) is BlobCopy.MOUNTED

    # The target's own repository is no candidate; each candidate is tried once, in order.
    assert registry.verbs("mount_blob", "push_blob") == [
        f"mount_blob {TARGET.name} {desc.digest}",
        f"mount_blob {TARGET.name} {desc.digest}",
    ]
    assert registry.has_blob(TARGET, desc.digest)


def test_blob_nowhere_is_uploaded_from_the_store(store) -> None:
    registry = MemoryRegistry()
    desc = blob(store, b"new")

    assert copy.copy_blob(registry, TARGET, desc, store, mount_from=["team/empty"]) is BlobCopy.UPLOADED
    assert registry.verbs() == [
        f"blob_exists {TARGET.name} {desc.digest}",
        f"mount_blob {TARGET.name} {desc.digest}",
        f"push_blob {TARGET.name} {desc.digest}",
    ]
    assert registry.has_blob(TARGET, desc.digest)


def test_stage_blob_mounts_from_the_source_repository_of_the_same_registry(store, tmp_path) -> None:
    registry = MemoryRegistry()
    desc = blob(store, b"cached layer")
    cache = SOURCE.with_tag("accel-cache")
    registry.push_blob(cache, desc, store)
    fresh = ContentStore(tmp_path / "fresh")

    assert copy.stage_blob(registry, TARGET, desc, fresh, source=cache) is BlobCopy.MOUNTED
    assert copy.stage_blob(registry, TARGET, desc, fresh, source=cache) is BlobCopy.EXISTS
    assert not fresh.exists(desc.digest)  # nothing downloaded


def test_stage_blob_from_another_registry_fetches_into_the_store(store, tmp_path) -> None:
    registry = MemoryRegistry()
    desc = blob(store, b"dictionary blob")
    registry.push_blob(ELSEWHERE, desc, store)
    fresh = ContentStore(tmp_path / "fresh")
    registry.clear_calls()

    assert copy.stage_blob(registry, TARGET, desc, fresh, source=ELSEWHERE) is BlobCopy.FETCHED

    assert fresh.exists(desc.digest)
    assert "mount_blob" not in {c.verb for c in registry.calls}  # mounts never cross registries
    assert not registry.has_blob(TARGET, desc.digest)  # the later push uploads it
    assert copy.copy_blob(registry, TARGET, desc, fresh) is BlobCopy.UPLOADED

    gone = blob(store, b"deleted meanwhile")
    with pytest.raises(NotFound):
        copy.stage_blob(registry, TARGET, gone, fresh, source=ELSEWHERE)


# --- several blobs ---------------------------------------------------------------------------------


class MeetingRegistry(MemoryRegistry):
    """Each upload waits until `meet` uploads are under way at once (a serial copy never gets there), and
    records the meter it counts into."""

    def __init__(self, meet: int) -> None:
        super().__init__()
        self.meeting = threading.Barrier(meet, timeout=10)
        self.meters: list[progress.ByteMeter | None] = []

    def push_blob(self, repo_ref: Reference, desc: Descriptor, store: ContentStore) -> None:
        self.meeting.wait()
        meter = progress.current()
        self.meters.append(meter)
        if meter is not None:
            meter.set(desc.size)  # as RegistryClient counts the bytes it sends
        super().push_blob(repo_ref, desc, store)


def test_blobs_are_copied_side_by_side_each_counting_into_the_callers_meter(store) -> None:
    registry = MeetingRegistry(meet=copy.COPY_CONCURRENCY)
    blobs = [blob(store, f"record {n}".encode()) for n in range(2 * copy.COPY_CONCURRENCY)]
    meter = progress.ByteMeter()

    with progress.metering(meter):
        done = copy.copy_blobs(registry, TARGET, [*blobs, blobs[0]], store)

    assert done == {b.digest: BlobCopy.UPLOADED for b in blobs}  # the repeated digest copied once
    assert all(registry.has_blob(TARGET, b.digest) for b in blobs)
    # Each copy had a share of the caller's meter (its context came along), and the shares add up.
    assert all(isinstance(m, progress.MeterShare) for m in registry.meters)
    assert meter.value == sum(b.size for b in blobs)


def test_a_failed_copy_among_several_is_raised(store) -> None:
    registry = MemoryRegistry()
    blobs = [blob(store, f"layer {n}".encode()) for n in range(6)]
    registry.fail("push_blob", target=blobs[2].digest)

    with pytest.raises(RegistryError, match="injected failure"):
        copy.copy_blobs(registry, TARGET, blobs, store)

    assert not registry.has_blob(TARGET, blobs[2].digest)


def test_meter_shares_add_up_and_a_retry_goes_back() -> None:
    meter, lock = progress.ByteMeter(total=300), threading.Lock()
    first, second = progress.MeterShare(meter, lock), progress.MeterShare(meter, lock)

    first.set(100)
    second.add(50)
    second.set(0)  # its retry starts over
    second.set(200)

    assert (first.value, second.value, meter.value) == (100, 200, 300)


# --- one image -------------------------------------------------------------------------------------


def push_order(registry: MemoryRegistry) -> list[str]:
    """The pushes in order, as 'blob' / 'manifest <tag or digest>' ."""
    order = []
    for call in registry.calls:
        if call.verb in ("push_blob", "mount_blob"):
            order.append("blob")
        elif call.verb == "push_manifest":
            order.append(f"manifest {call.target}")
    return order


def test_index_image_goes_blobs_then_children_then_the_tag(tmp_path) -> None:
    registry = MemoryRegistry(referrers_api=True)
    _source, image, store = build(tmp_path, index=True)
    registry.clear_calls()

    pushed = publish.push_image(registry, TARGET, image, store)

    children = [m.descriptor.digest for m in image.manifests]
    blobs = len(image.blobs())
    assert push_order(registry) == [
        *["blob"] * blobs,
        *(f"manifest {d}" for d in children),
        f"manifest {TARGET.tag}",
    ]
    assert pushed == image.root.with_(platform=None)
    assert registry.tags(TARGET) == {TARGET.tag: image.root.digest}
    assert registry.manifest(TARGET) == store.read_bytes(image.root.digest)


def test_single_manifest_image_is_pushed_once_under_its_tag(tmp_path) -> None:
    registry = MemoryRegistry()
    _source, image, store = build(tmp_path)
    registry.clear_calls()

    publish.push_image(registry, TARGET, image, store)

    assert push_order(registry) == [*["blob"] * len(image.blobs()), f"manifest {TARGET.tag}"]


@pytest.mark.parametrize("failing", ["push_blob", "child", "tag"])
def test_a_failure_before_the_tag_leaves_the_tag_absent(tmp_path, failing) -> None:
    registry = MemoryRegistry()
    _source, image, store = build(tmp_path, index=True)
    if failing == "push_blob":
        registry.fail("push_blob", target=image.blobs()[-1].digest)
    elif failing == "child":
        registry.fail("push_manifest", target=image.manifests[-1].descriptor.digest)
    else:
        registry.fail("push_manifest", target=TARGET.tag)

    with pytest.raises(RegistryError, match="injected failure"):
        publish.push_image(registry, TARGET, image, store)

    assert registry.tags(TARGET) == {}
    assert registry.manifest(TARGET.with_digest(image.root.digest)) is None


def test_blobs_of_the_source_repository_are_mounted_not_uploaded(tmp_path) -> None:
    registry = MemoryRegistry()
    _source, image, store = build(tmp_path, registry=registry)
    shared = image.manifests[0].layers[0]
    registry.push_blob(SOURCE, shared, store)  # e.g. a layer the converter passed through
    registry.clear_calls()

    publish.push_image(registry, TARGET, image, store, mount_from=[SOURCE.repository])

    mounted = {c.target for c in registry.calls if c.verb == "mount_blob"}
    uploaded = {c.target for c in registry.calls if c.verb == "push_blob"}
    assert shared.digest in mounted and shared.digest not in uploaded
    assert uploaded == {d.digest for d in image.blobs()} - {shared.digest}
    assert all(registry.has_blob(TARGET, d.digest) for d in image.blobs())


def test_a_second_push_uploads_nothing(tmp_path) -> None:
    registry = MemoryRegistry()
    _source, image, store = build(tmp_path, index=True)
    publish.push_image(registry, TARGET, image, store)
    registry.clear_calls()

    publish.push_image(registry, TARGET, image, store, mount_from=[SOURCE.repository])

    assert registry.verbs("push_blob", "mount_blob") == []
    assert registry.tags(TARGET) == {TARGET.tag: image.root.digest}


def test_blobs_known_present_are_not_asked_about_again(tmp_path) -> None:
    registry = MemoryRegistry()
    _source, image, store = build(tmp_path, registry=registry)
    hit = image.manifests[0].layers[0]
    registry.push_blob(TARGET, hit, store)  # a cache hit the lookup mounted moments ago
    registry.clear_calls()

    publish.push_image(registry, TARGET, image, store, mount_from=[SOURCE.repository], present=[hit.digest])

    asked = {c.target for c in registry.calls if c.verb in ("blob_exists", "mount_blob", "push_blob")}
    assert asked == {d.digest for d in image.blobs()} - {hit.digest}
    assert registry.tags(TARGET) == {TARGET.tag: image.root.digest}
