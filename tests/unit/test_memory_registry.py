"""MemoryRegistry: the in-memory registry the engine's unit tests run against behaves like distribution."""

from __future__ import annotations

import pytest

from accel import constants as mt
from accel import digest as dg
from accel.errors import DigestMismatch
from accel.oci import Descriptor, canonical_json
from accel.reference import Reference
from accel.registry import BlobSizeMismatch, NotFound, Registry, RegistryClient, RegistryError
from accel.registry.memory import Call, MemoryRegistry
from accel.store import ContentStore

REPO = Reference.parse("registry.invalid/team/app:v1")
OTHER = Reference.parse("registry.invalid/team/other:v1")


def stored(store: ContentStore, data: bytes, media_type: str = mt.OCI_LAYER_GZIP) -> Descriptor:
    return Descriptor(media_type=media_type, digest=store.put_bytes(data), size=len(data))


def manifest_of(config: Descriptor, layers: list[Descriptor], **extra: object) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": config.to_dict(),
        "layers": [d.to_dict() for d in layers],
    }
    return canonical_json(doc | extra)


def test_both_clients_implement_every_verb() -> None:
    assert isinstance(MemoryRegistry(), Registry)
    with RegistryClient() as client:
        assert isinstance(client, Registry)


def test_blob_round_trip_is_verified_and_recorded(store: ContentStore, tmp_path) -> None:
    registry = MemoryRegistry()
    desc = stored(store, b"layer bytes")
    assert registry.blob_exists(REPO, desc.digest) is False

    registry.push_blob(REPO, desc, store)

    other = ContentStore(tmp_path / "other")
    assert registry.fetch_blob(REPO, desc, other).read_bytes() == b"layer bytes"
    assert registry.fetch_blob_bytes(REPO, desc) == b"layer bytes"
    assert registry.verbs() == [
        f"blob_exists registry.invalid/team/app {desc.digest}",
        f"push_blob registry.invalid/team/app {desc.digest}",
        f"fetch_blob registry.invalid/team/app {desc.digest}",
        f"fetch_blob_bytes registry.invalid/team/app {desc.digest}",
    ]


def test_tampered_blob_is_detected_on_fetch_and_never_stored(store: ContentStore, tmp_path) -> None:
    registry = MemoryRegistry()
    desc = stored(store, b"original")
    registry.push_blob(REPO, desc, store)
    registry.replace_blob(REPO, desc.digest, b"tampered")  # same length: only the digest can tell
    fresh = ContentStore(tmp_path / "fresh")

    with pytest.raises(DigestMismatch):
        registry.fetch_blob(REPO, desc, fresh)
    with pytest.raises(DigestMismatch):
        registry.fetch_blob_bytes(REPO, desc)
    assert not fresh.exists(desc.digest)

    registry.replace_blob(REPO, desc.digest, b"longer than the descriptor")
    with pytest.raises(BlobSizeMismatch):
        registry.fetch_blob_bytes(REPO, desc)


def test_push_refuses_a_store_file_that_does_not_match_its_descriptor(store: ContentStore) -> None:
    registry = MemoryRegistry()
    desc = stored(store, b"abc")
    with pytest.raises(BlobSizeMismatch):
        registry.push_blob(REPO, desc.with_(size=4), store)

    store.path(desc.digest).write_bytes(b"abd")  # corrupted in the store after it was written
    with pytest.raises(DigestMismatch):
        registry.push_blob(REPO, desc, store)
    assert not registry.has_blob(REPO, desc.digest)


def test_manifests_by_tag_and_digest_and_their_blobs_checked(store: ContentStore) -> None:
    registry = MemoryRegistry()
    config, layer = stored(store, b"{}", mt.OCI_CONFIG), stored(store, b"layer")
    raw = manifest_of(config, [layer])

    with pytest.raises(RegistryError) as refused:
        registry.push_manifest(REPO, raw, mt.OCI_MANIFEST)
    assert refused.value.code == "MANIFEST_BLOB_UNKNOWN"
    assert registry.tags(REPO) == {}

    for blob in (config, layer):
        registry.push_blob(REPO, blob, store)
    pushed = registry.push_manifest(REPO, raw, mt.OCI_MANIFEST)

    assert pushed == Descriptor.of(mt.OCI_MANIFEST, raw)
    assert registry.resolve(REPO) == registry.resolve(REPO.with_digest(pushed.digest)) == pushed
    assert registry.fetch_manifest(REPO) == (pushed, raw)
    assert registry.list_tags(REPO) == ["v1"]
    assert registry.tags(REPO) == {"v1": pushed.digest}
    with pytest.raises(DigestMismatch):
        registry.push_manifest(REPO.with_digest(dg.of_bytes(b"else")), raw, mt.OCI_MANIFEST)


