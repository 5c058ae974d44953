"""Decompressing source layers as streams, with the uncompressed digest checked on the way."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import zstandard
from isal import igzip

from accel import digest as dg
from accel import oci
from accel.errors import DigestMismatch, UnsupportedMediaType

READ_SIZE = 1 << 20


class DigestingReader(io.RawIOBase):
    """Read-through wrapper that hashes every byte it hands out."""

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner
        self.digester = dg.Digester()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        if not data:
            return 0
        n = len(data)
        buffer[:n] = data
        self.digester.update(data)
        return n


def _decompressor(path: Path, media_type: str) -> BinaryIO:
    raw = path.open("rb")
    if oci.is_gzip_layer(media_type):
        return igzip.IGzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if oci.is_zstd_layer(media_type):
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)  # type: ignore[return-value]
    if oci.is_plain_tar_layer(media_type):
        return raw
    raw.close()
    raise UnsupportedMediaType(f"cannot decompress layer media type {media_type!r}")


@contextlib.contextmanager
def open_uncompressed(path: Path, media_type: str, expected_diff_id: str | None = None) -> Iterator[BinaryIO]:
    """Yield the layer's tar stream. On clean exit the rest is drained and the DiffID checked."""
    inner = _decompressor(path, media_type)
    reader = DigestingReader(inner)
    buffered = io.BufferedReader(reader, buffer_size=READ_SIZE)
    try:
        yield buffered  # type: ignore[misc]
        while buffered.read(READ_SIZE):
            pass
        if expected_diff_id is not None and reader.digester.digest() != expected_diff_id:
            raise DigestMismatch(
                expected_diff_id, reader.digester.digest(), f"uncompressed layer {path.name}"
            )
    finally:
        inner.close()
