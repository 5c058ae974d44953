"""The zstd:chunked layer writer: tar members → header/payload frames, TOC, tar-split and footer."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, Literal

import zstandard

from accel import constants as mt
from accel import digest as dg
from accel import tarstream
from accel.compression import BackgroundDigester
from accel.drivers.toctypes import TOC_TYPE_CHUNK
from accel.drivers.zstdchunked import rollsum
from accel.drivers.zstdchunked.crc64 import Crc64
from accel.drivers.zstdchunked.footer import (
    MANIFEST_TYPE_CRFS,
    SKIPPABLE_FRAME_HEADER_SIZE,
    AnyFooter,
    LegacyZstdChunkedFooter,
    ZstdChunkedFooter,
    skippable_frame,
)
from accel.drivers.zstdchunked.frames import Frame, FrameWriter, SupportsWrite
from accel.drivers.zstdchunked.rollsum import DataPiece, FileChunker, ZeroRun
from accel.drivers.zstdchunked.tarsplit import TARSPLIT_MAX_SEGMENT, TarSplitWriter
from accel.drivers.zstdchunked.toc import CHUNK_TYPE_ZEROS, TOC_VERSION, TocEntry
from accel.errors import DriverError
from accel.trees import normalize_path

READ_SIZE = 1 << 20
MAX_PENDING_FILE_DIGESTS = 4  # files whose whole-file hash may still be running (each holds <= 5 MiB)
FIRST_CHUNK_KEPT = 4 << 20  # a first chunk longer than this is hashed as the whole-file digest right away

# Which readers the layer is written for (the blob differs only in its footer and in single-chunk files'
# chunkDigest; the descriptor's annotations differ, see `_annotations`):
# - "containers-storage": the current format (64-byte "GNUlInUx" footer, io.github.containers.* keys);
#   podman/CRI-O (containers/storage >= 1.45) pull it in part.
# - "stargz": what stargz-snapshotter's estargz/zstdchunked writes and reads (40-byte "GnUlInUx" footer,
#   io.containers.* keys, the stargz TOC digest, a chunkDigest on every data entry so its verifier accepts
#   the TOC); containerd + stargz-snapshotter and containers/storage <= 1.44 (podman 4.3) pull it in part.
# One descriptor cannot carry both: containers/storage refuses a layer with both the io.github.containers
# checksum and the stargz TOC digest, and stargz-snapshotter mounts nothing without the TOC digest (unless
# its verification is switched off).
Variant = Literal["containers-storage", "stargz"]
VARIANTS: tuple[Variant, ...] = ("containers-storage", "stargz")


@dataclasses.dataclass(frozen=True)
class ZstdChunkedResult:
    annotations: dict[str, str]
    footer: AnyFooter
    uncompressed_digest: str
    uncompressed_size: int
    toc_entries: int


# --- the writer ---------------------------------------------------------------------------------------------


class _LayerWriter:
    def __init__(self, out: SupportsWrite, level: int, workers: int, variant: Variant) -> None:
        self.level = level
        self.variant = variant
        self.frames = FrameWriter(out, level, workers)
        self.tarsplit = TarSplitWriter(level)
        self.entries: list[TocEntry] = []
        # Filled in after the last frame is written, when the pool has hashed every chunk:
        self.single_chunk_files: list[TocEntry] = []  # file digest = its only chunk's digest
        self.drop_chunk_digest: list[TocEntry] = []  # single-chunk entries carry no chunk fields
        self.frame = self.frames.frame()  # the open frame holding headers and padding
        # Whole-file digests of multi-chunk files, hashed in order on one thread beside this one.
        self.file_hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="file-digest")
        self.pending_file_digests: collections.deque[tuple[TocEntry, BackgroundDigester]] = (
            collections.deque()
        )

    def _resolve_oldest_file_digest(self) -> None:
        entry, file_digest = self.pending_file_digests.popleft()
        entry.digest = file_digest.digest()

    def close(self) -> None:
        try:
            self.frames.close()
        finally:
            self.file_hashing.shutdown(wait=True, cancel_futures=True)

    def member(self, member: tarstream.TarMember, pending_padding: bytes) -> None:
        entry = TocEntry.from_header(member.header)
        segment = pending_padding + member.header_bytes
        self.tarsplit.add_segment(segment)
        self.frame.write(segment)
        crc = Crc64() if member.header.size > 0 else None
        entries = [entry]
        if member.data_size:
            self._payload(member, entry, entries, crc)
        self.tarsplit.add_file(member.header.name, member.header.size, crc.digest() if crc else None)
        self.entries.extend(entries)

    def _refuse_unresolvable_hardlinks(self) -> None:
        """The reference reader (containers/storage's chunked differ) creates a hardlink from the TOC within
        the layer and fails on one to a file of a lower layer: refuse it by name (as eStargz and Nydus do)."""
        names = {normalize_path(entry.name) for entry in self.entries if entry.type != TOC_TYPE_CHUNK}
        for entry in self.entries:
            if entry.type == "hardlink" and normalize_path(entry.linkName) not in names:
                raise DriverError(
                    f"tar entry {entry.name!r} is a hardlink to {entry.linkName!r}, which is not in this "
                    "layer: the zstd:chunked reference reader cannot apply such a layer (a hardlink to a "
                    "file of a lower layer); refused"
                )

    def _payload(
        self, member: tarstream.TarMember, entry: TocEntry, entries: list[TocEntry], crc: Crc64 | None
    ) -> None:
        self.frame.close()  # the header frame ends where the payload starts
        if member.data_size <= READ_SIZE:  # most files: the whole payload in one read
            data = member.read()
            if crc is not None:
                crc.update(data)
            self._whole_payload(data, entry, entries)
        else:
            self._chunked_payload(member.iter_data(READ_SIZE), entry, entries, crc)
        self.frame = self.frames.frame()

    def _whole_payload(self, data: bytes, entry: TocEntry, entries: list[TocEntry]) -> None:
        """A payload at hand (at most READ_SIZE, so no frame is streamed): its chunks from one call, one
        frame each, with the same entries `_chunked_payload` makes but without the chunker's events and a
        frame object per chunk (per-chunk Python work showed on layers of many small files)."""
        chunks = rollsum.whole_file_chunks(data)
        if len(chunks) == 1:  # one chunk: its digest is the file's; no chunk fields (see _chunked_payload)

            def written(start: int, end: int, digest: bytes | None) -> None:
                assert digest is not None
                entry.offset, entry.endOffset = start, end
                entry.chunkDigest = "sha256:" + digest.hex()

            self.frames.whole_frame(data, True, written)
            self.single_chunk_files.append(entry)
            self.drop_chunk_digest.append(entry)
            return
        file_digest = BackgroundDigester(self.file_hashing)
        file_digest.update(data)
        view = memoryview(data)
        start = 0
        for end, zeros in chunks:
            first = start == 0
            target = entry if first else TocEntry(type=TOC_TYPE_CHUNK, name=entry.name, chunkOffset=start)
            target.chunkSize = end - start
            if zeros:
                target.chunkType = CHUNK_TYPE_ZEROS

            def chunk_written(
                frame_start: int, frame_end: int, digest: bytes | None, target: TocEntry = target
            ) -> None:
                assert digest is not None
                target.offset = frame_start
                target.chunkDigest = "sha256:" + digest.hex()
                entry.endOffset = frame_end

            self.frames.whole_frame(view[start:end], True, chunk_written)
            if not first:
                entries.append(target)
            start = end
        self._queue_file_digest(entry, file_digest)

    def _queue_file_digest(self, entry: TocEntry, file_digest: BackgroundDigester) -> None:
        """Resolved later, so this thread does not wait for the hashing."""
        file_digest.send()
        self.pending_file_digests.append((entry, file_digest))
        while len(self.pending_file_digests) > MAX_PENDING_FILE_DIGESTS:
            self._resolve_oldest_file_digest()

    def _chunked_payload(
        self, blocks: Iterable[bytes], entry: TocEntry, entries: list[TocEntry], crc: Crc64 | None
    ) -> None:
        """A payload longer than READ_SIZE, cut block by block by FileChunker as it is read (a frame
        longer than LARGE_FRAME is streamed)."""
        chunks: list[TocEntry] = []  # one per chunk; the first is `entry` itself
        chunk_offset = 0
        current: tuple[Frame, bool] | None = None  # (frame, is_zeros)
        # The pool hashes every chunk, and a file of one chunk (most files) has that as its digest. The
        # whole-file hash runs here only from a second chunk on, seeded with the first chunk's bytes.
        first_chunk: list[bytes] | None = []
        first_chunk_bytes = 0
        file_digest: Any = None

        def start_file_digest() -> None:
            nonlocal file_digest, first_chunk
            file_digest = BackgroundDigester(self.file_hashing)
            for piece in first_chunk or ():
                file_digest.update(piece)
            first_chunk = None

        def close_chunk() -> None:
            nonlocal current, chunk_offset
            if current is None:
                return
            frame, zeros = current
            target = (
                entry
                if not chunks
                else TocEntry(type=TOC_TYPE_CHUNK, name=entry.name, chunkOffset=chunk_offset)
            )
            target.chunkSize = frame.size
            target.chunkType = CHUNK_TYPE_ZEROS if zeros else ""
            chunks.append(target)
            chunk_offset += frame.size
            first = len(chunks) == 1

            def written(
                start: int, end: int, digest: bytes | None, target: TocEntry = target, first: bool = first
            ) -> None:
                assert digest is not None
                target.offset = start
                target.chunkDigest = "sha256:" + digest.hex()
                if first:
                    entry.offset = start
                entry.endOffset = end

            frame.close(written)
            current = None

        def add(data: bytes, zeros: bool) -> None:
            nonlocal current, first_chunk_bytes
            if current is not None and current[1] != zeros:
                close_chunk()
            if current is None:
                if chunks and file_digest is None:
                    start_file_digest()
                current = (self.frames.frame(digest=True), zeros)
            current[0].write(data)
            if file_digest is not None:
                file_digest.update(data)
            else:
                assert first_chunk is not None
                first_chunk.append(data)
                first_chunk_bytes += len(data)
                if first_chunk_bytes > FIRST_CHUNK_KEPT:  # do not hold a long first chunk in memory
                    start_file_digest()

        def consume(events: Iterator[DataPiece | ZeroRun]) -> None:
            for event in events:
                if isinstance(event, ZeroRun):
                    remaining = event.length
                    while remaining:
                        step = min(remaining, READ_SIZE)
                        add(_zeros(step), zeros=True)
                        remaining -= step
                else:
                    add(event.data, zeros=False)
                    if event.cut_after:
                        close_chunk()

        chunker = FileChunker()
        for block in blocks:
            if crc is not None:
                crc.update(block)
            consume(chunker.feed(block))
        consume(chunker.finish())
        close_chunk()
        if file_digest is not None:
            self._queue_file_digest(entry, file_digest)
        else:  # one chunk: its digest, known once the pool has hashed it, is the file's
            self.single_chunk_files.append(entry)
        if len(chunks) == 1:  # a single chunk is described by the entry alone, without chunk fields
            entry.chunkSize, entry.chunkType = 0, ""
            self.drop_chunk_digest.append(entry)
        entries.extend(chunks[1:])

    def finish(self, scanner: tarstream.TarScanner) -> ZstdChunkedResult:
        self._refuse_unresolvable_hardlinks()
        tail = (scanner.last_member.padding or b"") if scanner.last_member else b""
        tail += scanner.end_bytes
        if tail:
            self.tarsplit.add_segment(tail)
            self.frame.write(tail)
        for data in scanner.iter_trailing(TARSPLIT_MAX_SEGMENT):
            self.tarsplit.add_segment(data)
            self.frame.write(data)
        self.frame.close()
        self.frames.drain()
        while self.pending_file_digests:
            self._resolve_oldest_file_digest()
        for entry in self.single_chunk_files:
            entry.digest = entry.chunkDigest
        if self.variant == "containers-storage":  # the reference leaves it out; stargz's verifier wants it
            for entry in self.drop_chunk_digest:
                entry.chunkDigest = ""

        tarsplit = self.tarsplit.finish()
        toc = {
            "version": TOC_VERSION,
            "entries": [e.to_json() for e in self.entries],
            "tarSplitDigest": dg.of_bytes(tarsplit),
        }
        manifest = json.dumps(toc, separators=(",", ":"), ensure_ascii=False).encode()
        compressed_manifest = zstandard.ZstdCompressor(level=self.level, write_checksum=True).compress(
            manifest
        )

        manifest_offset = self.frames.offset + SKIPPABLE_FRAME_HEADER_SIZE
        tarsplit_offset = manifest_offset + len(compressed_manifest) + SKIPPABLE_FRAME_HEADER_SIZE
        footer: AnyFooter
        if self.variant == "stargz":
            footer = LegacyZstdChunkedFooter(
                manifest_offset=manifest_offset,
                manifest_length=len(compressed_manifest),
                manifest_uncompressed_length=len(manifest),
                manifest_type=MANIFEST_TYPE_CRFS,
            )
        else:
            footer = ZstdChunkedFooter(
                manifest_offset=manifest_offset,
                manifest_length=len(compressed_manifest),
                manifest_uncompressed_length=len(manifest),
                manifest_type=MANIFEST_TYPE_CRFS,
                tarsplit_offset=tarsplit_offset,
                tarsplit_length=len(tarsplit),
                tarsplit_uncompressed_length=self.tarsplit.uncompressed_size,
            )
        self.frames.write_raw(skippable_frame(compressed_manifest))
        self.frames.write_raw(skippable_frame(tarsplit))
        self.frames.write_raw(skippable_frame(footer.to_bytes()))
        manifest_position = (
            f"{manifest_offset}:{len(compressed_manifest)}:{len(manifest)}:{MANIFEST_TYPE_CRFS}"
        )
        annotations: dict[str, str]
        if self.variant == "stargz":
            annotations = {
                mt.ZSTD_CHUNKED_LEGACY_MANIFEST_CHECKSUM: dg.of_bytes(compressed_manifest),
                mt.ZSTD_CHUNKED_LEGACY_MANIFEST_POSITION: manifest_position,
                mt.ESTARGZ_TOC_DIGEST: dg.of_bytes(manifest),  # stargz-snapshotter's: of the TOC JSON
                mt.ESTARGZ_UNCOMPRESSED_SIZE: str(self.frames.uncompressed.size),
            }
        else:
            annotations = {
                mt.ZSTD_CHUNKED_MANIFEST_CHECKSUM: dg.of_bytes(compressed_manifest),
                mt.ZSTD_CHUNKED_MANIFEST_POSITION: manifest_position,
                mt.ZSTD_CHUNKED_TARSPLIT_POSITION: (
                    f"{tarsplit_offset}:{len(tarsplit)}:{self.tarsplit.uncompressed_size}"
                ),
            }
        return ZstdChunkedResult(
            annotations=annotations,
            footer=footer,
            uncompressed_digest=self.frames.uncompressed.digest(),
            uncompressed_size=self.frames.uncompressed.size,
            toc_entries=len(self.entries),
        )


_ZERO_BLOCK = bytes(READ_SIZE)


def _zeros(n: int) -> bytes:
    return _ZERO_BLOCK if n == READ_SIZE else bytes(n)


def write_zstd_chunked(
    tar_stream: BinaryIO,
    out: SupportsWrite,
    level: int = 3,
    workers: int | None = None,
    variant: Variant = "containers-storage",
    limit: tarstream.EntryLimit | None = None,
) -> ZstdChunkedResult:
    """Convert an uncompressed tar stream into a zstd:chunked blob written to `out` (only `write` used).
    `limit`: converter.limits.max_entries (the TOC and tar-split grow per entry)."""
    writer = _LayerWriter(out, level, workers or os.cpu_count() or 2, variant)
    try:
        scanner = tarstream.TarScanner(tar_stream, limit)
        pending_padding = b""
        for member in scanner:
            writer.member(member, pending_padding)
            pending_padding = member.finish()
        return writer.finish(scanner)
    finally:
        writer.close()