def test_index_needs_its_children_first(store: ContentStore) -> None:
    registry = MemoryRegistry()
    config = stored(store, b"{}", mt.OCI_CONFIG)
    registry.push_blob(REPO, config, store)
    child_raw = manifest_of(config, [])
    child = Descriptor.of(mt.OCI_MANIFEST, child_raw)
    index_raw = canonical_json(
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [child.to_dict()]}
    )

    with pytest.raises(RegistryError, match="blob unknown") as refused:
        registry.push_manifest(REPO, index_raw, mt.OCI_INDEX)
    assert refused.value.code == "MANIFEST_BLOB_UNKNOWN"

    registry.push_manifest(REPO.with_digest(child.digest), child_raw, mt.OCI_MANIFEST)
    registry.push_manifest(REPO, index_raw, mt.OCI_INDEX)
    assert registry.resolve(REPO).media_type == mt.OCI_INDEX
    assert registry.tags(REPO) == {"v1": dg.of_bytes(index_raw)}  # by-digest pushes tag nothing


def test_unknown_things_are_not_found() -> None:
    registry = MemoryRegistry()
    missing = Descriptor(media_type=mt.OCI_CONFIG, digest=dg.of_bytes(b"missing"), size=7)
    for call in (
        lambda: registry.resolve(REPO),
        lambda: registry.fetch_manifest(REPO),
        lambda: registry.fetch_blob_bytes(REPO, missing),
        lambda: registry.list_tags(REPO),
    ):
        with pytest.raises(NotFound):
            call()
    assert registry.blob_exists(REPO, missing.digest) is False


def test_mount_links_between_repositories_of_one_host_only(store: ContentStore) -> None:
    registry = MemoryRegistry()
    desc = stored(store, b"shared base layer")
    registry.push_blob(OTHER, desc, store)
    elsewhere = Reference.parse("other-registry.invalid/team/app:v1")

    assert registry.mount_blob(elsewhere, desc.digest, OTHER.repository) is False  # another host
    assert registry.mount_blob(REPO, dg.of_bytes(b"never pushed"), OTHER.repository) is False
    assert registry.mount_blob(REPO, desc.digest, OTHER.repository) is True
    assert registry.has_blob(REPO, desc.digest)
    assert registry.catalog("registry.invalid") == ["team/app", "team/other"]


def test_referrers_api_on_and_off(store: ContentStore) -> None:
    config = stored(store, b"{}", mt.OCI_CONFIG)
    subject = Descriptor(media_type=mt.OCI_MANIFEST, digest=dg.of_bytes(b"source"), size=6)
    raw = manifest_of(
        config, [], subject={"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size}
    )
    with_api, without_api = MemoryRegistry(), MemoryRegistry(referrers_api=False)
    for registry in (with_api, without_api):
        registry.push_blob(REPO, config, store)
        registry.push_manifest(REPO.with_digest(dg.of_bytes(raw)), raw, mt.OCI_MANIFEST)

    [listed] = with_api.referrers(REPO, subject.digest) or []
    assert listed.digest == dg.of_bytes(raw) and listed.artifact_type == mt.OCI_CONFIG
    assert with_api.referrers(REPO, dg.of_bytes(b"unrelated")) == []
    assert without_api.referrers(REPO, subject.digest) is None


def test_injected_failure_hits_the_chosen_call_only(store: ContentStore) -> None:
    registry = MemoryRegistry()
    config = stored(store, b"{}", mt.OCI_CONFIG)
    registry.push_blob(REPO, config, store)
    raw = manifest_of(config, [])
    registry.fail("push_manifest", target="v1")
    registry.fail("blob_exists", error=lambda: NotFound("gone"), times=2)

    registry.push_manifest(REPO.with_digest(dg.of_bytes(raw)), raw, mt.OCI_MANIFEST)  # not the target
    with pytest.raises(RegistryError, match="injected failure") as failed:
        registry.push_manifest(REPO, raw, mt.OCI_MANIFEST)
    assert failed.value.status == 500
    assert registry.tags(REPO) == {}
    registry.push_manifest(REPO, raw, mt.OCI_MANIFEST)  # only once
    assert registry.tags(REPO) == {"v1": dg.of_bytes(raw)}

    for _ in range(2):
        with pytest.raises(NotFound):
            registry.blob_exists(REPO, config.digest)
    assert registry.blob_exists(REPO, config.digest) is True
    assert registry.calls[-1] == Call("blob_exists", "registry.invalid/team/app", config.digest)

    seen: list[str] = []
    registry.before("resolve", lambda: seen.append(registry.tags(REPO)["v1"]), skip=1)
    registry.resolve(REPO)  # skipped
    registry.resolve(REPO)  # runs the action, then resolves
    registry.resolve(REPO)  # used up
    assert seen == [dg.of_bytes(raw)]
    with pytest.raises(ValueError):
        registry.fail("push")


def test_a_stored_blob_is_not_fetched_again(store: ContentStore) -> None:
    registry = MemoryRegistry()
    desc = stored(store, b"already here")  # in the store, not in the registry

    assert registry.fetch_blob(REPO, desc, store) == store.path(desc.digest)

    registry.delete_blob(REPO, desc.digest)  # deleting an absent blob is harmless
    assert registry.verbs("fetch_blob") == [f"fetch_blob {REPO.name} {desc.digest}"]
