"""Ordered parallel zstd frame writer: independent frames compressed in a bounded pool, written in order.

Small frames (most of them, on real file trees) travel to the pool in batches, so a tar header or a small
file costs a list append rather than a future; the pool also takes their sha256 when asked, off the
thread that parses the tar.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import zstandard

from accel.compression import BackgroundDigester, BackgroundWriter

LARGE_FRAME = 4 << 20  # frames above this are compressed as a stream instead of in one pool job
# Uncompressed bytes queued for the pool before the writer waits; 16 MiB held 45 MiB more and was no faster,
# and 4 MiB held ~10 MiB more than 2 MiB in the one-time runner (two conversions at once), no faster either.
MAX_PENDING_BYTES = 2 << 20
BATCH_BYTES = 256 << 10  # small frames are sent to the pool together until they add up to this
BATCH_FRAMES = 256
OUTPUT_BYTES = 1 << 20  # compressed bytes gathered before one write to the output


class SupportsWrite(Protocol):
    def write(self, data: bytes, /) -> int: ...


# (start offset, end offset, sha256 of the uncompressed frame or None) of the written frame
FrameCallback = Callable[[int, int, "bytes | None"], None]

Buffer = bytes | memoryview
# (the uncompressed frame, or its pieces to join on the pool thread; wants its digest; callback)
_Job = tuple["Buffer | list[Buffer]", bool, "FrameCallback | None"]


class FrameWriter:
    """Writes independent zstd frames in order while compressing them in a bounded thread pool.

    Every uncompressed byte passes through `Frame.write` in stream order, so the writer also hashes the
    uncompressed stream (which must equal the source tar), on a background thread.
    """

    def __init__(self, out: SupportsWrite, level: int, workers: int) -> None:
        self._out = BackgroundWriter(out)
        self._level = level
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zstdchunked")
        self._local = threading.local()
        self._pending: collections.deque[tuple[Future[list[tuple[bytes, bytes | None]]], list[_Job], int]] = (
            collections.deque()
        )
        self._pending_bytes = 0
        self._batch: list[_Job] = []
        self._batch_bytes = 0
        self._output: list[bytes] = []
        self._output_bytes = 0
        self._workers = workers
        self.offset = 0
        self.uncompressed = BackgroundDigester()

    def _compressor(self) -> zstandard.ZstdCompressor:
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = zstandard.ZstdCompressor(level=self._level, write_checksum=True)
            self._local.compressor = compressor
        return compressor

    def _compress_batch(self, jobs: list[_Job]) -> list[tuple[bytes, bytes | None]]:
        compress = self._compressor().compress
        results = []
        for data, digest, _ in jobs:
            frame = b"".join(data) if isinstance(data, list) else data
            results.append((compress(frame), hashlib.sha256(frame).digest() if digest else None))
        return results

    def frame(self, digest: bool = False) -> Frame:
        """A new frame; with `digest`, its callback gets the sha256 of its uncompressed bytes."""
        return Frame(self, digest)

    def whole_frame(self, data: Buffer, digest: bool, on_written: FrameCallback | None) -> None:
        """A frame whose bytes are all at hand: what `frame()`, one `write` and `close` do, with less work
        per frame (most chunks are written this way). `data` must not change afterwards."""
        if len(data) > LARGE_FRAME or not data:
            frame = self.frame(digest)
            frame.write(data)
            frame.close(on_written)
            return
        self.uncompressed.update(data)
        self._submit(data, len(data), digest, on_written)

    def write_raw(self, data: bytes) -> None:
        """Bytes outside any compressed frame (skippable frames); everything queued is written first."""
        self.drain()
        self._emit(data)
        self._flush_output()
        self._out.flush()

    def _emit(self, data: bytes) -> None:
        # Small frames are gathered into one write: every `out.write` also costs a hash update and a call.
        self._output.append(data)
        self._output_bytes += len(data)
        self.offset += len(data)
        if self._output_bytes >= OUTPUT_BYTES:
            self._flush_output()

    def _flush_output(self) -> None:
        if self._output:
            self._out.write_parts(self._output)  # joined (when small) and written on the writer thread
            self._output, self._output_bytes = [], 0

    def _submit(
        self, data: Buffer | list[Buffer], size: int, digest: bool, on_written: FrameCallback | None
    ) -> None:
        self._batch.append((data, digest, on_written))
        self._batch_bytes += size
        if self._batch_bytes >= BATCH_BYTES or len(self._batch) >= BATCH_FRAMES:
            self._submit_batch()

    def _submit_batch(self) -> None:
        if not self._batch:
            return
        batch, size = self._batch, self._batch_bytes
        self._batch, self._batch_bytes = [], 0
        self._pending.append((self._pool.submit(self._compress_batch, batch), batch, size))
        self._pending_bytes += size
        while self._pending_bytes > MAX_PENDING_BYTES:
            self._write_oldest()

    def _write_oldest(self) -> None:
        future, jobs, size = self._pending.popleft()
        self._pending_bytes -= size
        for (compressed, digest), (_, _, on_written) in zip(future.result(), jobs, strict=True):
            start = self.offset
            self._emit(compressed)
            if on_written is not None:
                on_written(start, self.offset, digest)

    def drain(self) -> None:
        """Write out every queued frame."""
        self._submit_batch()
        while self._pending:
            self._write_oldest()
        self._flush_output()
        self._out.flush()

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._out.close()
            self.uncompressed.close()

    def _stream_compressor(self) -> zstandard.ZstdCompressionObj:
        # Large frames: libzstd's own worker threads compress one frame in parallel, with bounded memory.
        threads = self._workers if self._workers > 1 else 0
        return zstandard.ZstdCompressor(level=self._level, write_checksum=True, threads=threads).compressobj()


class Frame:
    """One zstd frame being built; small frames go to the pool on close, large ones are streamed."""

    def __init__(self, writer: FrameWriter, digest: bool) -> None:
        self._writer = writer
        self._digest = digest
        self._parts: list[Buffer] = []
        self._size = 0
        self._stream: zstandard.ZstdCompressionObj | None = None
        self._stream_hash: Any = None
        self._start = 0

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: Buffer) -> None:
        """Append bytes to the frame; `data` must not change afterwards (it is queued by reference)."""
        if not data:
            return
        self._writer.uncompressed.update(data)
        self._size += len(data)
        if self._stream is not None:
            self._stream_data(data)
            return
        self._parts.append(data)
        if self._size > LARGE_FRAME:
            self._writer.drain()
            self._start = self._writer.offset
            self._stream = self._writer._stream_compressor()
            self._stream_hash = hashlib.sha256() if self._digest else None
            for part in self._parts:
                self._stream_data(part)
            self._parts = []

    def _stream_data(self, data: Buffer) -> None:
        assert self._stream is not None
        if self._stream_hash is not None:
            self._stream_hash.update(data)
        self._emit(self._stream.compress(data))

    def _emit(self, data: bytes) -> None:
        if data:
            self._writer._emit(data)

    def close(self, on_written: FrameCallback | None = None) -> None:
        """Finish the frame. An empty frame writes nothing (like the reference) and gets no callback."""
        if self._stream is not None:
            self._emit(self._stream.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))
            if on_written is not None:
                digest = self._stream_hash.digest() if self._stream_hash is not None else None
                on_written(self._start, self._writer.offset, digest)
        elif self._size:
            data = self._parts[0] if len(self._parts) == 1 else self._parts  # joined on the pool thread
            self._writer._submit(data, self._size, self._digest, on_written)
        self._parts = []
        self._stream = None
        self._stream_hash = None
