"""The nydus blob trailer: finding and extracting its entries (the layer bootstrap, the TOC), and packing a
merged bootstrap into the image's bootstrap layer.

A nydus blob written with `--blob-inline-meta` ends in a tar-like trailer: each entry's data followed by
its 512-byte header, so it is read from the end. RAFS v6 blobs add a TOC (`rafs.blob.toc`) describing the
entries (possibly zstd-compressed) with their uncompressed sha256, as nydus-snapshotter reads them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
import tarfile
from typing import Any, BinaryIO

import zstandard
from isal import igzip

from accel import constants as mt
from accel import digest as dg
from accel import tarstream
from accel.drivers.nydus.tar import COPY_SIZE, TAR_BLOCK
from accel.errors import DriverError
from accel.oci import Descriptor
from accel.store import ContentStore

# Names inside the nydus blob trailer (nydus-snapshotter pkg/converter/convert_unix.go).
ENTRY_BOOTSTRAP = "image.boot"
ENTRY_TOC = "rafs.blob.toc"
BOOTSTRAP_TAR_DIR = "image"
BOOTSTRAP_TAR_NAME = f"{BOOTSTRAP_TAR_DIR}/{ENTRY_BOOTSTRAP}"

# A TOC entry is 128 bytes, little endian: flags, reserved, name[16], sha256 of the uncompressed data,
# compressed offset, compressed size, uncompressed size, reserved.
_TOC_ENTRY = struct.Struct("<II16s32sQQQ44x")
_TOC_ENTRY_SIZE = 128
_TOC_MAX_SIZE = 1 << 20
_TOC_COMPRESSOR_MASK = 0x0F
_TOC_COMPRESSOR_NONE = 0x01
_TOC_COMPRESSOR_ZSTD = 0x02


# A layer bootstrap extracted into the content store: raw RAFS metadata, needed locally by `finish`.
BOOTSTRAP_BLOB_MEDIA_TYPE = "application/octet-stream"


def bootstrap_blob(store: ContentStore, digest: str) -> Descriptor:
    """The descriptor of an extracted bootstrap in the store, as `ConvertedLayer.local_blobs` lists it."""
    return Descriptor(media_type=BOOTSTRAP_BLOB_MEDIA_TYPE, digest=digest, size=store.size(digest))


def nydus_blob(digest: str, size: int, *, ref: str | None = None) -> Descriptor:
    """The layer descriptor of a nydus blob; `ref` names the original gzip blob of a zran layer."""
    annotations = {mt.NYDUS_BLOB_ANNOTATION: "true"}
    if ref is not None:
        annotations[mt.NYDUS_REF_ANNOTATION] = ref
    return Descriptor(media_type=mt.NYDUS_BLOB, digest=digest, size=size, annotations=annotations)


@dataclasses.dataclass(frozen=True)
class TrailerEntry:
    """Facts about one entry pulled out of a nydus blob trailer."""

    digest: str  # of the extracted (uncompressed) data, as stored
    size: int
    toc_digest: str | None  # sha256 of the TOC data, which zran merges need; None without a TOC


def _find_tar_entry(f: BinaryIO, size: int, name: str) -> tuple[int, int] | None:
    """(offset, size) of `name` in the blob trailer, walking `data | header` pairs from the end."""
    wanted = name.encode()
    cursor = size - TAR_BLOCK
    while cursor >= 0:
        f.seek(cursor)
        try:
            header, _ = tarstream.parse_header_block(f.read(TAR_BLOCK))
        except tarstream.TarError:
            return None
        if header.size > cursor:
            return None
        if header.name == wanted:
            return cursor - header.size, header.size
        cursor -= header.size + TAR_BLOCK
    return None


def _copy_range(f: BinaryIO, offset: int, length: int, sink: Any) -> None:
    f.seek(offset)
    while length > 0:
        chunk = f.read(min(COPY_SIZE, length))
        if not chunk:
            raise DriverError("nydus blob is truncated")
        sink.write(chunk)
        length -= len(chunk)


def extract_trailer_entry(store: ContentStore, blob_digest: str, name: str) -> TrailerEntry:
    """Copy entry `name` (e.g. the bootstrap) out of a nydus blob in the store into its own blob.

    Like nydus-snapshotter: via the TOC when there is one (the entry may be zstd-compressed and its
    uncompressed sha256 is checked), else by walking the tar headers of the trailer (RAFS v5).
    """
    path = store.path(blob_digest)
    size = path.stat().st_size
    with path.open("rb") as f:
        toc = _find_tar_entry(f, size, ENTRY_TOC)
        if toc is not None and toc[1] <= _TOC_MAX_SIZE and toc[1] % _TOC_ENTRY_SIZE == 0:
            f.seek(toc[0])
            toc_data = f.read(toc[1])
            for start in range(0, len(toc_data), _TOC_ENTRY_SIZE):
                flags, _, raw_name, sha, offset, compressed, uncompressed = _TOC_ENTRY.unpack_from(
                    toc_data, start
                )
                if raw_name.split(b"\0", 1)[0].decode("utf-8", "replace") != name:
                    continue
                digest = _extract_toc_entry(
                    store, f, flags, offset, compressed, uncompressed, sha.hex(), name
                )
                return TrailerEntry(digest=digest, size=uncompressed, toc_digest=dg.of_bytes(toc_data))
            raise DriverError(f"nydus blob {blob_digest} has a TOC without {name}")
        found = _find_tar_entry(f, size, name)
        if found is None:
            raise DriverError(f"nydus blob {blob_digest} has no {name} in its trailer")
        with store.writer() as w:
            _copy_range(f, found[0], found[1], w)
        assert w.digest is not None
        return TrailerEntry(digest=w.digest, size=w.size, toc_digest=None)


def _extract_toc_entry(
    store: ContentStore,
    f: BinaryIO,
    flags: int,
    offset: int,
    compressed: int,
    uncompressed: int,
    sha: str,
    name: str,
) -> str:
    compressor = flags & _TOC_COMPRESSOR_MASK
    expected = f"sha256:{sha}"
    with store.writer(expected) as w:
        if compressor == _TOC_COMPRESSOR_NONE:
            _copy_range(f, offset, compressed, w)
        elif compressor == _TOC_COMPRESSOR_ZSTD:
            f.seek(offset)
            # Bound the reader to the entry: the zstd frame is followed by other trailer data.
            reader = zstandard.ZstdDecompressor().stream_reader(_BoundedReader(f, compressed))
            while chunk := reader.read(COPY_SIZE):
                w.write(chunk)
        else:
            raise DriverError(f"{name} in the nydus blob TOC uses unsupported compressor flags {flags:#x}")
    if w.size != uncompressed:
        raise DriverError(f"{name}: extracted {w.size} bytes, the TOC says {uncompressed}")
    assert w.digest is not None
    return w.digest


class _BoundedReader:
    """Reads at most `remaining` bytes from the current position of `f`."""

    def __init__(self, f: BinaryIO, remaining: int) -> None:
        self._f = f
        self._remaining = remaining

    def read(self, n: int = -1) -> bytes:
        if self._remaining <= 0:
            return b""
        n = self._remaining if n < 0 else min(n, self._remaining)
        data = self._f.read(n)
        self._remaining -= len(data)
        return data


class _HashingSink:
    """Write-through wrapper hashing the uncompressed tar (the bootstrap layer's diff_id)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, data: bytes) -> int:
        self._inner.write(data)
        self._hash.update(data)
        self._size += len(data)
        return len(data)

    def tell(self) -> int:
        return self._size

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def pack_bootstrap(store: ContentStore, merged_digest: str) -> tuple[str, int, str]:
    """gzip tar of `image/` + `image/image.boot`, like nydus-snapshotter; returns (digest, size, diff_id)."""
    bootstrap_path = store.path(merged_digest)
    with store.writer() as w:
        gz = igzip.IGzipFile(fileobj=w, mode="wb", mtime=0)  # fixed mtime: same bootstrap, same digest
        sink = _HashingSink(gz)
        with tarfile.open(fileobj=sink, mode="w", format=tarfile.USTAR_FORMAT) as tar:  # type: ignore[call-overload]
            directory = tarfile.TarInfo(BOOTSTRAP_TAR_DIR)
            directory.type = tarfile.DIRTYPE
            directory.mode = 0o755
            tar.addfile(directory)
            member = tarfile.TarInfo(BOOTSTRAP_TAR_NAME)
            member.mode = 0o444
            member.size = bootstrap_path.stat().st_size
            with bootstrap_path.open("rb") as boot:
                tar.addfile(member, boot)
        gz.close()
    assert w.digest is not None
    return w.digest, w.size, sink.digest()
