"""Making converted images discoverable as referrers of their source.

Converted manifests carry `subject` = the source manifest. A registry with the OCI referrers API indexes that
by itself; for one without it (distribution 2.x, older Harbor) we maintain the referrers tag schema of the
OCI distribution spec: an image index tagged `sha256-<hex of the subject digest>` listing the referrers.
"""

from __future__ import annotations

import logging
from typing import Any

from accel import constants as mt
from accel import mutate
from accel.digest import hex_of
from accel.oci import Descriptor, Index, Manifest
from accel.reference import Reference
from accel.registry import NotFound
from accel.registry.interfaces import ReferrersTarget

log = logging.getLogger(__name__)


def referrers_tag(subject_digest: str) -> str:
    return f"sha256-{hex_of(subject_digest)}"


def referrer_descriptor(manifest_raw: bytes, media_type: str) -> Descriptor:
    """A referrer's listing: descriptor, artifactType (else the config media type) and annotations."""
    doc = (
        Manifest.parse(manifest_raw, media_type)
        if media_type in mt.MANIFEST_TYPES
        else Index.parse(manifest_raw)
    )
    artifact_type = doc.doc.get("artifactType")
    if artifact_type is None and isinstance(doc, Manifest):
        artifact_type = doc.config.media_type
    return Descriptor.of(
        media_type, manifest_raw, artifact_type=artifact_type, annotations=doc.annotations or None
    )


def attach(client: ReferrersTarget, repo: Reference, subject: Descriptor, referrer: Descriptor) -> bool:
    """List `referrer` under `subject` via the tag schema when the registry lacks the referrers API.

    Returns True when the tag index was written. Re-running is harmless (the referrer is listed once).
    """
    if client.referrers(repo, subject.digest) is not None:
        return False  # the registry indexes `subject` itself
    tag_ref = repo.with_tag(referrers_tag(subject.digest))
    try:
        _, raw = client.fetch_manifest(tag_ref)
        manifests: list[dict[str, Any]] = Index.parse(raw).doc["manifests"]
    except NotFound:
        manifests = []
    if any(m.get("digest") == referrer.digest for m in manifests):
        return False
    listing = mutate.index(mt.OCI_INDEX, [*manifests, referrer])  # earlier entries kept verbatim
    client.push_manifest(tag_ref, listing.raw, listing.media_type)
    log.info("listed %s as a referrer of %s in tag %s", referrer.digest, subject.digest, tag_ref.tag)
    return True
