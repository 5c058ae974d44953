"""Golden tests of image assembly (`image.build_image`) against the in-memory registry.

The driver here relabels layers without reading them, so every byte of the output is decided by assembly:
config diff_ids/history, media types, subject, provenance annotations, index or not. The digests pinned
below were produced before manifest writing moved to `accel.mutate`; a change to them changes every
converted image accel pushes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from accel import constants as mt
from accel import image as img
from accel.oci import Descriptor, Manifest, canonical_json
from accel.store import ContentStore
from tests.harness.relabel import AMD64, HISTORY, SOURCE, Relabel, RelabelOptions, RelabelWithFinish, build


def doc_of(store: ContentStore, desc: Descriptor) -> dict[str, Any]:
    return json.loads(store.read_bytes(desc.digest))


def test_oci_manifest_config_subject_and_provenance(tmp_path) -> None:
    source, built, store = build(tmp_path)

    [manifest] = built.manifests
    assert built.root == manifest.descriptor.with_(platform=None)
    doc = doc_of(store, built.root)
    assert list(doc) == ["schemaVersion", "mediaType", "config", "layers", "subject", "annotations"]
    assert doc["mediaType"] == mt.OCI_MANIFEST and doc["config"]["mediaType"] == mt.OCI_CONFIG
    assert doc["subject"] == {
        "mediaType": mt.OCI_MANIFEST,
        "digest": source.root.digest,
        "size": source.root.size,
    }
    assert doc["annotations"] == {
        mt.ACCEL_SOURCE_DIGEST: source.root.digest,
        mt.ACCEL_SOURCE_REFERENCE: str(SOURCE),
        mt.ACCEL_DRIVER: "relabel",
        mt.ACCEL_DRIVER_VERSION: "1",
    }
    config = json.loads(store.read_bytes(manifest.config.digest))
    assert config["rootfs"]["diff_ids"] == [layer.digest for layer in manifest.layers]
    assert config["history"] == HISTORY  # kept, empty_layer entry included
    assert store.read_bytes(manifest.config.digest) == canonical_json(config)
    assert manifest.descriptor.platform == AMD64
    assert built.root.digest == GOLDEN["oci manifest"]


def test_harbor_annotations_and_no_subject(tmp_path) -> None:
    source, built, store = build(tmp_path, options=img.BuildOptions(harbor_annotation=True, subject=False))

    doc = doc_of(store, built.root)
    assert "subject" not in doc
    assert doc["annotations"][mt.HARBOR_DRIVER_NAME] == "relabel"
    assert doc["annotations"][mt.HARBOR_DRIVER_VERSION] == "1"
    assert doc["annotations"][mt.HARBOR_SOURCE_DIGEST] == source.root.digest
    assert built.root.digest == GOLDEN["harbor, no subject"]


def test_with_referrer_false_writes_no_subject_for_any_driver(tmp_path) -> None:
    """acceld's `with_referrer` (off there by default) is every driver's option here: off, no `subject`."""
    _source, built, store = build(tmp_path, index=True, driver=Relabel(RelabelOptions(with_referrer=False)))
    assert "subject" not in doc_of(store, built.root)
    assert all("subject" not in doc_of(store, m.descriptor) for m in built.manifests)
    assert doc_of(store, built.root)["annotations"][mt.ACCEL_DRIVER] == "relabel"  # provenance stays


def test_docker_source_stays_docker_without_docker2oci(tmp_path) -> None:
    _source, built, store = build(
        tmp_path, docker=True, index=True, driver=Relabel(RelabelOptions(docker2oci=False))
    )

    root = doc_of(store, built.root)
    assert root["mediaType"] == mt.DOCKER_MANIFEST_LIST and list(root) == [
        "schemaVersion",
        "mediaType",
        "manifests",
    ]
    assert [m["platform"]["architecture"] for m in root["manifests"]] == ["amd64", "arm64"]
    for m in built.manifests:
        doc = doc_of(store, m.descriptor)
        assert list(doc) == [
            "schemaVersion",
            "mediaType",
            "config",
            "layers",
        ]  # Docker: no subject, annotations
        assert doc["mediaType"] == mt.DOCKER_MANIFEST and doc["config"]["mediaType"] == mt.DOCKER_CONFIG
        assert {layer["mediaType"] for layer in doc["layers"]} == {mt.DOCKER_LAYER_GZIP}
    assert built.root.digest == GOLDEN["docker list"]


def test_docker_source_becomes_an_oci_index_with_docker2oci(tmp_path) -> None:
    source, built, store = build(tmp_path, docker=True, index=True)

    root = doc_of(store, built.root)
    assert root["mediaType"] == mt.OCI_INDEX
    assert list(root) == ["schemaVersion", "mediaType", "manifests", "subject", "annotations"]
    assert root["subject"]["digest"] == source.root.digest
    assert root["subject"]["mediaType"] == mt.DOCKER_MANIFEST_LIST
    assert [Descriptor.model_validate(m) for m in root["manifests"]] == [
        m.descriptor for m in built.manifests
    ]
    for m, src in zip(built.manifests, source.manifests, strict=True):
        doc = doc_of(store, m.descriptor)
        assert doc["subject"] == {
            "mediaType": mt.DOCKER_MANIFEST,
            "digest": src.descriptor.digest,
            "size": src.descriptor.size,
        }
        assert doc["annotations"][mt.ACCEL_SOURCE_DIGEST] == src.descriptor.digest
    assert built.root.digest == GOLDEN["docker to oci index"]


def test_finish_rewrites_history_annotations_and_artifact_type(tmp_path) -> None:
    _source, built, store = build(tmp_path, driver=RelabelWithFinish(RelabelOptions()))

    [manifest] = built.manifests
    doc = Manifest.parse(store.read_bytes(built.root.digest))
    assert list(doc.doc) == [
        "schemaVersion",
        "mediaType",
        "artifactType",
        "config",
        "layers",
        "subject",
        "annotations",
    ]
    assert doc.doc["artifactType"] == "application/vnd.accel.test.artifact"
    assert doc.annotations["io.accel.test.finished"] == "yes"
    assert doc.annotations[mt.ACCEL_DRIVER] == "overridden"  # the draft's annotations win
    assert list(doc.annotations)[:4] == [
        mt.ACCEL_SOURCE_DIGEST,
        mt.ACCEL_SOURCE_REFERENCE,
        mt.ACCEL_DRIVER,
        mt.ACCEL_DRIVER_VERSION,
    ]
    config = json.loads(store.read_bytes(manifest.config.digest))
    assert config["history"] == [*HISTORY, {"created_by": "finish"}]
    assert len(config["rootfs"]["diff_ids"]) == len(doc.layers) == 3
    assert built.root.digest == GOLDEN["finish"]


@pytest.mark.parametrize("docker", [False, True])
def test_every_document_is_in_the_store_and_every_blob_listed(tmp_path, docker) -> None:
    _source, built, store = build(tmp_path, docker=docker, index=True)

    assert store.exists(built.root.digest)
    listed = {d.digest for d in built.blobs()}
    for m in built.manifests:
        doc = doc_of(store, m.descriptor)
        named = {doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])}
        assert named == {m.config.digest, *(layer.digest for layer in m.layers)} <= listed
        assert all(store.exists(d) for d in named)


GOLDEN = {
    "oci manifest": "sha256:31fb2a90d826a4cdca4a30a73d4abd8156dc99bf5dc69306f409a4e3adf7628b",
    "harbor, no subject": "sha256:8b9a1d6c30039be63d7876a54b7339aef437860257f3b926e9392c4cad795f02",
    "docker list": "sha256:620aaa7e05c3fd1606e0e6e4973920aefe55df7f9b90c831a18b398367b2f958",
    "docker to oci index": "sha256:083b675f96a9d5cb5282bb9b2a39a07bf18394a6a2d0e9e115fb12cf0820eaa3",
    "finish": "sha256:146733d854fb9c7f4669bd57ad14ae860e0ba66d89ea7b7c1e7a465e3e952c36",
}
