"""The one writer of manifest and index documents (and of the provenance annotations they carry).

Every document accel writes goes through here, so field order, and with it every digest, is decided in one
place: schemaVersion, mediaType, artifactType, config, layers (a manifest) or manifests (an index),
subject, annotations; serialised by `accel.oci.canonical_json`. Optional fields are written only when given.
Documents that Go workers of the original service re-encode and compare (conversion cache images) are
written with `go_form=True`: `accel.oci.go_json`, the bytes Go's `encoding/json` gives for the OCI types.
Documents read from a registry are never rewritten: `edit_manifest` changes named fields of one and keeps
the rest as it was.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from accel import constants as mt
from accel.oci import Descriptor, Index, Manifest, canonical_json, go_json
from accel.store import ContentStore

# An index entry: a descriptor, or one kept verbatim from a document.
IndexEntry = Descriptor | Mapping[str, Any]


def subject_of(desc: Descriptor) -> dict[str, Any]:
    """A `subject` field: media type, digest and size only (no platform or annotations)."""
    return {"mediaType": desc.media_type, "digest": desc.digest, "size": desc.size}


def _tail(
    doc: dict[str, Any], subject: Descriptor | None, annotations: Mapping[str, str] | None
) -> dict[str, Any]:
    if subject is not None:
        doc["subject"] = subject_of(subject)
    if annotations is not None:
        doc["annotations"] = dict(annotations)
    return doc


def manifest(
    media_type: str,
    config: Descriptor,
    layers: Sequence[Descriptor],
    *,
    artifact_type: str | None = None,
    subject: Descriptor | None = None,
    annotations: Mapping[str, str] | None = None,
    go_form: bool = False,
) -> Manifest:
    """An image manifest (OCI or Docker schema 2) with its canonical bytes (or Go's, with `go_form`)."""
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type}
    if artifact_type is not None:
        doc["artifactType"] = artifact_type
    doc["config"] = config.to_dict()
    doc["layers"] = [layer.to_dict() for layer in layers]
    doc = _tail(doc, subject, annotations)
    if go_form:
        raw = go_json(doc, media_type)
        return Manifest(raw=raw, media_type=media_type, doc=json.loads(raw))
    return Manifest.build(doc)


def index(
    media_type: str,
    manifests: Sequence[IndexEntry],
    *,
    subject: Descriptor | None = None,
    annotations: Mapping[str, str] | None = None,
    go_form: bool = False,
) -> Index:
    """An image index (or Docker manifest list) with its canonical bytes (or Go's, with `go_form`); mapping
    entries are kept as is (in Go's form: as Go's decoder keeps them)."""
    entries = [m.to_dict() if isinstance(m, Descriptor) else dict(m) for m in manifests]
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
    doc = _tail(doc, subject, annotations)
    if go_form:
        raw = go_json(doc, media_type)
        return Index(raw=raw, media_type=media_type, doc=json.loads(raw))
    return Index.build(doc)


def edit_manifest(
    raw: bytes, media_type: str, *, config: Descriptor, layers: Sequence[Descriptor | Mapping[str, Any]]
) -> Manifest:
    """Another manifest's document with its config and layers replaced, every other field kept in place."""
    doc = json.loads(raw)
    doc["config"] = config.to_dict()
    doc["layers"] = [d.to_dict() if isinstance(d, Descriptor) else dict(d) for d in layers]
    # The media type comes from the caller (the descriptor): an OCI manifest need not name its own.
    return Manifest(raw=canonical_json(doc), media_type=media_type, doc=doc)


def provenance(
    source_digest: str, source_reference: str, driver_name: str, driver_version: str, *, harbor: bool = False
) -> dict[str, str]:
    """Where a converted document came from; with `harbor`, Harbor's acceleration accessory keys too."""
    annotations = {
        mt.ACCEL_SOURCE_DIGEST: source_digest,
        mt.ACCEL_SOURCE_REFERENCE: source_reference,
        mt.ACCEL_DRIVER: driver_name,
        mt.ACCEL_DRIVER_VERSION: driver_version,
    }
    if harbor:
        annotations |= {
            mt.HARBOR_DRIVER_NAME: driver_name,
            mt.HARBOR_DRIVER_VERSION: driver_version,
            mt.HARBOR_SOURCE_DIGEST: source_digest,
        }
    return annotations


def store_document(document: Manifest | Index, store: ContentStore, **descriptor: Any) -> Descriptor:
    """Put the document's bytes in the store; its descriptor (with e.g. `platform=`) for listing it."""
    desc = document.descriptor(**descriptor)
    store.put_bytes(document.raw, desc.digest)
    return desc
