"""Pushing generated images (imagegen) to a registry through accel's own publishing path."""

from __future__ import annotations

from accel import publish
from accel.model import BuiltImage, BuiltManifest
from accel.reference import Reference
from accel.registry import RegistryClient
from accel.store import ContentStore
from tests.harness import imagegen


def as_built(image: imagegen.BuiltImage | imagegen.BuiltIndex) -> BuiltImage:
    images = image.images if isinstance(image, imagegen.BuiltIndex) else (image,)
    manifests = tuple(
        BuiltManifest(descriptor=i.manifest, config=i.config, layers=tuple(i.layers)) for i in images
    )
    root = image.descriptor if isinstance(image, imagegen.BuiltIndex) else image.manifest
    return BuiltImage(root=root, manifests=manifests)


def push(
    client: RegistryClient,
    store: ContentStore,
    ref: Reference,
    image: imagegen.BuiltImage | imagegen.BuiltIndex,
) -> str:
    """Blobs, manifests, index, tag; returns the root digest."""
    return publish.push_image(client, ref, as_built(image), store).digest
