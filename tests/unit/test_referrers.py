"""Converted images as referrers of their source, with and without the registry's referrers API."""

from __future__ import annotations

from accel import constants as mt
from accel import image as img
from accel import publish, referrers
from accel.oci import Index
from accel.reference import Reference
from accel.registry.memory import MemoryRegistry
from tests.harness.relabel import build

TARGET = Reference.parse("registry.invalid/team/app:v1-relabel")


def listing(registry: MemoryRegistry, subject_digest: str) -> list[dict]:
    raw = registry.manifest(TARGET.with_tag(referrers.referrers_tag(subject_digest)))
    assert raw is not None, f"no referrers tag for {subject_digest}"
    return Index.parse(raw).doc["manifests"]


def test_without_the_api_each_document_is_listed_under_its_subject_once(tmp_path) -> None:
    registry = MemoryRegistry(referrers_api=False)
    source, image, store = build(tmp_path, index=True)

    publish.push_image(registry, TARGET, image, store)
    publish.push_image(registry, TARGET, image, store)  # a re-run lists nothing twice

    # The index refers to the source index; each platform manifest to its source manifest.
    pairs = [
        (source.root.digest, image.root),
        *(
            (s.descriptor.digest, m.descriptor)
            for s, m in zip(source.manifests, image.manifests, strict=True)
        ),
    ]
    for subject_digest, referrer in pairs:
        [entry] = listing(registry, subject_digest)
        assert entry["digest"] == referrer.digest
        assert entry["mediaType"] == referrer.media_type
        assert entry["annotations"][mt.ACCEL_DRIVER] == "relabel"
    expected_tags = {TARGET.tag, *(referrers.referrers_tag(d) for d, _ in pairs)}
    assert set(registry.tags(TARGET)) == expected_tags
    tag_pushes = [c for c in registry.calls if c.verb == "push_manifest" and c.target.startswith("sha256-")]
    assert len(tag_pushes) == len(pairs)  # written once per referrer, not again on the re-run


def test_a_second_referrer_of_the_same_subject_is_appended(tmp_path) -> None:
    registry = MemoryRegistry(referrers_api=False)
    source, plain, plain_store = build(tmp_path / "plain", registry=registry)
    _, harbor, harbor_store = build(
        tmp_path / "harbor", registry=registry, options=img.BuildOptions(harbor_annotation=True)
    )
    assert plain.root.digest != harbor.root.digest

    publish.push_image(registry, TARGET, plain, plain_store)
    publish.push_image(registry, TARGET.with_tag("v1-harbor"), harbor, harbor_store)
    publish.push_image(registry, TARGET, plain, plain_store)

    entries = listing(registry, source.root.digest)
    assert [e["digest"] for e in entries] == [plain.root.digest, harbor.root.digest]
    assert entries[1]["annotations"][mt.HARBOR_DRIVER_NAME] == "relabel"


def test_with_the_api_no_referrers_tag_is_written(tmp_path) -> None:
    registry = MemoryRegistry(referrers_api=True)
    source, image, store = build(tmp_path)

    publish.push_image(registry, TARGET, image, store)

    assert set(registry.tags(TARGET)) == {TARGET.tag}
    [listed] = registry.referrers(TARGET, source.root.digest) or []
    assert listed.digest == image.root.digest


def test_a_failing_referrers_tag_leaves_the_pushed_image_alone(tmp_path, caplog) -> None:
    registry = MemoryRegistry(referrers_api=False)
    source, image, store = build(tmp_path)
    registry.fail("push_manifest", target=referrers.referrers_tag(source.root.digest))

    pushed = publish.push_image(registry, TARGET, image, store)

    assert registry.tags(TARGET) == {TARGET.tag: pushed.digest}
    assert "could not list" in caplog.text


def test_no_subject_means_nothing_to_list(tmp_path) -> None:
    registry = MemoryRegistry(referrers_api=False)
    _source, image, store = build(tmp_path, options=img.BuildOptions(subject=False))

    publish.push_image(registry, TARGET, image, store)

    assert set(registry.tags(TARGET)) == {TARGET.tag}
    assert registry.verbs("referrers") == []
