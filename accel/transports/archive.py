"""`oci-archive:FILE`: a tar of an OCI image layout, as skopeo writes it.

Read: the tar's headers are indexed once (`TarIndex`), blobs are read by seeking to their member.
Write: the layout is staged in a private directory beside FILE, and `close()` tars it into a temp file that
is renamed over FILE, so FILE is either the old archive or the complete new one. A written archive holds
only what this writer put in it (as skopeo, which replaces the file).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO

from accel import constants as mt
from accel import digest as dg
from accel.errors import UnsupportedMediaType
from accel.oci import Descriptor
from accel.reference import Reference
from accel.registry.errors import RegistryError
from accel.store import ContentStore
from accel.transports.layout import (
    INDEX_FILE,
    LAYOUT_FILE,
    REF_NAME_ANNOTATION,
    LayoutReader,
    OCILayout,
    blob_member,
)
from accel.transports.tarindex import TarIndex


class OCIArchive(LayoutReader):
    transport = "oci-archive"

    def __init__(self, path: Path | str, *, writable: bool = False) -> None:
        super().__init__(str(path))
        self.path = Path(path)
        self.writable = writable
        self._tar: TarIndex | None = None
        self._staging: OCILayout | None = None
        self._staging_dir: Path | None = None
        self._staging_lock = threading.Lock()  # blobs are written side by side (accel.copy.copy_blobs)

    def __repr__(self) -> str:
        return f"OCIArchive({str(self.path)!r}, writable={self.writable})"

    # --- reading ---------------------------------------------------------------------------------

    def _archive(self) -> TarIndex:
        if self._tar is None:
            if not self.path.is_file():
                raise self._not_found("archive file", "NAME_UNKNOWN")
            self._tar = TarIndex(self.path)
            if LAYOUT_FILE not in self._tar:
                raise RegistryError(
                    f"oci-archive:{self.path}: no oci-layout file (not an OCI layout archive)"
                )
        return self._tar

    def _layout(self) -> OCILayout:
        with self._staging_lock:
            if self._staging is None:
                parent = self.path.parent
                parent.mkdir(parents=True, exist_ok=True)
                self._staging_dir = Path(tempfile.mkdtemp(dir=parent, prefix=f".{self.path.name}.staging-"))
                self._staging = OCILayout(self._staging_dir)
            return self._staging

    def _index(self) -> dict[str, Any]:
        if self.writable:
            return self._layout()._index() if self._staging else {"manifests": []}
        doc = json.loads(self._archive().read(INDEX_FILE))
        if not isinstance(doc, dict):
            raise RegistryError(f"oci-archive:{self.path}: index.json is not a JSON object")
        return doc

    def _open_blob(self, digest: str) -> BinaryIO:
        if self.writable:
            return self._layout()._open_blob(digest)
        try:
            return self._archive().open(blob_member(digest))
        except KeyError:
            raise self._not_found(f"blob {dg.short(digest)}", "BLOB_UNKNOWN") from None

    def _has_blob(self, digest: str) -> bool:
        if self.writable:
            return self._staging is not None and self._staging._has_blob(digest)
        return blob_member(digest) in self._archive()

    # --- writing ---------------------------------------------------------------------------------

    def _writable_layout(self) -> OCILayout:
        if not self.writable:
            raise RegistryError(f"oci-archive:{self.path} was opened for reading", registry=self.transport)
        return self._layout()

    def push_blob(self, repo_ref: Reference, desc: Descriptor, store: ContentStore) -> None:
        self._writable_layout().push_blob(repo_ref, desc, store)

    def push_manifest(self, ref: Reference, raw: bytes, media_type: str) -> Descriptor:
        return self._writable_layout().push_manifest(ref, raw, media_type)

    def close(self) -> None:
        """Tar the staged layout over FILE (temp file + rename); nothing when nothing was written."""
        if self._staging_dir is None:
            return
        try:
            fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
            os.fchmod(fd, 0o644)
            try:
                with os.fdopen(fd, "wb") as out:
                    write_layout_tar(self._staging_dir, out, self._extra_files())
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(name, self.path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)
        finally:
            self.discard()

    def _extra_files(self) -> dict[str, bytes]:
        return {}

    def discard(self) -> None:
        """Forget what was staged (a failed conversion leaves FILE as it was)."""
        if self._staging_dir is not None:
            shutil.rmtree(self._staging_dir, ignore_errors=True)
        self._staging_dir = None
        self._staging = None

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.discard()


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def write_layout_tar(layout: Path, out: BinaryIO, extra: dict[str, bytes] | None = None) -> None:
    """A layout directory as a plain tar: oci-layout, then blobs, then index.json (then `extra` files), in a
    stable order."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(layout / LAYOUT_FILE, arcname=LAYOUT_FILE, filter=_normalised)
        blobs = layout / "blobs"
        directories = sorted(p for p in blobs.rglob("*") if p.is_dir())
        for directory in [blobs, *directories] if blobs.is_dir() else []:
            arcname = directory.relative_to(layout).as_posix()
            tar.add(directory, arcname=arcname, recursive=False, filter=_normalised)
        for blob in sorted(p for p in blobs.rglob("*") if p.is_file() and not p.name.startswith(".")):
            tar.add(blob, arcname=blob.relative_to(layout).as_posix(), filter=_normalised)
        tar.add(layout / INDEX_FILE, arcname=INDEX_FILE, filter=_normalised)
        for name, data in (extra or {}).items():
            info = _normalised(tarfile.TarInfo(name))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


