"""Consecutive gzip members, compressed on a bounded thread pool (ISA-L and zlib-ng release the GIL) in order.

Each member is first deflated with ISA-L at its fastest level (about 1.4 s/GiB on random data, where zlib-ng
takes 13-25 s/GiB at levels 1-9). A member that this saves less than FAST_PATH_SAVING of is kept as ISA-L
wrote it: deflate cannot shrink such data (already compressed files, random bytes), and zlib-ng at any
level would make it no smaller (random data: ISA-L 1.00038 of its size, zlib-ng 9 1.00032, zlib-ng 1
1.055). Every other member is compressed again with zlib-ng at the configured level, so for compressible
data `compression_level` means what it always meant (the same bytes as zlib-ng at that level); a member
whose first SAMPLE_BYTES already compress well goes there without the trial. Both steps are deterministic,
so the blob is a function of the input and the options. Level 0 (stored) skips the trial, and so does a
member larger than MEMBER_BUFFER_LIMIT (only with a chunk size above it): it is streamed through zlib-ng
at the level.
"""

from __future__ import annotations

import collections
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from isal import isal_zlib
from zlib_ng import zlib_ng

from accel.compression import BackgroundDigester, BackgroundWriter
from accel.store import BlobWriter

# A member buffered beyond this is compressed inline instead of on the pool, so a huge chunk size or a
# long run of headers never sits in memory whole.
MEMBER_BUFFER_LIMIT = 16 << 20
WORKERS = max(1, min(8, os.cpu_count() or 1))
BATCH_BYTES = 256 << 10  # small members are sent to the pool together until they add up to this
BATCH_MEMBERS = 256
_GZIP_WBITS = 31  # deflate with a gzip header and trailer
FAST_LEVEL = 1  # ISA-L's level for the trial: its fastest that still finds matches (level 0 is Huffman only)
# A member the trial shrinks by less than this is incompressible enough to keep the trial's output. On the
# Debian rootfs tars this keeps the blob within 0.1 % of zlib-ng level 9 (README: Benchmarks, eStargz).
FAST_PATH_SAVING = 0.03
# A larger member whose first SAMPLE_BYTES the trial shrinks by SAMPLE_SAVING or more goes to zlib-ng without
# a trial of the whole (most compressible members: the trial was 4 % of their cost at level 9). A member
# compressible only in its sample is then compressed better than needed, never worse.
SAMPLE_BYTES = 16 << 10
SAMPLE_SAVING = 0.10


def compress_member(pieces: list[bytes], level: int) -> bytes:
    """One gzip member of `pieces`: ISA-L's fast output when it saves less than FAST_PATH_SAVING, else
    zlib-ng at `level` (level 0: stored, no trial).

    The member is compressed in one call, so its bytes do not depend on how its content was split into
    pieces (zlib-ng's level 1 does depend on it)."""
    data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
    if level > 0 and not _sample_is_compressible(data):
        fast = isal_zlib.compress(data, FAST_LEVEL, wbits=_GZIP_WBITS)
        if len(fast) > len(data) * (1 - FAST_PATH_SAVING):
            return fast
    compressor = zlib_ng.compressobj(level, zlib_ng.DEFLATED, _GZIP_WBITS)
    return compressor.compress(data) + compressor.flush()


def _sample_is_compressible(data: bytes) -> bool:
    if len(data) <= SAMPLE_BYTES:
        return False  # the trial of the whole costs no more than a sample's
    sample = memoryview(data)[:SAMPLE_BYTES]
    return len(isal_zlib.compress(sample, FAST_LEVEL, wbits=-15)) <= SAMPLE_BYTES * (1 - SAMPLE_SAVING)


def _compress_members(members: list[list[bytes]], level: int) -> list[bytes]:
    """Each member (a list of pieces) as one gzip member."""
    return [compress_member(pieces, level) for pieces in members]


class GzipMembers:
    """Writes consecutive gzip members to `out`, compressing buffered members on a bounded thread pool.

    Uncompressed bytes go into the current member through `write`; `new_member` ends it. Members are
    written in order. `offsets[i]` is member i's compressed offset once it has been written, and
    `uncompressed` hashes every uncompressed byte in order (the DiffID of the whole blob) on a background
    thread. Small members (a file or a run of headers, on real file trees) go to the pool in batches, so
    each costs a list append here rather than a future, and their output reaches `out` in one write.
    """

    def __init__(self, out: BlobWriter, level: int, digest_pool: ThreadPoolExecutor | None = None) -> None:
        """`digest_pool` (one worker) hashes the uncompressed bytes when given, else a thread of their own."""
        self._out = BackgroundWriter(out)  # the file and its hash are written beside this thread
        self._level = level
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="estargz-gzip")
        self._in_flight: collections.deque[Future[list[bytes]]] = collections.deque()
        self._max_in_flight = 2 * WORKERS
        self._pieces: list[bytes] = []
        self._buffered = 0
        self._batch: list[list[bytes]] = []
        self._batch_bytes = 0
        self._inline: Any = None  # the compressor of an oversized member compressed on this thread
        self._offset = out.tell()
        self.current = 0  # index of the member being filled
        self.offsets: list[int] = []
        self.uncompressed = BackgroundDigester(digest_pool)

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.uncompressed.update(data)
        if self._inline is not None:
            self._emit(self._inline.compress(data))
            return
        self._pieces.append(data)
        self._buffered += len(data)
        if self._buffered > MEMBER_BUFFER_LIMIT:
            self._compress_inline()

    def new_member(self) -> int:
        """End the current member (unless it is still empty); return the index of the next one."""
        if self._inline is not None:
            self._emit(self._inline.flush())
            self._inline = None
            self.current += 1
        elif self._pieces:
            self._batch.append(self._pieces)
            self._batch_bytes += self._buffered
            self._pieces, self._buffered = [], 0
            self.current += 1
            if self._batch_bytes >= BATCH_BYTES or len(self._batch) >= BATCH_MEMBERS:
                self._submit_batch()
        return self.current

    def drain(self) -> None:
        """End the current member and write every member still being compressed."""
        self.new_member()
        self._submit_batch()
        while self._in_flight:
            self._write_oldest()
        self._out.flush()

    def close(self) -> None:
        for future in self._in_flight:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._out.close()
        self.uncompressed.close()

    def _submit_batch(self) -> None:
        if not self._batch:
            return
        self._in_flight.append(self._pool.submit(_compress_members, self._batch, self._level))
        self._batch, self._batch_bytes = [], 0
        while len(self._in_flight) > self._max_in_flight:
            self._write_oldest()

    def _write_oldest(self) -> None:
        members = self._in_flight.popleft().result()
        for member in members:
            self.offsets.append(self._offset)
            self._offset += len(member)
        self._out.write(members[0] if len(members) == 1 else b"".join(members))

    def _emit(self, data: bytes) -> None:
        self._out.write(data)
        self._offset += len(data)

    def _compress_inline(self) -> None:
        self._submit_batch()
        while self._in_flight:  # everything before this member must be in the file first
            self._write_oldest()
        self.offsets.append(self._offset)
        self._inline = zlib_ng.compressobj(self._level, zlib_ng.DEFLATED, _GZIP_WBITS)
        for piece in self._pieces:
            self._emit(self._inline.compress(piece))
        self._pieces, self._buffered = [], 0
