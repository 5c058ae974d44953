"""Pushing generated images (imagegen) to a registry through accel's own publishing path."""

from __future__ import annotations

import shutil
import uuid

from accel import digest as dg
from accel import publish
from accel.model import BuiltImage, BuiltManifest
from accel.reference import Reference
from accel.registry import HostConfig, RegistryClient
from accel.store import ContentStore
from tests.harness import imagegen
from tests.harness.registry import FaultProxy, RegistryServer


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


def push_seeded_image(host: str, store: ContentStore, tag: str = "v1", seed: int = 0) -> Reference:
    """A small image (the standard layers and a layer of its `seed`: distinct seeds, distinct digests) in a
    fresh repository of `host`; returns its reference pinned to the digest."""
    extra = imagegen.TarBuilder(auto_parents=True)
    extra.file("seed.txt", f"seed {seed}\n".encode())
    image = imagegen.generate_image([*imagegen.standard_layers(64 * imagegen.KiB), extra], store)
    ref = Reference.parse(f"{host}/e2e/{uuid.uuid4().hex[:10]}:{tag}")
    with RegistryClient({host: HostConfig()}) as client:
        return ref.with_digest(push(client, store, ref, image))


def push_standard_image(
    host: str, store: ContentStore, repository: str, file_size: int = 16 * imagegen.KiB
) -> tuple[imagegen.BuiltImage, Reference]:
    """The standard layers (files of `file_size`) pushed to a fresh `repository/<random>:v1` of `host`; the
    image as generated and its (tagged) reference."""
    image = imagegen.generate_image(imagegen.standard_layers(file_size), store)
    ref = Reference.parse(f"{host}/{repository}/{uuid.uuid4().hex[:8]}:v1")
    with RegistryClient({host: HostConfig()}) as client:
        push(client, store, ref, image)
    return image, ref


def push_through_proxy(
    proxy: FaultProxy, store: ContentStore, layers: list[imagegen.TarBuilder], tag: str
) -> tuple[imagegen.BuiltImage, Reference]:
    """`layers` pushed straight to the proxy's registry, in a fresh repository; the reference (pinned to the
    digest) names it through the proxy's host, so that whoever pulls it meets the proxy's faults."""
    image = imagegen.generate_image(layers, store)
    repository = f"e2e/{uuid.uuid4().hex[:10]}"
    with RegistryClient({proxy.upstream: HostConfig()}) as client:
        digest = push(client, store, Reference.parse(f"{proxy.upstream}/{repository}:{tag}"), image)
    return image, Reference.parse(f"{proxy.host}/{repository}:{tag}").with_digest(digest)


def push_many_layers(
    registry: RegistryServer,
    client: RegistryClient,
    store: ContentStore,
    ref: Reference,
    image: imagegen.BuiltImage,
) -> str:
    """`push` for an image of thousands of layers: the layer blobs are written into the registry's storage
    directory as its filesystem driver lays them out (a blob's data, and the repository's link to it), since
    pushing 10,000 blobs over HTTP takes minutes on a busy machine; then config and manifest over HTTP (the
    registry checks that every layer is there). Returns the manifest digest."""
    v2 = registry.workdir / "storage" / "docker" / "registry" / "v2"
    for layer in image.layers:
        hex_digest = dg.hex_of(layer.digest)
        data = v2 / "blobs" / "sha256" / hex_digest[:2] / hex_digest / "data"
        data.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(store.path(layer.digest), data)
        link = v2 / "repositories" / ref.repository / "_layers" / "sha256" / hex_digest / "link"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.write_text(layer.digest)
    client.push_blob(ref, image.config, store)
    return client.push_manifest(ref, image.manifest_raw, image.manifest_media_type).digest
