"""One object with every registry verb for any location: local references (registry = a transport name, see
`accel.transports.names`) go to layouts and archives, every other reference to the registry client.

Code written against `accel.registry.interfaces` (resolve, pull, push, publish) then takes sources and
targets of any transport in any combination. Readers are shared per process (an archive's tar index and a
`docker save` archive's layer digests are computed once per file version); an archive target is staged per
router and written by `commit`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from accel.oci import Descriptor
from accel.reference import Reference
from accel.store import ContentStore
from accel.transports.archive import DockerArchiveTarget, OCIArchive
from accel.transports.docker_archive import DockerArchive
from accel.transports.layout import LayoutReader, OCILayout
from accel.transports.names import DOCKER_ARCHIVE, OCI_ARCHIVE, OCI_LAYOUT, is_local

_readers: dict[tuple[str, str, int, int], LayoutReader] = {}  # insertion order = age
_readers_lock = threading.Lock()
_MAX_READERS = 16  # archive indexes kept per process


def _reader(transport: str, path: Path) -> LayoutReader:
    if transport == OCI_LAYOUT:
        return OCILayout(path)
    try:
        st = path.stat()
        key = (transport, str(path), st.st_mtime_ns, st.st_size)
    except FileNotFoundError:
        return OCIArchive(path) if transport == OCI_ARCHIVE else DockerArchive(path)
    with _readers_lock:
        found = _readers.get(key)
        if found is None:
            found = OCIArchive(path) if transport == OCI_ARCHIVE else DockerArchive(path)
            _readers[key] = found
            while len(_readers) > _MAX_READERS:
                del _readers[next(iter(_readers))]
        return found


class Transports:
    """Every verb of `accel.registry.interfaces.Registry`, routed by the reference's transport."""

    def __init__(self, registry: Any = None, *, writing: Iterable[Reference] = ()) -> None:
        """`writing`: the targets this router writes; an `oci-archive:` among them is staged (every verb on
        it, reads included, sees what was pushed so far) and written by `commit`."""
        self.registry = registry
        self._archives: dict[str, OCIArchive] = {
            ref.repository: OCIArchive(Path(ref.repository), writable=True)
            if ref.registry == OCI_ARCHIVE
            else DockerArchiveTarget(ref.repository)
            for ref in writing
            if ref.registry in (OCI_ARCHIVE, DOCKER_ARCHIVE)
        }
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Transports({self.registry!r})"

    def _for(self, ref: Reference, *, write: bool = False) -> Any:
        if not is_local(ref):
            if self.registry is None:
                raise ValueError(f"{ref}: a registry reference, and no registry client was given")
            return self.registry
        path = Path(ref.repository)
        if ref.registry in (OCI_ARCHIVE, DOCKER_ARCHIVE) and ref.repository in self._archives:
            return self._archives[ref.repository]
        if write and ref.registry in (OCI_ARCHIVE, DOCKER_ARCHIVE):
            raise ValueError(f"{ref.repository}: an archive is written only as a declared target")
        return _reader(ref.registry, path)

    def commit(self, ref: Reference) -> None:
        """Write a staged `oci-archive:` target (a no-op for every other transport)."""
        with self._lock:
            archive = self._archives.pop(ref.repository, None) if is_local(ref) else None
        if archive is not None:
            archive.close()

    def discard(self) -> None:
        with self._lock:
            archives, self._archives = list(self._archives.values()), {}
        for archive in archives:
            archive.discard()

    # --- verbs -----------------------------------------------------------------------------------

    def resolve(self, ref: Reference) -> Descriptor:
        return self._for(ref).resolve(ref)

    def fetch_manifest(self, ref: Reference) -> tuple[Descriptor, bytes]:
        return self._for(ref).fetch_manifest(ref)

    def fetch_blob(self, repo_ref: Reference, desc: Descriptor, store: ContentStore) -> Path:
        return self._for(repo_ref).fetch_blob(repo_ref, desc, store)

    def fetch_blob_bytes(self, repo_ref: Reference, desc: Descriptor) -> bytes:
        return self._for(repo_ref).fetch_blob_bytes(repo_ref, desc)

    def blob_exists(self, repo_ref: Reference, digest: str) -> bool:
        return self._for(repo_ref).blob_exists(repo_ref, digest)

    def mount_blob(self, repo_ref: Reference, digest: str, from_repository: str) -> bool:
        return self._for(repo_ref).mount_blob(repo_ref, digest, from_repository)

    def push_blob(self, repo_ref: Reference, desc: Descriptor, store: ContentStore) -> None:
        self._for(repo_ref, write=True).push_blob(repo_ref, desc, store)

    def push_manifest(self, ref: Reference, raw: bytes, media_type: str) -> Descriptor:
        return self._for(ref, write=True).push_manifest(ref, raw, media_type)

    def list_tags(self, repo_ref: Reference) -> list[str]:
        return self._for(repo_ref).list_tags(repo_ref)

    def referrers(self, repo_ref: Reference, digest: str) -> list[Descriptor] | None:
        return self._for(repo_ref).referrers(repo_ref, digest)
