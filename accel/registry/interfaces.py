"""The verbs of a registry as small protocols, in oras-go v2's shape.

Each consumer asks for the smallest protocol (or composition) it needs; `RegistryClient` (HTTP) and
`MemoryRegistry` (dicts, for tests) both implement all of them. Policy built from these verbs, such as
"exists → mount → upload" or "children before the root, tag last", lives in `accel.copy`, not here.

A `repo_ref` argument names a repository (its tag or digest, if any, is ignored); a `ref` argument names a
manifest by tag or digest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from accel.oci import Descriptor
from accel.reference import Reference
from accel.store import ContentStore


class Resolver(Protocol):
    def resolve(self, ref: Reference) -> Descriptor:
        """The manifest descriptor `ref` points at; NotFound when there is none."""
        ...


class ManifestFetcher(Protocol):
    def fetch_manifest(self, ref: Reference) -> tuple[Descriptor, bytes]:
        """The manifest's exact bytes, digest-verified, with their descriptor."""
        ...


class BlobFetcher(Protocol):
    def fetch_blob(self, repo_ref: Reference, desc: Descriptor, store: ContentStore) -> Path:
        """The blob in `store` (digest-verified on the way in); a blob already stored is not fetched."""
        ...

    def fetch_blob_bytes(self, repo_ref: Reference, desc: Descriptor) -> bytes:
        """A small blob (an image config) in memory, digest-verified."""
        ...


class BlobChecker(Protocol):
    def blob_exists(self, repo_ref: Reference, digest: str) -> bool: ...


class BlobMounter(Protocol):
    def mount_blob(self, repo_ref: Reference, digest: str, from_repository: str) -> bool:
        """Link a blob from another repository of the same registry; False when the registry would not."""
        ...


class BlobPusher(Protocol):
    def push_blob(self, repo_ref: Reference, desc: Descriptor, store: ContentStore) -> None:
        """Upload the stored blob, unconditionally (see `accel.copy.copy_blob` for exists/mount first)."""
        ...


class ManifestPusher(Protocol):
    def push_manifest(self, ref: Reference, raw: bytes, media_type: str) -> Descriptor:
        """Store the exact bytes under `ref`'s tag or digest."""
        ...


class TagLister(Protocol):
    def list_tags(self, repo_ref: Reference) -> list[str]: ...


class ReferrerLister(Protocol):
    def referrers(self, repo_ref: Reference, digest: str) -> list[Descriptor] | None:
        """The referrers of `digest`, or None when the registry has no referrers API."""
        ...


# --- compositions ----------------------------------------------------------------------------------


class ManifestSource(ManifestFetcher, BlobFetcher, Protocol):
    """What reading an image (manifests, configs, layers) needs."""


class BlobLinker(BlobChecker, BlobMounter, Protocol):
    """What finding a blob in a repository, or mounting it there, needs."""


class BlobTarget(BlobLinker, BlobPusher, Protocol):
    """What making a blob exist in a repository needs: exists → mount → upload."""


class BlobStager(BlobLinker, BlobFetcher, Protocol):
    """What making a blob available to a later push needs: exists → mount → fetch into the store."""


class ImageTarget(BlobTarget, ManifestPusher, Protocol):
    """What copying an image (blobs, child manifests, root) into a repository needs."""


class ReferrersTarget(ReferrerLister, ManifestFetcher, ManifestPusher, Protocol):
    """What listing a referrer through the referrers tag schema needs."""


@runtime_checkable
class Registry(
    Resolver,
    ManifestFetcher,
    BlobFetcher,
    BlobChecker,
    BlobMounter,
    BlobPusher,
    ManifestPusher,
    TagLister,
    ReferrerLister,
    Protocol,
):
    """Every verb, for every repository the client can reach (`RegistryClient`, `MemoryRegistry`)."""
