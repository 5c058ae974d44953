"""Pushing a converted image: blobs, then manifests, then the index, then the tag — last.

A reader of the tag therefore never sees a manifest whose blobs or children are missing; a failure
anywhere before the last step leaves the tag untouched.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Protocol

from accel import constants as mt
from accel import referrers
from accel.image import BuiltImage
from accel.oci import Descriptor
from accel.reference import Reference
from accel.registry import RegistryError
from accel.registry.interfaces import ImageTarget, ReferrersTarget
from accel.store import ContentStore

log = logging.getLogger(__name__)


class Pusher(ImageTarget, ReferrersTarget, Protocol):
    """What publishing an image and listing it as a referrer needs."""


def push_blobs(
    client: Pusher, target: Reference, image: BuiltImage, store: ContentStore, mount_from: Sequence[str] = ()
) -> None:
    for blob in image.blobs():
        client.push_blob(target, blob, store, mount_from)


def push_manifests(client: Pusher, target: Reference, image: BuiltImage, store: ContentStore) -> None:
    """Children by digest (an index's children must exist before the index)."""
    if image.root.media_type not in mt.INDEX_TYPES:
        return
    for m in image.manifests:
        client.push_manifest(
            target.with_digest(m.descriptor.digest),
            store.read_bytes(m.descriptor.digest),
            m.descriptor.media_type,
        )


def push_tag(client: Pusher, target: Reference, image: BuiltImage, store: ContentStore) -> Descriptor:
    """The root document under the target's tag (or digest, for digest-only targets)."""
    raw = store.read_bytes(image.root.digest)
    return client.push_manifest(target, raw, image.root.media_type)


def list_as_referrers(client: Pusher, target: Reference, image: BuiltImage, store: ContentStore) -> None:
    """After the tag: make each document with a `subject` discoverable even without a referrers API.

    Best effort: the image is already complete and tagged, so a failure here is a warning, not a failed push.
    """
    documents = [
        image.root,
        *(m.descriptor for m in image.manifests if m.descriptor.digest != image.root.digest),
    ]
    for desc in documents:
        raw = store.read_bytes(desc.digest)
        subject = json.loads(raw).get("subject")
        if not subject:
            continue
        try:
            referrers.attach(
                client,
                target,
                Descriptor.model_validate(subject),
                referrers.referrer_descriptor(raw, desc.media_type),
            )
        except RegistryError as exc:
            log.warning("could not list %s as a referrer of %s: %s", desc.digest, subject["digest"], exc)


def push_image(
    client: Pusher, target: Reference, image: BuiltImage, store: ContentStore, mount_from: Sequence[str] = ()
) -> Descriptor:
    push_blobs(client, target, image, store, mount_from)
    push_manifests(client, target, image, store)
    pushed = push_tag(client, target, image, store)
    list_as_referrers(client, target, image, store)
    return pushed
