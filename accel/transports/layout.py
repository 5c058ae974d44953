"""OCI image layouts (`oci:DIR[:TAG]`) as a registry: every verb of `accel.registry.interfaces`.

A layout is `oci-layout`, `index.json` and `blobs/<alg>/<hex>` (OCI image-spec, image-layout.md). Tags are
the `org.opencontainers.image.ref.name` annotations of `index.json` entries. Every read is digest-verified;
every write goes to a temp file in the layout and is renamed into place, `index.json` last, so a reader never
sees an entry whose blobs are missing. A layout has one repository: the registry/repository of a
`Reference` passed in are ignored, only its tag or digest counts.

`LayoutReader` holds the verbs over an abstract blob backend, so an archive of a layout (`accel.transports.
archive`) and `docker save` output (`accel.transports.docker_archive`) reuse them read-only.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from accel import constants as mt
from accel import digest as dg
from accel import oci
from accel.errors import DigestMismatch
from accel.oci import Descriptor
from accel.reference import Reference
from accel.registry.errors import BlobSizeMismatch, NotFound, RegistryError
from accel.store import ContentStore

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LAYOUT_VERSION = "1.0.0"
_READ_SIZE = 1 << 20


def blob_member(digest: str) -> str:
    """Where a blob lives inside a layout: `blobs/sha256/<hex>`."""
    algorithm, _, hexpart = dg.validate(digest).partition(":")
    return f"blobs/{algorithm}/{hexpart}"


def empty_index() -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}


def copy_verified(stream: BinaryIO, out: BinaryIO, desc: Descriptor, what: str) -> None:
    """Copy `stream` into `out`, refusing a size or digest other than `desc` says (checked at the end)."""
    digester = dg.Digester()
    while chunk := stream.read(_READ_SIZE):
        digester.update(chunk)
        if digester.size > desc.size:
            raise BlobSizeMismatch(f"{what}: more than the {desc.size} bytes the descriptor says")
        out.write(chunk)
    if digester.size != desc.size:
        raise BlobSizeMismatch(f"{what}: got {digester.size} bytes, descriptor says {desc.size}")
    if digester.digest() != desc.digest:
        raise DigestMismatch(desc.digest, digester.digest(), what)


class LayoutReader:
    """The read verbs over a layout-shaped blob backend; the write verbs refuse (read-only transports)."""

    transport = "oci"

    def __init__(self, location: str) -> None:
        self.location = location  # for messages

    # --- backend (overridden) --------------------------------------------------------------------

    def _index(self) -> dict[str, Any]:
        raise NotImplementedError

    def _open_blob(self, digest: str) -> BinaryIO:
        """The blob's bytes as stored (unverified); NotFound when absent."""
        raise NotImplementedError

    def _has_blob(self, digest: str) -> bool:
        raise NotImplementedError

    # --- helpers ---------------------------------------------------------------------------------

    def _not_found(self, what: str, code: str) -> NotFound:
        return NotFound(
            f"{what}: not in {self.transport}:{self.location}", registry=self.transport, code=code
        )

    def _unnamed(self, why: str) -> NotFound:
        """The image asked for is not one it holds: `why` lists those it does."""
        return NotFound(
            f"{self.transport}:{self.location}: {why}", registry=self.transport, code="MANIFEST_UNKNOWN"
        )

    def entries(self) -> list[dict[str, Any]]:
        """The descriptors `index.json` lists (the layout's roots)."""
        manifests = self._index().get("manifests")
        if not isinstance(manifests, list):
            raise RegistryError(f"{self.transport}:{self.location}: index.json has no manifests list")
        return manifests

    def _entry_for(self, ref: Reference) -> dict[str, Any]:
        entries = self.entries()
        if ref.tag is None:
            if len(entries) == 1:
                return entries[0]
            raise self._unnamed(
                f"no tag given and it holds {len(entries)} images; name one: {self._listing(entries)}"
            )
        named = [e for e in entries if (e.get("annotations") or {}).get(REF_NAME_ANNOTATION) == ref.tag]
        if not named:
            raise self._unnamed(f"no tag {ref.tag!r}; it holds {self._listing(entries)}")
        return named[-1]

    def _listing(self, entries: list[dict[str, Any]], most: int = 10) -> str:
        """The images it holds as a user would name them: `oci:DIR:TAG`, else `oci:DIR@DIGEST`."""
        names = []
        for entry in entries:
            tag = (entry.get("annotations") or {}).get(REF_NAME_ANNOTATION)
            names.append(
                f"{self.transport}:{self.location}" + (f":{tag}" if tag else f"@{entry.get('digest')}")
            )
        if not names:
            return "no images"
        more = f" and {len(names) - most} more" if len(names) > most else ""
        return ", ".join(names[:most]) + more

    def _read_small(self, digest: str, what: str) -> bytes:
        with self._open_blob(digest) as f:
            data = f.read()
        return dg.verify(digest, data, what)

    # --- read verbs ------------------------------------------------------------------------------

    def resolve(self, ref: Reference) -> Descriptor:
        if ref.digest:
            listed = [e for e in self.entries() if e.get("digest") == ref.digest]
            if listed:
                return Descriptor.model_validate(listed[0])
            raw = self._read_small(ref.digest, f"manifest {ref.digest}")
            return Descriptor.of(oci.detect_media_type(raw, None), raw)
        return Descriptor.model_validate(self._entry_for(ref))

    def fetch_manifest(self, ref: Reference) -> tuple[Descriptor, bytes]:
        desc = self.resolve(ref)
        raw = self._read_small(desc.digest, f"manifest {desc.digest} in {self.transport}:{self.location}")
        if len(raw) != desc.size:
            raise BlobSizeMismatch(f"manifest {desc.digest}: {len(raw)} bytes, index.json says {desc.size}")
        return desc.with_(media_type=oci.detect_media_type(raw, desc.media_type)), raw

    def fetch_blob(self, repo_ref: Reference, desc: Descriptor, store: ContentStore) -> Path:
        if store.exists(desc.digest):
            store.touch(desc.digest)
            return store.path(desc.digest)
        what = f"blob {dg.short(desc.digest)} from {self.transport}:{self.location}"
        with self._open_blob(desc.digest) as stream, store.writer(expected=desc.digest) as writer:
            copy_verified(stream, writer, desc, what)  # type: ignore[arg-type]
        return store.path(desc.digest)

    def fetch_blob_bytes(self, repo_ref: Reference, desc: Descriptor) -> bytes:
        data = self._read_small(desc.digest, f"blob {dg.short(desc.digest)} from {self.location}")
        if len(data) != desc.size:
            raise BlobSizeMismatch(f"blob {desc.digest}: {len(data)} bytes, descriptor says {desc.size}")
        return data

    def blob_exists(self, repo_ref: Reference, digest: str) -> bool:
        return self._has_blob(digest)

    def mount_blob(self, repo_ref: Reference, digest: str, from_repository: str) -> bool:
        return False  # one repository, nothing to link from

    def list_tags(self, repo_ref: Reference) -> list[str]:
        names = ((e.get("annotations") or {}).get(REF_NAME_ANNOTATION) for e in self.entries())
        return sorted({n for n in names if n})

    def referrers(self, repo_ref: Reference, digest: str) -> list[Descriptor]:
        """The listed manifests whose `subject` is `digest` (a layout's referrers are its index entries),
        so publishing never writes a referrers tag schema index into a layout."""
        found = []
        for entry in self.entries():
            desc = Descriptor.model_validate(entry)
            if desc.media_type not in mt.ALL_MANIFEST_TYPES or not self._has_blob(desc.digest):
                continue
            doc = json.loads(self._read_small(desc.digest, f"manifest {desc.digest}"))
            if (doc.get("subject") or {}).get("digest") == digest:
                found.append(desc)
        return found

    # --- write verbs (read-only transports) ------------------------------------------------------

    def push_blob(self, repo_ref: Reference, desc: Descriptor, store: ContentStore) -> None:
        raise RegistryError(f"{self.transport}:{self.location} is read-only", registry=self.transport)

    def push_manifest(self, ref: Reference, raw: bytes, media_type: str) -> Descriptor:
        raise RegistryError(f"{self.transport}:{self.location} is read-only", registry=self.transport)

    def close(self) -> None:
        """Finish writing (archives); nothing for a directory or a read-only transport."""

    def __enter__(self) -> LayoutReader:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()


