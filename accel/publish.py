"""Publishing a converted image: `accel.copy.copy_image` (blobs, then manifests, then the index, then the
tag — last), then the referrers tag schema for registries without a referrers API.

A reader of the tag therefore never sees a manifest whose blobs or children are missing; a failure
anywhere before the tag leaves it untouched.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Sequence
from typing import Protocol

from accel import constants as mt
from accel import copy, referrers
from accel.model import BuiltImage
from accel.oci import Descriptor
from accel.reference import Reference
from accel.registry import RegistryError
from accel.registry.interfaces import ImageTarget, ReferrersTarget
from accel.store import ContentStore

log = logging.getLogger(__name__)


class Pusher(ImageTarget, ReferrersTarget, Protocol):
    """What publishing an image and listing it as a referrer needs."""


def children_of(image: BuiltImage) -> list[Descriptor]:
    """The manifests an index root lists (pushed by digest before it); none for a manifest root."""
    if image.root.media_type not in mt.INDEX_TYPES:
        return []
    return [m.descriptor for m in image.manifests]


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
    client: Pusher,
    target: Reference,
    image: BuiltImage,
    store: ContentStore,
    mount_from: Sequence[str] = (),
    present: Collection[str] = (),
) -> Descriptor:
    """Copy the image (blobs → child manifests → root under the tag, last), then list it as a referrer.
    `present`: blobs known to be in the target repository already (cache hits the lookup mounted)."""
    pushed = copy.copy_image(
        client,
        target,
        image.root,
        store,
        blobs=image.blobs(),
        children=children_of(image),
        mount_from=mount_from,
        present=present,
    )
    list_as_referrers(client, target, image, store)
    return pushed
