"""`docker-archive:FILE[:REF|@N]`: what `docker save` writes, read as a one-repository registry.

`manifest.json` lists the images: {"Config": path, "RepoTags": [...], "Layers": [paths]}. There is no
registry manifest in the archive, so one is made: Docker schema 2, the config and each layer file as they
are (a plain tar layer's digest is then its DiffID). Layer digests are computed once, by streaming each
member; nothing is held in memory but the small documents. Older `docker save` writes `<id>/layer.tar`,
newer versions an OCI layout with `blobs/sha256/...` next to `manifest.json`; both read the same way.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from accel import constants as mt
from accel import digest as dg
from accel import mutate
from accel.errors import InvalidImage, InvalidReference
from accel.oci import Descriptor
from accel.reference import Reference
from accel.transports.layout import REF_NAME_ANNOTATION, LayoutReader
from accel.transports.tarindex import TarIndex

DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class _Image:
    tags: tuple[str, ...]
    manifest: bytes
    blobs: dict[str, str]  # digest → member name


def _hash_member(tar: TarIndex, name: str) -> tuple[str, int, bytes]:
    digester = dg.Digester()
    head = b""
    with tar.open(name) as f:
        while chunk := f.read(1 << 20):
            if not head:
                head = chunk[:4]
            digester.update(chunk)
    return digester.digest(), digester.size, head


def _layer_media_type(head: bytes) -> str:
    if head.startswith(_GZIP_MAGIC):
        return mt.DOCKER_LAYER_GZIP
    if head.startswith(_ZSTD_MAGIC):
        return mt.OCI_LAYER_ZSTD  # no Docker name for it; containers/image uses the OCI one too
    return DOCKER_LAYER_TAR


def _normalised_name(name: str) -> str:
    """`busybox:latest` (as `docker save` records it) and `docker.io/library/busybox:latest` are one name."""
    try:
        return str(Reference.parse(name))
    except InvalidReference:
        return name


class DockerArchive(LayoutReader):
    transport = "docker-archive"

    def __init__(self, path: Path | str) -> None:
        super().__init__(str(path))
        self.path = Path(path)
        self._images: list[_Image] | None = None

    def __repr__(self) -> str:
        return f"DockerArchive({str(self.path)!r})"

    def _load(self) -> list[_Image]:
        if self._images is not None:
            return self._images
        if not self.path.is_file():
            raise self._not_found("archive file", "NAME_UNKNOWN")
        tar = TarIndex(self.path)
        self._tar = tar
        try:
            listing: list[dict[str, Any]] = json.loads(tar.read("manifest.json"))
        except KeyError:
            raise InvalidImage(
                f"docker-archive:{self.path}: no manifest.json (not `docker save` output)"
            ) from None
        hashed: dict[str, tuple[str, int, bytes]] = {}  # member → digest, size, first bytes
        images = []
        for item in listing:
            config_raw = tar.read(item["Config"])
            config = Descriptor.of(mt.DOCKER_CONFIG, config_raw)
            blobs = {config.digest: item["Config"]}
            layers = []
            for name in item.get("Layers") or []:
                if name not in hashed:
                    hashed[name] = _hash_member(tar, name)
                digest, size, head = hashed[name]
                layers.append(Descriptor(media_type=_layer_media_type(head), digest=digest, size=size))
                blobs[digest] = name
            manifest = mutate.manifest(mt.DOCKER_MANIFEST, config, layers)
            images.append(_Image(tuple(item.get("RepoTags") or ()), manifest.raw, blobs))
        self._images = images
        self._manifests = {dg.of_bytes(i.manifest): i.manifest for i in images}
        return images

    def _index(self) -> dict[str, Any]:
        entries = []
        for image in self._load():
            desc = Descriptor.of(mt.DOCKER_MANIFEST, image.manifest).to_dict()
            for tag in image.tags or (None,):
                entry = dict(desc)
                if tag is not None:
                    entry["annotations"] = {REF_NAME_ANNOTATION: tag}
                entries.append(entry)
        return {"schemaVersion": 2, "manifests": entries}

    def entries(self) -> list[dict[str, Any]]:
        return self._index()["manifests"]

    def resolve(self, ref: Reference) -> Descriptor:
        images = self._load()
        if ref.tag is not None and ref.tag.startswith("@"):  # `@N`: the N-th image of manifest.json
            position = int(ref.tag[1:])
            if not 0 <= position < len(images):
                raise self._not_found(f"image {ref.tag}", "MANIFEST_UNKNOWN")
            return Descriptor.of(mt.DOCKER_MANIFEST, images[position].manifest)
        if ref.tag is None and not ref.digest:
            if len(images) != 1:
                raise self._unnamed(
                    f"no image named and it holds {len(images)}; name one: {self._image_names(images)}"
                )
            return Descriptor.of(mt.DOCKER_MANIFEST, images[0].manifest)
        if ref.tag is not None:
            wanted = _normalised_name(ref.tag)
            for image in images:
                if any(_normalised_name(t) == wanted for t in image.tags):
                    return Descriptor.of(mt.DOCKER_MANIFEST, image.manifest)
            raise self._unnamed(f"no image {ref.tag!r}; it holds {self._image_names(images)}")
        return super().resolve(ref)

    def _image_names(self, images: list[Any], most: int = 10) -> str:
        """Each image as a user would name it: `docker-archive:FILE:REPO:TAG`, else `…:@N`."""
        names = [
            f"{self.transport}:{self.location}:{image.tags[0] if image.tags else f'@{n}'}"
            for n, image in enumerate(images)
        ]
        more = f" and {len(names) - most} more" if len(names) > most else ""
        return (", ".join(names[:most]) + more) or "no images"

    def _open_blob(self, digest: str) -> BinaryIO:
        self._load()
        if digest in self._manifests:
            return io.BytesIO(self._manifests[digest])
        for image in self._images or ():
            if digest in image.blobs:
                return self._tar.open(image.blobs[digest])
        raise self._not_found(f"blob {dg.short(digest)}", "BLOB_UNKNOWN")

    def _has_blob(self, digest: str) -> bool:
        self._load()
        return digest in self._manifests or any(digest in i.blobs for i in self._images or ())

    def referrers(self, repo_ref: Reference, digest: str) -> list[Descriptor]:
        return []
