"""A Nydus driver's `chunk_dict_ref`, resolved outside the driver (which never sees the registry).

`resolve_chunk_dict` reads the dictionary image (one platform of it), checks that it is a Nydus image,
pulls its bootstrap layer into the content store and extracts `image/image.boot`, which `nydus-image
create/merge --chunk-dict bootstrap=PATH` reads. `ChunkDictResolver` does that for `Context.driver()`,
re-resolving at most every `RESOLVE_TTL_SECONDS` so a long-running worker notices a re-pushed dictionary
tag (the driver's version and cache key name the dictionary image, so layers then convert again), and
`stage_dictionary_blobs` makes the dictionary blobs a converted image references exist in its target
repository before the push: mounted from the dictionary's repository, else copied through the store.

Platform: the driver is shared by every conversion of the process, so one dictionary platform serves
them all: the first of `converter.platforms`, else linux/amd64, else the index's first image. A chunk is
reused by content digest, so another platform's image stays correct; it only dedups less.
"""

from __future__ import annotations

import dataclasses
import tarfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from isal import igzip

from accel import constants as mt
from accel import digest as dg
from accel.drivers.base import Driver
from accel.drivers.nydus.tar import COPY_SIZE
from accel.drivers.nydus.trailer import BOOTSTRAP_TAR_NAME
from accel.errors import AccelError, DriverError
from accel.image import BuiltImage
from accel.oci import Descriptor, Index, Manifest, Platform
from accel.reference import Reference
from accel.registry import is_transient
from accel.store import ContentStore

if TYPE_CHECKING:  # the driver module imports this one
    from accel.drivers.nydus.driver import NydusDriver

RESOLVE_TTL_SECONDS = 60.0
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


class DictionarySource(Protocol):
    """The slice of the registry client that resolving and staging a dictionary needs."""

    def fetch_manifest(self, ref: Reference) -> tuple[Descriptor, bytes]: ...

    def fetch_blob(self, repo_ref: Reference, desc: Descriptor, store: ContentStore) -> Path: ...

    def blob_exists(self, repo_ref: Reference, digest: str) -> bool: ...

    def mount_blob(self, repo_ref: Reference, digest: str, from_repository: str) -> bool: ...


def _select_manifest(
    client: DictionarySource, ref: Reference, platform: Platform | None
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
    with igzip.open(store.path(layer_digest), "rb") as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
        for member in tar:
            if member.name.lstrip("./") != BOOTSTRAP_TAR_NAME or not member.isfile():
                continue
            source = tar.extractfile(member)
            assert source is not None  # a regular file
            with store.writer() as writer:
                while chunk := source.read(COPY_SIZE):
                    writer.write(chunk)
            assert writer.digest is not None
            return writer.digest
    raise DriverError(f"nydus chunk_dict_ref {reference}: its bootstrap layer has no {BOOTSTRAP_TAR_NAME}")


def resolve_chunk_dict(
    client: DictionarySource, reference: str, store: ContentStore, platform: Platform | None = None
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
    except AccelError as exc:  # not found, refused, not a manifest, digest mismatch, bad reference
        if is_transient(exc):
            raise
        raise DriverError(f"nydus chunk_dict_ref {reference}: {exc}") from exc
    except (tarfile.TarError, OSError) as exc:
        raise DriverError(f"nydus chunk_dict_ref {reference}: unreadable bootstrap layer: {exc}") from exc
    return ChunkDict(
        reference=str(ref),
        image_digest=desc.digest,
        bootstrap_digest=bootstrap_digest,
        blobs=blobs,
        fs_version=bootstrap_layer.annotation(mt.NYDUS_FS_VERSION_ANNOTATION),
    )


@dataclasses.dataclass
class _Resolved:
    chunk_dict: ChunkDict
    at: float


class ChunkDictResolver:
    """Binds Nydus drivers to their resolved `chunk_dict_ref`; other drivers pass through unchanged."""

    def __init__(
        self,
        client: Callable[[], DictionarySource],
        store: ContentStore,
        platform: Platform | None = None,
        ttl: float = RESOLVE_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._store = store
        self._platform = platform
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._resolved: dict[str, _Resolved] = {}
        self._bound: dict[tuple[int, str], NydusDriver] = {}
        # Every dictionary this process used: a pushed image may name one a newer resolution replaced.
        self._dictionaries: dict[str, ChunkDict] = {}

    def bind(self, driver: Driver) -> Driver:
        from accel.drivers.nydus.driver import NydusDriver  # imports this module

        if not isinstance(driver, NydusDriver) or not driver.options.chunk_dict_ref:
            return driver
        chunk_dict = self.resolve(driver.options.chunk_dict_ref)
        with self._lock:
            key = (id(driver), chunk_dict.image_digest)
            if key not in self._bound:
                self._bound[key] = driver.with_chunk_dict(chunk_dict)
            return self._bound[key]

    def resolve(self, reference: str) -> ChunkDict:
        # One resolution at a time: concurrent layer tasks all wait for the first one.
        with self._lock:
            cached = self._resolved.get(reference)
            if cached is not None and self._clock() - cached.at < self._ttl:
                return cached.chunk_dict
            chunk_dict = resolve_chunk_dict(self._client(), reference, self._store, self._platform)
            self._resolved[reference] = _Resolved(chunk_dict, self._clock())
            self._dictionaries[chunk_dict.image_digest] = chunk_dict
            return chunk_dict

    def dictionaries(self) -> list[ChunkDict]:
        with self._lock:
            return list(self._dictionaries.values())


def stage_dictionary_blobs(
    client: DictionarySource,
    target: Reference,
    image: BuiltImage,
    dictionaries: Iterable[ChunkDict],
    store: ContentStore,
) -> list[Descriptor]:
    """Make the dictionary blobs `image` lists available to its push; returns those it lists.

    Each is mounted from the dictionary's repository (same registry), else fetched into the content
    store, from where the push uploads it like any other blob.
    """
    by_digest = {blob.digest: d for d in dictionaries for blob in d.blobs}
    staged = []
    for blob in image.blobs():
        chunk_dict = by_digest.get(blob.digest)
        if chunk_dict is None:
            continue
        staged.append(blob)
        if client.blob_exists(target, blob.digest):
            continue
        source = Reference.parse(chunk_dict.reference)
        if source.registry == target.registry and client.mount_blob(target, blob.digest, source.repository):
            continue
        client.fetch_blob(source, blob, store)  # a blob already in the store is not fetched again
    return staged