class OCILayout(LayoutReader):
    """An OCI image layout directory, read and written (created on the first write)."""

    def __init__(self, root: Path | str) -> None:
        super().__init__(str(root))
        self.root = Path(root)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OCILayout({str(self.root)!r})"

    # --- backend ---------------------------------------------------------------------------------

    def _index(self) -> dict[str, Any]:
        path = self.root / INDEX_FILE
        if not path.is_file():
            if (self.root / LAYOUT_FILE).is_file():
                return empty_index()
            raise self._not_found("index.json (not an OCI image layout)", "NAME_UNKNOWN")
        doc = json.loads(path.read_bytes())
        if not isinstance(doc, dict):
            raise RegistryError(f"{path}: index.json is not a JSON object")
        return doc

    def _blob_path(self, digest: str) -> Path:
        return self.root / blob_member(digest)

    def _open_blob(self, digest: str) -> BinaryIO:
        try:
            return self._blob_path(digest).open("rb")
        except FileNotFoundError:
            raise self._not_found(f"blob {dg.short(digest)}", "BLOB_UNKNOWN") from None

    def _has_blob(self, digest: str) -> bool:
        return self._blob_path(digest).is_file()

    # --- writing ---------------------------------------------------------------------------------

    def _ensure_layout(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        layout = self.root / LAYOUT_FILE
        if not layout.is_file():
            _write_atomically(layout, json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())
        if not (self.root / INDEX_FILE).is_file():
            _write_atomically(self.root / INDEX_FILE, oci.canonical_json(empty_index()))

    @contextlib.contextmanager
    def _blob_writer(self, digest: str) -> Iterator[BinaryIO]:
        """A temp file in the blob's directory, renamed to the blob's name on a clean exit."""
        final = self._blob_path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=final.parent, prefix=".tmp-")
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the blob from other readers of the layout
        try:
            with os.fdopen(fd, "wb") as out:
                yield out
                out.flush()
                os.fsync(out.fileno())
            os.replace(name, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    def push_blob(self, repo_ref: Reference, desc: Descriptor, store: ContentStore) -> None:
        with self._lock:
            self._ensure_layout()
        what = f"push blob {dg.short(desc.digest)} to oci:{self.root}"
        with store.open(desc.digest) as stream, self._blob_writer(desc.digest) as out:
            copy_verified(stream, out, desc, what)

    def push_manifest(self, ref: Reference, raw: bytes, media_type: str) -> Descriptor:
        desc = Descriptor.of(media_type, raw)
        if ref.digest and ref.digest != desc.digest:
            raise DigestMismatch(ref.digest, desc.digest, f"manifest to push to oci:{self.root}")
        with self._lock:
            self._ensure_layout()
            missing = _missing_references(raw, media_type, self._has_blob)
            if missing:
                raise RegistryError(
                    f"push manifest to oci:{self.root}: blobs missing from the layout: {', '.join(missing)}",
                    registry="oci",
                    code="MANIFEST_BLOB_UNKNOWN",
                )
            if not self._has_blob(desc.digest):
                with self._blob_writer(desc.digest) as out:
                    out.write(raw)
            if ref.digest:
                return desc  # a child: stored, listed by the index that names it
            index = self._index()
            entry = desc.to_dict()
            kept = []
            for existing in index.get("manifests") or []:
                name = (existing.get("annotations") or {}).get(REF_NAME_ANNOTATION)
                if name == ref.tag or (
                    ref.tag is None and name is None and existing["digest"] == desc.digest
                ):
                    continue  # the tag moves to the new root
                kept.append(existing)
            if ref.tag is not None:
                entry["annotations"] = {REF_NAME_ANNOTATION: ref.tag}
            index["manifests"] = [*kept, entry]
            _write_atomically(self.root / INDEX_FILE, oci.canonical_json(index))
        return desc


def _missing_references(raw: bytes, media_type: str, has_blob: Any) -> list[str]:
    """What a registry checks before accepting a manifest: its blobs, or an index's children."""
    doc: dict[str, Any] = json.loads(raw)
    if media_type in mt.INDEX_TYPES:
        named = list(doc.get("manifests") or ())
    else:
        named = [doc["config"], *(doc.get("layers") or ())] if "config" in doc else []
    return [d["digest"] for d in named if not d.get("urls") and not has_blob(d["digest"])]


def _write_atomically(path: Path, data: bytes) -> None:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.fchmod(fd, 0o644)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(name, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
