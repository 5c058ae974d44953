"""Decompressing source layers as streams, with the uncompressed digest checked on the way."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import zstandard
from zlib_ng import gzip_ng_threaded

from accel import oci
from accel.errors import DigestMismatch, LimitExceeded, UnsupportedMediaType

READ_SIZE = 1 << 20


class BackgroundDigester:
    """sha256 and size of a byte stream, hashed in order on a thread of its own.

    The stream's producer only queues references (hashlib releases the GIL on large inputs, so the hashing
    runs beside the producer on another core). Pieces must not change after `update`: pass bytes. `digest`
    waits for what is queued; `close` stops the thread (also done by `digest`).
    """

    BATCH_BYTES = 1 << 20  # bytes queued before a batch goes to the thread
    MAX_BATCHES = 4  # batches in flight before `update` waits: bounds the memory held

    def __init__(self, pool: ThreadPoolExecutor | None = None) -> None:
        """With `pool` (which must have one worker, to keep the order), hash there instead of on a thread
        of its own; the pool's owner shuts it down."""
        self._hash = hashlib.sha256()
        self.size = 0
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._in_flight: collections.deque[Future[None]] = collections.deque()
        self._pool: ThreadPoolExecutor | None = pool
        self._owns_pool = pool is None
        self._result: str | None = None

    def update(self, data: bytes) -> None:
        if not data:
            return
        self._batch.append(data)
        self._batch_bytes += len(data)
        self.size += len(data)
        if self._batch_bytes >= self.BATCH_BYTES:
            self._submit()

    def _submit(self) -> None:
        if not self._batch:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="digest")
        self._in_flight.append(self._pool.submit(self._hash_all, self._batch))
        self._batch, self._batch_bytes = [], 0
        while len(self._in_flight) > self.MAX_BATCHES:
            self._in_flight.popleft().result()

    def _hash_all(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self._hash.update(piece)

    def send(self) -> None:
        """Hand what is queued to the thread now, without waiting (before a later `digest`)."""
        self._submit()

    def digest(self) -> str:
        if self._result is None:
            self._submit()
            while self._in_flight:
                self._in_flight.popleft().result()
            self._result = "sha256:" + self._hash.hexdigest()
            self.close()
        return self._result

    def close(self) -> None:
        if self._pool is not None and self._owns_pool:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class BackgroundWriter:
    """Ordered writes to `out` on a thread of its own, for a producer that should not wait on them.

    File writes and the content store's hashing release the GIL, so they run beside the producer. At most
    MAX_PENDING writes are queued (their bytes stay referenced until written); `flush` waits for all of
    them and raises what a write raised; `close` stops the thread.
    """

    MAX_PENDING = 4

    def __init__(self, out: Any) -> None:
        self._out = out
        self._pending: collections.deque[Future[Any]] = collections.deque()
        self._pool: ThreadPoolExecutor | None = None

    def write(self, data: bytes) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self._pending.append(self._pool.submit(self._out.write, data))
        while len(self._pending) > self.MAX_PENDING:
            self._pending.popleft().result()

    def flush(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()


@dataclass(frozen=True)
class ExpansionLimits:
    """How far a compressed layer may expand: a decompression bomb stops at the limit, in seconds, instead
    of holding a worker for minutes. The ratio only applies past `ratio_floor` uncompressed bytes (small
    layers of zeros or text legitimately compress very well)."""

    max_bytes: int | None = None  # converter.limits.max_layer_size
    max_ratio: float | None = None  # converter.limits.max_expansion_ratio
    ratio_floor: int = 64 << 20
    images: tuple[ImageBudget, ...] = ()  # the images the layer is part of (converter.limits.max_image_size)

    @property
    def active(self) -> bool:
        return self.max_bytes is not None or self.max_ratio is not None or bool(self.images)

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


class ImageBudget:
    """The uncompressed bytes one image's layers may expand to together (converter.limits.max_image_size).

    Every layer of the image charges what it has streamed so far; past `max_bytes` in total the charge
    raises LimitExceeded. A layer counts once however often it is read (its largest count is kept), and the
    layers of an image stream in parallel threads, hence the lock. `known` seeds layers the run does not
    stream (converted before) with the size counted when they were."""

    def __init__(self, max_bytes: int, image: str, known: dict[str, int] | None = None) -> None:
        self.max_bytes = max_bytes
        self.image = image
        self._counted: dict[str, int] = dict(known or {})
        self._total = sum(self._counted.values())
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return self._total

    def counted(self, layer: str) -> int:
        with self._lock:
            return self._counted.get(layer, 0)

    def charge(self, layer: str, streamed: int) -> None:
        with self._lock:
            before = self._counted.get(layer, 0)
            if streamed > before:
                self._counted[layer] = streamed
                self._total += streamed - before
            total = self._total
        self.check(total)

    def check(self, total: int | None = None) -> None:
        total = self._total if total is None else total
        if total > self.max_bytes:
            raise LimitExceeded(
                f"image {self.image} expands to more than {self.max_bytes:,} bytes "
                "(converter.limits.max_image_size)"
            )


class DigestingReader(io.RawIOBase):
    """Read-through wrapper that hashes every byte it hands out (on a background thread)."""

    def __init__(self, inner: BinaryIO, on_read: Callable[[int], None] | None = None) -> None:
        self._inner = inner
        self.digester = BackgroundDigester()
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
        # Inflated on a reader thread of its own (zlib-ng releases the GIL there): the converter's thread
        # only takes the blocks.
        return gzip_ng_threaded.open(raw, "rb", threads=1)  # type: ignore[return-value]
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
    if limits is not None and limits.active:
        compressed = path.stat().st_size
        what = f"layer {path.name[:12]}"

        def on_read(total: int) -> None:
            limits.check(total, compressed, what)
            for image in limits.images:
                image.charge(path.name, total)  # keyed by the blob's hex digest

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
        reader.digester.close()
        inner.close()
