"""An in-memory registry with every verb of `accel.registry.interfaces`, for fast deterministic tests.

It behaves like `distribution` where accel depends on it: digests are verified on push and on fetch,
a manifest naming a blob (or an index naming a child manifest) the repository lacks is refused with
MANIFEST_BLOB_UNKNOWN, unknown things are `NotFound`, mounts work between repositories of one registry
host. Unlike a real registry it records every call (`calls`), lets a test make a chosen call fail
(`fail`) or run something just before it (`before`, to stage a race deterministically), and can answer
with or without the OCI referrers API.

Repositories are keyed by (registry host, repository), so one instance can stand for several registries.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accel import constants as mt
from accel import digest as dg
from accel import oci
from accel.errors import DigestMismatch
from accel.oci import Descriptor
from accel.reference import Reference
from accel.registry.errors import BlobSizeMismatch, NotFound, RegistryError
from accel.store import ContentStore

_RepoKey = tuple[str, str]

VERBS = frozenset(
    {
        "resolve",
        "fetch_manifest",
        "fetch_blob",
        "fetch_blob_bytes",
        "blob_exists",
        "mount_blob",
        "push_blob",
        "push_manifest",
        "list_tags",
        "referrers",
        "catalog",
    }
)


@dataclasses.dataclass(frozen=True)
class Call:
    """One verb as called: `repository` is `registry/repository`, `target` a tag, a digest or ""."""

    verb: str
    repository: str
    target: str = ""

    def __str__(self) -> str:
        return f"{self.verb} {self.repository} {self.target}".rstrip()


@dataclasses.dataclass
class _Hook:
    verb: str
    target: str | None
    action: Callable[[], None]
    skip: int
    remaining: int


@dataclasses.dataclass
class _Repository:
    blobs: dict[str, bytes] = dataclasses.field(default_factory=dict)
    manifests: dict[str, tuple[str, bytes]] = dataclasses.field(default_factory=dict)  # digest → type, raw
    tags: dict[str, str] = dataclasses.field(default_factory=dict)


def _key(ref: Reference) -> _RepoKey:
    return ref.registry, ref.repository


def _unknown(what: str, code: str, registry: str) -> NotFound:
    return NotFound(f"{what}: unknown to the in-memory registry", status=404, registry=registry, code=code)


class MemoryRegistry:
    """Every registry verb over dicts. Thread-safe; `referrers_api=False` behaves like distribution 2.x."""

    def __init__(self, *, referrers_api: bool = True) -> None:
        self.referrers_api = referrers_api
        self.calls: list[Call] = []
        self._repositories: dict[_RepoKey, _Repository] = {}
        self._hooks: list[_Hook] = []
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"MemoryRegistry(repositories={len(self._repositories)}, referrers_api={self.referrers_api})"

    # --- test controls ---------------------------------------------------------------------------

    def fail(
        self,
        verb: str,
        *,
        target: str | None = None,
        error: Callable[[], BaseException] | None = None,
        times: int = 1,
        skip: int = 0,
    ) -> None:
        """Calls of `verb` (on `target`, a tag or digest, when given) raise `error()`: `times` of them,
        after the first `skip` such calls went through.

        The default error is a 500 the client would have given up on. A failed call is still recorded.
        """

        def server_error() -> BaseException:
            return RegistryError(f"{verb} {target or ''}: injected failure", status=500, registry="memory")

        make_error = error or server_error

        def raise_error() -> None:
            raise make_error()

        self.before(verb, raise_error, target=target, times=times, skip=skip)

    def before(
        self,
        verb: str,
        action: Callable[[], None],
        *,
        target: str | None = None,
        times: int = 1,
        skip: int = 0,
    ) -> None:
        """Run `action` just before calls of `verb` (on `target`, when given) take effect: `times` of them,
        after the first `skip`. It may call the registry itself (another writer, made to race)."""
        if verb not in VERBS:
            raise ValueError(f"unknown verb {verb!r}; one of {', '.join(sorted(VERBS))}")
        with self._lock:
            self._hooks.append(_Hook(verb, target, action, skip, times))

    def verbs(self, *wanted: str) -> list[str]:
        """The recorded calls as strings, only those of `wanted` verbs when given."""
        with self._lock:
            return [str(c) for c in self.calls if not wanted or c.verb in wanted]

    def clear_calls(self) -> None:
        with self._lock:
            self.calls.clear()

    def put_blob(self, repo_ref: Reference, data: bytes) -> Descriptor:
        """Seed a blob without recording a call; returns an octet-stream descriptor of it."""
        digest = dg.of_bytes(data)
        with self._lock:
            self._repository(repo_ref, create=True).blobs[digest] = bytes(data)
        return Descriptor(media_type="application/octet-stream", digest=digest, size=len(data))

    def replace_blob(self, repo_ref: Reference, digest: str, data: bytes) -> None:
        """Make the registry serve other bytes under `digest` (a corrupted or tampered store)."""
        with self._lock:
            self._repository(repo_ref, create=True).blobs[digest] = bytes(data)

    def delete_blob(self, repo_ref: Reference, digest: str) -> None:
        with self._lock:
            repo = self._repositories.get(_key(repo_ref))
            if repo is not None:
                repo.blobs.pop(digest, None)

    def has_blob(self, repo_ref: Reference, digest: str) -> bool:
        with self._lock:
            repo = self._repositories.get(_key(repo_ref))
            return repo is not None and digest in repo.blobs

    def tags(self, repo_ref: Reference) -> dict[str, str]:
        """Tag → manifest digest, without recording a call."""
        with self._lock:
            repo = self._repositories.get(_key(repo_ref))
            return dict(repo.tags) if repo else {}

    def manifest(self, ref: Reference) -> bytes | None:
        """The stored bytes `ref` names (tag or digest), without recording a call."""
        with self._lock:
            repo = self._repositories.get(_key(ref))
            if repo is None:
                return None
            digest = ref.digest or repo.tags.get(ref.tag or "")
            found = repo.manifests.get(digest or "")
            return found[1] if found else None

    # --- verbs -----------------------------------------------------------------------------------

    def resolve(self, ref: Reference) -> Descriptor:
        self._enter("resolve", ref, ref.identifier)
        with self._lock:
            media_type, raw = self._stored_manifest(ref, f"resolve {ref}")
            return Descriptor.of(media_type, raw)

    def fetch_manifest(self, ref: Reference) -> tuple[Descriptor, bytes]:
        self._enter("fetch_manifest", ref, ref.identifier)
        with self._lock:
            media_type, raw = self._stored_manifest(ref, f"fetch manifest {ref}")
        desc = Descriptor.of(oci.detect_media_type(raw, media_type), raw)
        if ref.digest and desc.digest != ref.digest:
            raise DigestMismatch(ref.digest, desc.digest, f"manifest {ref}")
        return desc, raw

    def fetch_blob(self, repo_ref: Reference, desc: Descriptor, store: ContentStore) -> Path:
        self._enter("fetch_blob", repo_ref, desc.digest)
        with self._lock:
            if store.exists(desc.digest):
                store.touch(desc.digest)  # as the HTTP client: a stored blob is not fetched again
                return store.path(desc.digest)
            data = self._stored_blob(repo_ref, desc.digest)
        what = f"fetch blob {dg.short(desc.digest)} from {repo_ref.name}"
        if len(data) != desc.size:
            raise BlobSizeMismatch(f"{what}: got {len(data)} bytes, descriptor says {desc.size}")
        with store.writer(expected=desc.digest) as writer:
            writer.write(data)
        return store.path(desc.digest)

    def fetch_blob_bytes(self, repo_ref: Reference, desc: Descriptor) -> bytes:
        self._enter("fetch_blob_bytes", repo_ref, desc.digest)
        with self._lock:
            data = self._stored_blob(repo_ref, desc.digest)
        what = f"fetch blob {dg.short(desc.digest)} from {repo_ref.name}"
        if len(data) != desc.size:
            raise BlobSizeMismatch(f"{what}: got {len(data)} bytes, descriptor says {desc.size}")
        return dg.verify(desc.digest, data, what)

    def blob_exists(self, repo_ref: Reference, digest: str) -> bool:
        self._enter("blob_exists", repo_ref, digest)
        with self._lock:
            return self.has_blob(repo_ref, digest)

    def mount_blob(self, repo_ref: Reference, digest: str, from_repository: str) -> bool:
        self._enter("mount_blob", repo_ref, digest)
        with self._lock:
            source = self._repositories.get((repo_ref.registry, from_repository))
            if source is None or digest not in source.blobs:
                return False
            self._repository(repo_ref, create=True).blobs[digest] = source.blobs[digest]
            return True

    def push_blob(self, repo_ref: Reference, desc: Descriptor, store: ContentStore) -> None:
        self._enter("push_blob", repo_ref, desc.digest)
        data = store.path(desc.digest).read_bytes()  # unverified: the check below is the registry's
        what = f"push blob {dg.short(desc.digest)} to {repo_ref.name}"
        if len(data) != desc.size:
            raise BlobSizeMismatch(f"{what}: got {len(data)} bytes (stored), descriptor says {desc.size}")
        dg.verify(desc.digest, data, f"{what} (local store file)")
        with self._lock:
            self._repository(repo_ref, create=True).blobs[desc.digest] = data

    def push_manifest(self, ref: Reference, raw: bytes, media_type: str) -> Descriptor:
        digest = dg.of_bytes(raw)
        self._enter("push_manifest", ref, ref.identifier)
        with self._lock:
            if ref.digest and ref.digest != digest:
                raise DigestMismatch(ref.digest, digest, f"manifest to push to {ref}")
            repo = self._repository(ref, create=True)
            missing = self._missing_references(repo, raw, media_type)
            if missing:
                raise RegistryError(
                    f"push manifest {ref}: blob unknown to the registry: {', '.join(missing)}",
                    status=400,
                    registry=ref.registry,
                    code="MANIFEST_BLOB_UNKNOWN",
                )
            repo.manifests[digest] = (media_type, bytes(raw))
            if ref.tag and not ref.digest:
                repo.tags[ref.tag] = digest
        return Descriptor(media_type=media_type, digest=digest, size=len(raw))

    def list_tags(self, repo_ref: Reference) -> list[str]:
        self._enter("list_tags", repo_ref)
        with self._lock:
            repo = self._repositories.get(_key(repo_ref))
            if repo is None:
                raise _unknown(f"list tags of {repo_ref.name}", "NAME_UNKNOWN", repo_ref.registry)
            return sorted(repo.tags)

    def referrers(self, repo_ref: Reference, digest: str) -> list[Descriptor] | None:
        self._enter("referrers", repo_ref, digest)
        with self._lock:
            if not self.referrers_api:
                return None
            repo = self._repositories.get(_key(repo_ref))
            found = []
            for media_type, raw in repo.manifests.values() if repo else ():
                doc = json.loads(raw)
                if (doc.get("subject") or {}).get("digest") != digest:
                    continue
                artifact_type = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType")
                annotations = doc.get("annotations") or None
                found.append(
                    Descriptor.of(media_type, raw, artifact_type=artifact_type, annotations=annotations)
                )
            return found

    def catalog(self, registry: str) -> list[str]:
        self._enter_call(Call("catalog", registry), "catalog", None)
        with self._lock:
            return sorted(name for host, name in self._repositories if host == registry)

    # --- internals -------------------------------------------------------------------------------

    def _enter(self, verb: str, ref: Reference, target: str = "") -> None:
        self._enter_call(Call(verb, ref.name, target), verb, target)

    def _enter_call(self, call: Call, verb: str, target: str | None) -> None:
        """Record the call, then run the hooks it meets outside the lock: a hook may act as another client
        would at that moment (even one that copies blobs side by side in threads)."""
        with self._lock:
            self.calls.append(call)
            actions = self._due_hooks(verb, target)
        for action in actions:
            action()

    def _due_hooks(self, verb: str, target: str | None) -> list[Callable[[], None]]:
        due = []
        for hook in list(self._hooks):
            if hook.verb != verb or hook.remaining <= 0 or hook.target not in (None, target):
                continue
            if hook.skip > 0:
                hook.skip -= 1
                continue
            hook.remaining -= 1
            due.append(hook.action)
        return due

    def _repository(self, ref: Reference, *, create: bool = False) -> _Repository:
        key = _key(ref)
        if key not in self._repositories:
            if not create:
                raise _unknown(f"repository {ref.name}", "NAME_UNKNOWN", ref.registry)
            self._repositories[key] = _Repository()
        return self._repositories[key]

    def _stored_manifest(self, ref: Reference, what: str) -> tuple[str, bytes]:
        repo = self._repositories.get(_key(ref))
        digest = ref.digest or (repo.tags.get(ref.tag or "") if repo else None)
        if repo is None or digest is None or digest not in repo.manifests:
            raise _unknown(what, "MANIFEST_UNKNOWN", ref.registry)
        return repo.manifests[digest]

    def _stored_blob(self, repo_ref: Reference, digest: str) -> bytes:
        repo = self._repositories.get(_key(repo_ref))
        if repo is None or digest not in repo.blobs:
            raise _unknown(f"blob {dg.short(digest)} in {repo_ref.name}", "BLOB_UNKNOWN", repo_ref.registry)
        return repo.blobs[digest]

    @staticmethod
    def _missing_references(repo: _Repository, raw: bytes, media_type: str) -> list[str]:
        """What a registry checks before accepting a manifest: its blobs, or an index's children."""
        doc: dict[str, Any] = json.loads(raw)
        if media_type in mt.INDEX_TYPES:
            return [m["digest"] for m in doc.get("manifests") or () if m["digest"] not in repo.manifests]
        named = [doc["config"], *(doc.get("layers") or ())] if "config" in doc else []
        return [d["digest"] for d in named if d["digest"] not in repo.blobs and not d.get("urls")]
