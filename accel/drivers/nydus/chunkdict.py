"""A Nydus driver's `chunk_dict_ref`, resolved outside the driver (which never sees the registry).

`resolve_chunk_dict` reads the dictionary image (one platform of it), checks that it is a Nydus image,
pulls its bootstrap layer into the content store and extracts `image/image.boot`, which `nydus-image
create/merge --chunk-dict bootstrap=PATH` reads. The driver declares `chunk_dict_ref` as its dependency,
so the engine's `accel.drivers.dependencies.DependencyResolver` calls this for `Context.driver()`
(re-resolving a re-pushed tag) and stages the dictionary blobs a converted image lists into its target.

Platform: the driver is shared by every conversion of the process, so one dictionary platform serves
them all: the first of `converter.platforms`, else linux/amd64, else the index's first image. A chunk is
reused by content digest, so another platform's image stays correct; it only dedups less.
"""

from __future__ import annotations

import dataclasses

from isal import igzip

from accel import constants as mt
from accel import digest as dg
from accel import tarstream
from accel.drivers.base import DependencySource
from accel.drivers.nydus.tar import COPY_SIZE
from accel.drivers.nydus.trailer import BOOTSTRAP_TAR_NAME
from accel.errors import AccelError, DriverError
from accel.oci import Descriptor, Index, Manifest, Platform
from accel.reference import Reference
from accel.registry import is_transient
from accel.store import ContentStore

DEFAULT_PLATFORM = Platform(os="linux", architecture="amd64")


@dataclasses.dataclass(frozen=True)
class ChunkDict:
    """A resolved `chunk_dict_ref`: one platform of a Nydus image whose chunks new layers reuse."""

    reference: str  # as configured, normalised
    image_digest: str  # the dictionary's image manifest
    bootstrap_digest: str  # its merged RAFS bootstrap (`image/image.boot`), in the content store
    blobs: tuple[Descriptor, ...]  # its Nydus blob layers, which hold the chunks
    fs_version: str | None = None  # from its bootstrap layer annotation, when it has one

    def blob(self, blob_id: str) -> Descriptor | None:
        """The dictionary blob with this id (a hex digest), as a manifest layer lists it."""
        return next((b for b in self.blobs if dg.hex_of(b.digest) == blob_id), None)


def _select_manifest(
    client: DependencySource, ref: Reference, platform: Platform | None
) -> tuple[Descriptor, bytes]:
    desc, raw = client.fetch_manifest(ref)
    if desc.media_type not in mt.INDEX_TYPES:
        return desc, raw
    children = [c for c in Index.parse(raw, desc.media_type).manifests if c.media_type in mt.MANIFEST_TYPES]
    wanted = platform or DEFAULT_PLATFORM
    chosen = next((c for c in children if c.platform and wanted.matches(c.platform)), None)
    if chosen is None and platform is None:
        chosen = next(iter(children), None)
    if chosen is None:
        raise DriverError(f"nydus chunk_dict_ref {ref}: the index has no image for platform {wanted}")
    return client.fetch_manifest(ref.with_digest(chosen.digest))


def _extract_bootstrap(store: ContentStore, layer_digest: str, reference: Reference) -> str:
    """`image/image.boot` out of a bootstrap layer (gzip tar) in the store, streamed into its own blob."""
    wanted = BOOTSTRAP_TAR_NAME.encode()
    with igzip.open(store.path(layer_digest), "rb") as gz:
        for member in tarstream.TarScanner(gz):  # type: ignore[arg-type]
            if member.header.name.lstrip(b"./") != wanted or member.header.typeflag != tarstream.TYPE_REG:
                continue
            with store.writer() as writer:
                for chunk in member.iter_data(COPY_SIZE):
                    writer.write(chunk)
            assert writer.digest is not None
            return writer.digest
    raise DriverError(f"nydus chunk_dict_ref {reference}: its bootstrap layer has no {BOOTSTRAP_TAR_NAME}")


def resolve_chunk_dict(
    client: DependencySource, reference: str, store: ContentStore, platform: Platform | None = None
) -> ChunkDict:
    """The dictionary image `reference` (one platform): its Nydus blobs and bootstrap, in the store.

    DriverError naming the reference when it is missing, not a Nydus image or unusable; transient
    registry trouble is raised as it is, so tasks retry it.
    """
    try:
        ref = Reference.parse(reference)
        desc, raw = _select_manifest(client, ref, platform)
        layers = Manifest.parse(raw, desc.media_type).layers
        if not layers or layers[-1].annotation(mt.NYDUS_BOOTSTRAP_ANNOTATION) is None:
            raise DriverError(
                f"nydus chunk_dict_ref {ref} ({desc.digest}) is not a Nydus image: "
                "its last layer is no Nydus bootstrap"
            )
        *data_layers, bootstrap_layer = layers
        if any(layer.annotation(mt.NYDUS_REF_ANNOTATION) for layer in data_layers):
            # Its chunks live in gzip blobs that only zran can read; a dictionary must hold real chunks.
            raise DriverError(f"nydus chunk_dict_ref {ref} is an oci_ref (zran) image, which cannot serve")
        blobs = tuple(layer for layer in data_layers if layer.annotation(mt.NYDUS_BLOB_ANNOTATION))
        client.fetch_blob(ref, bootstrap_layer, store)
        bootstrap_digest = _extract_bootstrap(store, bootstrap_layer.digest, ref)
    except DriverError:
        raise
    except (tarstream.TarError, OSError) as exc:
        raise DriverError(f"nydus chunk_dict_ref {reference}: unreadable bootstrap layer: {exc}") from exc
    except AccelError as exc:  # not found, refused, not a manifest, digest mismatch, bad reference
        if is_transient(exc):
            raise
        raise DriverError(f"nydus chunk_dict_ref {reference}: {exc}") from exc
    return ChunkDict(
        reference=str(ref),
        image_digest=desc.digest,
        bootstrap_digest=bootstrap_digest,
        blobs=blobs,
        fs_version=bootstrap_layer.annotation(mt.NYDUS_FS_VERSION_ANNOTATION),
    )
