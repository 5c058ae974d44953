"""Decompressing source layers as streams, with the uncompressed digest checked on the way."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard
from isal import igzip

from accel import digest as dg
from accel import oci
from accel.errors import DigestMismatch, LimitExceeded, UnsupportedMediaType

READ_SIZE = 1 << 20


@dataclass(frozen=True)
class ExpansionLimits:
    """How far a compressed layer may expand: a decompression bomb stops at the limit, in seconds, instead
    of holding a worker for minutes. The ratio only applies past `ratio_floor` uncompressed bytes (small
    layers of zeros or text legitimately compress very well)."""

    max_bytes: int | None = None  # converter.limits.max_layer_size
    max_ratio: float | None = None  # converter.limits.max_expansion_ratio
    ratio_floor: int = 64 << 20

    def check(self, uncompressed: int, compressed: int, what: str) -> None:
        if self.max_bytes is not None and uncompressed > self.max_bytes:
            raise LimitExceeded(
                f"{what} expands to more than {self.max_bytes:,} bytes (converter.limits.max_layer_size)"
            )
        if (
            self.max_ratio is not None
            and uncompressed > self.ratio_floor
            and uncompressed > self.max_ratio * max(compressed, 1)
        ):
            raise LimitExceeded(
                f"{what} expands more than {self.max_ratio:g} times its compressed {compressed:,} bytes "
                "(converter.limits.max_expansion_ratio)"
            )


class DigestingReader(io.RawIOBase):
    """Read-through wrapper that hashes every byte it hands out."""

    def __init__(self, inner: BinaryIO, on_read: Callable[[int], None] | None = None) -> None:
        self._inner = inner
        self.digester = dg.Digester()
        self._on_read = on_read
        self.total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        if not data:
            return 0
        n = len(data)
        self.total += n
        if self._on_read is not None:
            self._on_read(self.total)  # may raise: the bytes past a limit are never handed out
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
def open_uncompressed(
    path: Path,
    media_type: str,
    expected_diff_id: str | None = None,
    limits: ExpansionLimits | None = None,
) -> Iterator[BinaryIO]:
    """Yield the layer's tar stream. On clean exit the rest is drained and the DiffID checked. Reading
    past `limits` raises LimitExceeded."""
    inner = _decompressor(path, media_type)
    on_read = None
    if limits is not None and (limits.max_bytes is not None or limits.max_ratio is not None):
        compressed = path.stat().st_size
        what = f"layer {path.name[:12]}"

        def on_read(total: int) -> None:
            limits.check(total, compressed, what)

    reader = DigestingReader(inner, on_read)
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
