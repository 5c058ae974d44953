"""Ordered parallel zstd frame writer: independent frames compressed in a bounded pool, written in order."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import zstandard

from accel import digest as dg

LARGE_FRAME = 4 << 20  # frames above this are compressed as a stream instead of in one pool job
MAX_PENDING_BYTES = 32 << 20  # uncompressed bytes queued for the pool before the writer waits


class SupportsWrite(Protocol):
    def write(self, data: bytes, /) -> int: ...


FrameCallback = Callable[[int, int], None]  # (start offset, end offset) of the written frame


class FrameWriter:
    """Writes independent zstd frames in order while compressing them in a bounded thread pool.

    Every uncompressed byte passes through `Frame.write` in stream order, so the writer also hashes the
    uncompressed stream (which must equal the source tar).
    """

    def __init__(self, out: SupportsWrite, level: int, workers: int) -> None:
        self._out = out
        self._level = level
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zstdchunked")
        self._local = threading.local()
        self._pending: collections.deque[tuple[Future[bytes], int, FrameCallback | None]] = (
            collections.deque()
        )
        self._pending_bytes = 0
        self._workers = workers
        self.offset = 0
        self.uncompressed = dg.Digester()

    def _compressor(self) -> zstandard.ZstdCompressor:
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = zstandard.ZstdCompressor(level=self._level, write_checksum=True)
            self._local.compressor = compressor
        return compressor

    def _compress(self, data: bytes) -> bytes:
        return self._compressor().compress(data)

    def frame(self) -> Frame:
        return Frame(self)

    def write_raw(self, data: bytes) -> None:
        """Bytes outside any compressed frame (skippable frames); everything queued is written first."""
        self.drain()
        self._emit(data)

    def _emit(self, data: bytes) -> None:
        self._out.write(data)
        self.offset += len(data)

    def _submit(self, data: bytes, on_written: FrameCallback | None) -> None:
        self._pending.append((self._pool.submit(self._compress, data), len(data), on_written))
        self._pending_bytes += len(data)
        while self._pending_bytes > MAX_PENDING_BYTES:
            self._write_oldest()

    def _write_oldest(self) -> None:
        future, size, on_written = self._pending.popleft()
        self._pending_bytes -= size
        start = self.offset
        self._emit(future.result())
        if on_written is not None:
            on_written(start, self.offset)

    def drain(self) -> None:
        while self._pending:
            self._write_oldest()

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _stream_compressor(self) -> zstandard.ZstdCompressionObj:
        # Large frames: libzstd's own worker threads compress one frame in parallel, with bounded memory.
        threads = self._workers if self._workers > 1 else 0
        return zstandard.ZstdCompressor(level=self._level, write_checksum=True, threads=threads).compressobj()


class Frame:
    """One zstd frame being built; small frames go to the pool on close, large ones are streamed."""

    def __init__(self, writer: FrameWriter) -> None:
        self._writer = writer
        self._parts: list[bytes] = []
        self._size = 0
        self._stream: zstandard.ZstdCompressionObj | None = None
        self._start = 0

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._writer.uncompressed.update(data)
        self._size += len(data)
        if self._stream is not None:
            self._emit(self._stream.compress(data))
            return
        self._parts.append(data)
        if self._size > LARGE_FRAME:
            self._writer.drain()
            self._start = self._writer.offset
            self._stream = self._writer._stream_compressor()
            for part in self._parts:
                self._emit(self._stream.compress(part))
            self._parts = []

    def _emit(self, data: bytes) -> None:
        if data:
            self._writer._emit(data)

    def close(self, on_written: FrameCallback | None = None) -> None:
        """Finish the frame. An empty frame writes nothing (like the reference) and gets no callback."""
        if self._stream is not None:
            self._emit(self._stream.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))
            if on_written is not None:
                on_written(self._start, self._writer.offset)
        elif self._size:
            self._writer._submit(b"".join(self._parts), on_written)
        self._parts = []
        self._stream = None