class DockerArchiveTarget(OCIArchive):
    """`docker-archive:FILE[:REPO:TAG]` as a target: what `docker save` (25 and later) writes, an OCI layout
    plus `manifest.json` naming each image's config and layer blobs, which `docker load` and
    `accel.transports.docker_archive` read. One image per platform-less manifest: an index cannot be saved."""

    transport = "docker-archive"

    def __init__(self, path: Path | str) -> None:
        super().__init__(path, writable=True)

    def push_manifest(self, ref: Reference, raw: bytes, media_type: str) -> Descriptor:
        """Refuses, before anything is written, an image whose layers `docker load` (and skopeo's
        docker-archive reader) cannot apply: only tar layers (plain, gzip, zstd) go into a docker archive.
        The refusal names the format (the driver that recognises the layers), else the media type."""
        doc = json.loads(raw)
        listed = doc.get("layers") if isinstance(doc, dict) else None
        layers = [layer for layer in listed or [] if isinstance(layer, dict)]
        unloadable = [layer for layer in layers if layer.get("mediaType") not in DOCKER_LOADABLE_LAYERS]
        if unloadable:
            from accel.drivers import detect_format

            named = detect_format([Descriptor.model_validate(layer) for layer in layers])
            raise UnsupportedMediaType(
                f"docker-archive:{self.path} cannot hold {named or unloadable[0].get('mediaType')} layers "
                "(docker load and skopeo could not read them back); write oci-archive: or oci: instead"
            )
        return super().push_manifest(ref, raw, media_type)

    def _extra_files(self) -> dict[str, bytes]:
        assert self._staging is not None
        images = []
        for entry in self._staging.entries():
            desc = Descriptor.model_validate(entry)
            doc = json.loads(self._staging._read_small(desc.digest, f"manifest {desc.digest}"))
            if desc.media_type in mt.INDEX_TYPES or "config" not in doc:
                raise RegistryError(
                    f"docker-archive:{self.path}: {desc.digest} is an index; docker-archive holds "
                    "single-platform images (select one with converter.platforms, or write oci-archive:)"
                )
            name = (desc.annotations or {}).get(REF_NAME_ANNOTATION)
            images.append(
                {
                    "Config": blob_member(doc["config"]["digest"]),
                    "RepoTags": [name] if name else [],
                    "Layers": [blob_member(layer["digest"]) for layer in doc.get("layers") or []],
                }
            )
        return {"manifest.json": json.dumps(images).encode()}


# Layers a docker archive can hold: tars, plain or compressed, as `docker load` applies them.
DOCKER_LOADABLE_LAYERS = frozenset(
    {
        mt.OCI_LAYER_TAR,
        mt.OCI_LAYER_GZIP,
        mt.OCI_LAYER_ZSTD,
        mt.DOCKER_LAYER_GZIP,
        "application/vnd.docker.image.rootfs.diff.tar",
    }
)
