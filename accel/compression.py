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
from queue import Empty, Full, Queue
from typing import Any, BinaryIO

import zstandard
from isal import igzip

from accel import cancel, oci
from accel.errors import DigestMismatch, LimitExceeded, UnsupportedMediaType
from accel.tarstream import EntryLimit

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

    def write_parts(self, parts: list[bytes]) -> None:
        """Write `parts` in order as one queued job. Small parts are joined on the writer thread, large ones
        written as they are: the producer's thread pays neither the copy nor the writes."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self._pending.append(self._pool.submit(self._write_parts, parts))
        while len(self._pending) > self.MAX_PENDING:
            self._pending.popleft().result()

    SMALL_PART = 16 << 10  # parts below this are gathered into one write

    def _write_parts(self, parts: list[bytes]) -> None:
        small: list[bytes] = []
        for part in parts:
            if len(part) < self.SMALL_PART:
                small.append(part)
                continue
            if small:
                self._out.write(b"".join(small))
                small = []
            self._out.write(part)
        if small:
            self._out.write(b"".join(small))

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
    layers of zeros or text legitimately compress very well). `max_entries` bounds the tar entries, which
    the drivers count as they walk the tar (`entry_limit`): a layer of a million empty files is small in
    bytes but not in what a conversion keeps per entry."""

    max_bytes: int | None = None  # converter.limits.max_layer_size
    max_ratio: float | None = None  # converter.limits.max_expansion_ratio
    ratio_floor: int = 64 << 20
    images: tuple[ImageBudget, ...] = ()  # the images the layer is part of (converter.limits.max_image_size)
    max_entries: int | None = None  # converter.limits.max_entries

    def entry_limit(self, layer: str) -> EntryLimit | None:
        """converter.limits.max_entries for the layer of digest `layer`; a failure names it and its images."""
        if self.max_entries is None:
            return None
        images = ", ".join(image.image for image in self.images)
        return EntryLimit(self.max_entries, f"layer {layer}" + (f" of {images}" if images else ""))

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


def _decompressor(raw: BinaryIO, media_type: str) -> BinaryIO:
    if oci.is_gzip_layer(media_type):
        # ISA-L inflates faster than zlib-ng (6 % less CPU for a whole conversion of mostly random data);
        # both release the GIL while they inflate, so PrefetchingReader's thread runs beside the consumer.
        return igzip.open(raw, "rb")  # type: ignore[return-value]
    if oci.is_zstd_layer(media_type):
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)  # type: ignore[return-value]
    if oci.is_plain_tar_layer(media_type):
        return raw
    raw.close()
    raise UnsupportedMediaType(f"cannot decompress layer media type {media_type!r}")


