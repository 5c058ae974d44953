"""Making content exist in a repository: the one place for "exists → mount → upload" and push order.

For a blob: already in the target repository, else mounted from a candidate repository of the same
registry, else uploaded from the content store (`copy_blob`) or, for a blob that lives in another
repository and is pushed later with an image, fetched into the content store (`stage_blob`).
For an image: every blob, then child manifests by digest, then the root under the tag — last, so a reader
of the tag never sees a document whose blobs or children are missing (`copy_image`).

The registry verbs come from `accel.registry.interfaces`; `RegistryClient` and `MemoryRegistry` both fit.
"""

from __future__ import annotations

import contextvars
import enum
import threading
from collections.abc import Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from accel import progress
from accel.oci import Descriptor
from accel.reference import Reference
from accel.registry.interfaces import BlobLinker, BlobStager, BlobTarget, ImageTarget, ManifestPusher
from accel.store import ContentStore

# Blobs copied at a time: a small one (a bootstrap, a cache record) costs two or three round trips, which
# the registry answers side by side.
COPY_CONCURRENCY = 4


class BlobCopy(enum.StrEnum):
    """How a blob came to be available."""

    EXISTS = "exists"  # the target repository had it
    MOUNTED = "mounted"  # linked from another repository of the same registry
    UPLOADED = "uploaded"  # sent from the content store
    FETCHED = "fetched"  # now in the content store, for a later `copy_blob` to upload


def _link(registry: BlobLinker, target: Reference, digest: str, mount_from: Iterable[str]) -> BlobCopy | None:
    if registry.blob_exists(target, digest):
        return BlobCopy.EXISTS
    for repository in dict.fromkeys(mount_from):
        if repository != target.repository and registry.mount_blob(target, digest, repository):
            return BlobCopy.MOUNTED
    return None


def copy_blob(
    registry: BlobTarget,
    target: Reference,
    desc: Descriptor,
    store: ContentStore,
    mount_from: Sequence[str] = (),
) -> BlobCopy:
    """Make `desc` exist in `target`'s repository; `mount_from` are repositories of the same registry."""
    linked = _link(registry, target, desc.digest, mount_from)
    if linked is not None:
        return linked
    registry.push_blob(target, desc, store)
    return BlobCopy.UPLOADED


def stage_blob(
    registry: BlobStager, target: Reference, desc: Descriptor, store: ContentStore, source: Reference
) -> BlobCopy:
    """Make a blob of `source`'s repository available to a later push to `target`.

    In `target` already, or mounted from `source` (same registry), else fetched from `source` into the
    store (a stored blob is not fetched again), where the push's `copy_blob` uploads it from.
    """
    mount_from = [source.repository] if source.registry == target.registry else []
    linked = _link(registry, target, desc.digest, mount_from)
    if linked is not None:
        return linked
    registry.fetch_blob(source, desc, store)
    return BlobCopy.FETCHED


def copy_blobs(
    registry: BlobTarget,
    target: Reference,
    blobs: Iterable[Descriptor],
    store: ContentStore,
    mount_from: Sequence[str] = (),
    present: Collection[str] = (),
) -> dict[str, BlobCopy]:
    """`copy_blob` for each, COPY_CONCURRENCY at a time (a digest listed twice is copied once); how each
    came to be there. Blobs in `present` are known to be in the target repository already (made so moments
    ago): not asked about. The first failure is raised once the copies under way have ended; none starts
    after it."""
    done: dict[str, BlobCopy] = dict.fromkeys(present, BlobCopy.EXISTS)
    todo = list({blob.digest: blob for blob in blobs if blob.digest not in done}.values())
    if len(todo) < 2:
        done.update({blob.digest: copy_blob(registry, target, blob, store, mount_from) for blob in todo})
        return done
    meter, lock = progress.current(), threading.Lock()

    def copy_one(blob: Descriptor) -> BlobCopy:
        # Each copy counts its own bytes into a share of the caller's meter.
        with progress.metering(progress.MeterShare(meter, lock) if meter is not None else None):
            return copy_blob(registry, target, blob, store, mount_from)

    workers = min(COPY_CONCURRENCY, len(todo))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="copy-blob") as pool:
        # Each in a copy of the caller's context: its cancellation token and meter (accel.cancel, progress).
        futures = [pool.submit(contextvars.copy_context().run, copy_one, blob) for blob in todo]
        try:
            for blob, future in zip(todo, futures, strict=True):
                done[blob.digest] = future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return done


def push_manifests(
    registry: ManifestPusher, target: Reference, manifests: Iterable[Descriptor], store: ContentStore
) -> None:
    """Stored manifests by digest into `target`'s repository (children, before the root that lists them)."""
    for m in manifests:
        registry.push_manifest(target.with_digest(m.digest), store.read_bytes(m.digest), m.media_type)


def copy_image(
    registry: ImageTarget,
    target: Reference,
    root: Descriptor,
    store: ContentStore,
    *,
    blobs: Iterable[Descriptor],
    children: Iterable[Descriptor] = (),
    mount_from: Sequence[str] = (),
    present: Collection[str] = (),
) -> Descriptor:
    """Blobs (but those `present` in the target already), then `children` by digest, then `root` under
    `target`'s tag (or digest) — last."""
    copy_blobs(registry, target, blobs, store, mount_from, present)
    push_manifests(registry, target, children, store)
    return registry.push_manifest(target, store.read_bytes(root.digest), root.media_type)