class _End:
    """Queue marker: the stream ended, or the reader thread failed with `error`."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class PrefetchingReader(io.BufferedIOBase):
    """A decompressed stream read ahead in blocks on a thread of its own, and handed out with as few copies
    as possible: a read of a whole block returns that block itself.

    The thread inflates (ISA-L, zstandard and file reads release the GIL), so the consumer's thread only
    takes finished blocks. Each block is passed to `on_block` (hashing, limit checks; it may raise) before
    any of its bytes are handed out. `close` stops the thread; the caller closes `inner` after that.
    """

    QUEUE_BLOCKS = 2  # blocks read ahead: bounds the memory held (4 were no faster on 2 cores)

    def __init__(
        self, inner: BinaryIO, on_block: Callable[[bytes], None], block_size: int = READ_SIZE
    ) -> None:
        super().__init__()
        self._inner = inner
        self._on_block = on_block
        self._block_size = block_size
        self._queue: Queue[bytes | _End] = Queue(self.QUEUE_BLOCKS)
        self._stopping = threading.Event()
        self._block = b""
        self._pos = 0
        self._ended = False
        # In the consumer's context: a cancellation of its work stops the read ahead too (accel.cancel).
        self._thread = threading.Thread(
            target=cancel.in_this_context(self._read_ahead), name="layer-reader", daemon=True
        )
        self._thread.start()

    def _read_ahead(self) -> None:
        try:
            while not self._stopping.is_set():
                cancel.check()
                data = self._inner.read(self._block_size)
                if not data:
                    break
                self._put(bytes(data) if not isinstance(data, bytes) else data)
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(_End(exc))
            return
        self._put(_End())

    def _put(self, item: bytes | _End) -> None:
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except Full:
                continue

    def _next_block(self) -> bool:
        """Make the next block current; False at the end of the stream."""
        if self._ended:
            return False
        if self.closed:
            raise ValueError("read from a closed PrefetchingReader")
        cancel.check()
        item = self._queue.get()
        if isinstance(item, _End):
            self._ended = True
            if item.error is not None:
                raise item.error
            return False
        self._on_block(item)
        self._block, self._pos = item, 0
        return True

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1, /) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(READ_SIZE), b""))
        available = len(self._block) - self._pos
        if not available and (size == 0 or not self._next_block()):
            return b""
        available = len(self._block) - self._pos
        if size <= available:
            if self._pos == 0 and size == available:
                data = self._block  # the whole block: no copy
            else:
                data = self._block[self._pos : self._pos + size]
            self._pos += size
            return data
        # Views, so that the join is the only copy.
        parts = [memoryview(self._block)[self._pos :]]
        wanted = size - available
        self._block, self._pos = b"", 0
        while wanted and self._next_block():
            take = min(wanted, len(self._block))
            parts.append(memoryview(self._block)[:take])
            self._pos = take
            wanted -= take
        return b"".join(parts)

    def read1(self, size: int = -1, /) -> bytes:
        """Up to `size` bytes from the current block (the next one when it is used up)."""
        if self._pos >= len(self._block) and not self._next_block():
            return b""
        available = len(self._block) - self._pos
        return self.read(available if size is None or size < 0 else min(size, available))

    def peek(self, size: int = 0, /) -> bytes:
        if self._pos >= len(self._block) and not self._next_block():
            return b""
        return self._block[self._pos :]

    def close(self) -> None:
        if not self.closed:
            self._stopping.set()
            with contextlib.suppress(Empty):
                while True:  # make room for a blocked `put`
                    self._queue.get_nowait()
            self._thread.join()
        super().close()


@contextlib.contextmanager
def open_uncompressed(
    path: Path,
    media_type: str,
    expected_diff_id: str | None = None,
    limits: ExpansionLimits | None = None,
    *,
    raw: BinaryIO | None = None,
    compressed_size: int | None = None,
) -> Iterator[BinaryIO]:
    """Yield the layer's tar stream. On clean exit the rest is drained and the DiffID checked (without
    `expected_diff_id` nothing is hashed: a caller that hashes what it consumes checks it itself). Reading
    past `limits` raises LimitExceeded. The compressed bytes are `path`'s, or `raw`'s when given (a blob
    still arriving: `ContentStore.open_following`; `compressed_size` is then its size, for the limits)."""
    compressed_stream = path.open("rb") if raw is None else raw
    inner = _decompressor(compressed_stream, media_type)
    on_read = None
    if limits is not None and limits.active:
        compressed = path.stat().st_size if compressed_size is None else compressed_size
        what = f"layer {path.name[:12]}"

        def on_read(total: int) -> None:
            limits.check(total, compressed, what)
            for image in limits.images:
                image.charge(path.name, total)  # keyed by the blob's hex digest

    digester = BackgroundDigester()
    total = 0

    def on_block(block: bytes) -> None:
        nonlocal total
        total += len(block)
        if on_read is not None:
            on_read(total)  # may raise: the bytes past a limit are never handed out
        if expected_diff_id is not None:
            digester.update(block)

    reader = PrefetchingReader(inner, on_block)
    try:
        yield reader  # type: ignore[misc]
        while reader.read(READ_SIZE):
            pass
        if expected_diff_id is not None and digester.digest() != expected_diff_id:
            raise DigestMismatch(expected_diff_id, digester.digest(), f"uncompressed layer {path.name}")
    finally:
        reader.close()
        digester.close()
        inner.close()
        compressed_stream.close()  # a gzip reader leaves the file it was given open
