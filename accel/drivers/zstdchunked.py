"""zstd:chunked layers, in the format containers/storage (go.podman.io/storage, pkg/chunked) writes and reads.

Blob layout, identical in structure to the reference compressor:

    [frame: padding + tar headers] [frames: one per payload chunk] ... [frame: last padding, end blocks,
    trailing bytes] [skippable frame: zstd(TOC JSON)] [skippable frame: zstd(tar-split JSON lines)]
    [skippable frame: 64-byte footer ending in "GNUlInUx"]

Decompressing the whole blob yields the source tar byte for byte, so the DiffID does not change.

Chunking follows the reference rule exactly (so chunk digests match layers produced by podman/buildah
and chunk-level dedup works across tools): runs of >= 1024 zero bytes become "zeros" chunks, and the rest
is cut where the bup-style rolling sum over a 64-byte window has its low 16 bits all set. The rolling sum
is evaluated for a whole block at once with numpy prefix sums (see `_rollsum_cuts`); a per-byte Python
loop would be two orders of magnitude slower.
"""

from __future__ import annotations

import base64
import collections
import ctypes
import dataclasses
import datetime
import hashlib
import json
import os
import re
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO, ClassVar, Protocol

import numpy as np
import zstandard
from pydantic import Field

from accel import constants as mt
from accel import digest as dg
from accel import tarstream
from accel.drivers.base import ConvertedLayer, Driver, DriverOptions, LayerInput
from accel.errors import DriverError
from accel.oci import Descriptor


class SupportsWrite(Protocol):
    def write(self, data: bytes, /) -> int: ...


# --- format constants (containers/storage pkg/chunked/internal/minimal) ---------------------------------
SKIPPABLE_FRAME_MAGIC = b"\x50\x2a\x4d\x18"
SKIPPABLE_FRAME_HEADER_SIZE = 8
FOOTER_MAGIC = b"GNUlInUx"
FOOTER_SIZE = 64
MANIFEST_TYPE_CRFS = 1
TOC_VERSION = 1

ROLLSUM_BITS = 16
HOLE_THRESHOLD = 1024  # zero runs at least this long become "zeros" chunks

# TOC entry types by (Go-normalised) tar typeflag; anything else cannot be represented.
TOC_TYPES = {
    tarstream.TYPE_REG: "reg",
    tarstream.TYPE_LINK: "hardlink",
    tarstream.TYPE_CHAR: "char",
    tarstream.TYPE_BLOCK: "block",
    tarstream.TYPE_DIR: "dir",
    tarstream.TYPE_FIFO: "fifo",
    tarstream.TYPE_SYMLINK: "symlink",
}
TOC_TYPE_CHUNK = "chunk"
CHUNK_TYPE_ZEROS = "zeros"

# tar-split entry types (github.com/vbatts/tar-split tar/storage)
TARSPLIT_FILE = 1
TARSPLIT_SEGMENT = 2
TARSPLIT_MAX_SEGMENT = 1 << 20  # tar-split stores trailing data in segments of at most this size

READ_SIZE = 1 << 20
LARGE_FRAME = 4 << 20  # frames above this are compressed as a stream instead of in one pool job
MAX_PENDING_BYTES = 32 << 20  # uncompressed bytes queued for the pool before the writer waits


class ZstdChunkedOptions(DriverOptions):
    level: int = Field(default=3, ge=1, le=22)
    # zstd layers only exist in OCI manifests; the image assembler converts Docker manifests when set.
    docker2oci: bool = True


# --- CRC-64/ISO (Go's hash/crc64 with crc64.ISO table, used by tar-split for payload checksums) ---------


def _load_isal_crc64() -> Callable[[int, bytes], int] | None:
    """ISA-L's crc64_iso_refl, which python-isal's extension exports; None if it is not there."""
    try:
        from isal import isal_zlib

        func = ctypes.CDLL(isal_zlib.__file__).crc64_iso_refl
    except (ImportError, OSError, AttributeError):
        return None
    func.restype = ctypes.c_uint64
    func.argtypes = [ctypes.c_uint64, ctypes.c_char_p, ctypes.c_uint64]

    def update(crc: int, data: bytes) -> int:
        return func(crc, data, len(data))  # ctypes releases the GIL during the call

    # Guard against a library whose symbol means something else: the CRC-64/GO-ISO check value.
    return update if update(0, b"123456789") == 0xB90956C775A41001 else None


_BIT_REVERSE = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))
_CRC64_ISO_LOW = 0x1B  # x^64 + x^4 + x^3 + x + 1, without the x^64 term
_ALL_ONES_64 = (1 << 64) - 1


def _poly_mod_iso(value: int) -> int:
    """value mod the CRC-64/ISO polynomial over GF(2). The polynomial's tail is x^4+x^3+x+1, so
    x^(64m) == (x^4+x^3+x+1)^m, and for m a power of two that power is still four terms (Frobenius):
    each fold is four shifts and xors regardless of how large m is."""
    while (bits := value.bit_length()) > 64:
        m = 1 << ((bits - 1) // 64).bit_length() - 1  # largest power of two with 64*m < bits
        high, low = value >> (64 * m), value & ((1 << (64 * m)) - 1)
        value = (high << (4 * m)) ^ (high << (3 * m)) ^ (high << m) ^ high ^ low
    return value


def _crc64_iso_python(crc: int, data: bytes) -> int:
    """Same result as Go's crc64.Update(crc, crc64.MakeTable(crc64.ISO), data), via big-int algebra."""
    if not data:
        return crc
    nbits = 8 * len(data)
    reg = int(f"{crc ^ _ALL_ONES_64:064b}"[::-1], 2)  # the register in normal (unreflected) bit order
    message = int.from_bytes(data.translate(_BIT_REVERSE), "big")
    reg = _poly_mod_iso((reg << nbits) ^ (message << 64))
    return int(f"{reg:064b}"[::-1], 2) ^ _ALL_ONES_64


_crc64_update = _load_isal_crc64() or _crc64_iso_python


class Crc64:
    """Incremental CRC-64/ISO; `digest()` is the 8 big-endian bytes Go's hash.Sum(nil) returns."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = _crc64_update(self.value, data)

    def digest(self) -> bytes:
        return self.value.to_bytes(8, "big")


# --- content-defined chunking -----------------------------------------------------------------------------

_WINDOW = 64
# s2 == sum_{k=0..63} (k+1)*byte[p-k] + 64*63*31 (mod 2^32) for the reference RollSum; cut when its low
# 16 bits are all ones, i.e. when the weighted sum is this value mod 2^16.
_CUT_RESIDUE = (0xFFFF - _WINDOW * (_WINDOW - 1) * 31) % (1 << ROLLSUM_BITS)
_CUT_MASK = (1 << ROLLSUM_BITS) - 1


_ROLLSUM_SLICE = 64 << 10  # numpy temporaries stay cache- and allocator-friendly at this size


def _rollsum_cuts(history: bytes, data: bytes) -> list[int]:
    """Indexes i in `data` after which the reference rolling sum says "split"."""
    cuts: list[int] = []
    for offset in range(0, len(data), _ROLLSUM_SLICE):
        before = (history + data[max(0, offset - (_WINDOW - 1)) : offset])[-(_WINDOW - 1) :]
        cuts += [offset + i for i in _rollsum_cuts_slice(before, data[offset : offset + _ROLLSUM_SLICE])]
    return cuts


def _rollsum_cuts_slice(history: bytes, data: bytes) -> list[int]:
    """`_rollsum_cuts` for one slice.

    `history` is the 63 bytes before `data` in the file (zeros before the file start). Every window's
    weighted sum comes from two prefix sums, in numpy (C speed): with S1 = cumsum(b) and S2 = cumsum(j*b[j]),
    sum_{j=p-63..p} (p+1-j)*b[j] = (p+1)*(S1[p+1]-S1[p-63]) - (S2[p+1]-S2[p-63]). uint32 arithmetic wraps
    modulo 2^32, which keeps the low 16 bits exact.
    """
    assert len(history) == _WINDOW - 1
    b = np.frombuffer(history + data, dtype=np.uint8).astype(np.uint32)
    n = len(b)
    s1 = np.zeros(n + 1, dtype=np.uint32)
    s2 = np.zeros(n + 1, dtype=np.uint32)
    np.cumsum(b, out=s1[1:])
    b *= np.arange(n, dtype=np.uint32)  # b[j] * j, reusing the buffer
    np.cumsum(b, out=s2[1:])
    # Slices, not fancy indexing: upper = p+1 and lower = p-63 for every position p of `data`.
    first = _WINDOW - 1
    upper = slice(first + 1, n + 1)
    lower = slice(0, n - first)
    p_plus_1 = np.arange(first + 1, n + 1, dtype=np.uint32)
    weighted = p_plus_1 * (s1[upper] - s1[lower]) - (s2[upper] - s2[lower])
    return np.flatnonzero((weighted & np.uint32(_CUT_MASK)) == np.uint32(_CUT_RESIDUE)).tolist()


@dataclasses.dataclass(frozen=True)
class DataPiece:
    data: bytes
    cut_after: bool  # the current data chunk ends after these bytes


@dataclasses.dataclass(frozen=True)
class ZeroRun:
    length: int  # bytes of a zero hole (a hole may arrive as several runs; it ends at the next DataPiece)


_HOLE_NEEDLE = bytes(HOLE_THRESHOLD)
_NONZERO_RE = re.compile(b"[^\x00]")
_ZERO_STEP = bytes(4096)


def _zero_run_end(buf: bytes, start: int) -> int:
    """Index of the first non-zero byte at or after `start` (len(buf) if none)."""
    step = len(_ZERO_STEP)
    pos = start
    while pos + step <= len(buf) and buf[pos : pos + step] == _ZERO_STEP:  # C-speed compares
        pos += step
    limit = min(len(buf), pos + step)
    found = _NONZERO_RE.search(buf, pos, limit)
    return found.start() if found else limit


def _find_holes(buf: bytes, start: int) -> list[tuple[int, int]]:
    """Maximal runs of at least HOLE_THRESHOLD zero bytes in buf[start:]."""
    holes = []
    pos = buf.find(_HOLE_NEEDLE, start)
    while pos >= 0:
        end = _zero_run_end(buf, pos + HOLE_THRESHOLD)
        holes.append((pos, end))
        pos = buf.find(_HOLE_NEEDLE, end)
    return holes


class FileChunker:
    """Splits one file's content into the reference compressor's chunks, fed block by block.

    Emits DataPiece / ZeroRun events; a chunk ends at a DataPiece with cut_after, where a hole starts,
    where a hole ends, and at the end of the file.
    """

    def __init__(self) -> None:
        self._history = bytes(_WINDOW - 1)
        self._carry = b""  # trailing zeros that may still grow into a hole
        self._in_hole = False

    def feed(self, block: bytes) -> Iterator[DataPiece | ZeroRun]:
        yield from self._process(self._carry + block, final=False)

    def finish(self) -> Iterator[DataPiece | ZeroRun]:
        yield from self._process(self._carry, final=True)
        self._carry = b""

    def _process(self, buf: bytes, final: bool) -> Iterator[DataPiece | ZeroRun]:
        self._carry = b""
        start = 0
        if self._in_hole:
            start = _zero_run_end(buf, 0)
            if start:
                yield ZeroRun(start)
            if start == len(buf):
                self._remember(buf)
                return
            self._in_hole = False
        end = len(buf)
        holes = _find_holes(buf, start)
        if not final:
            tail_zeros = len(buf) - len(buf.rstrip(b"\x00"))
            tail_start = max(len(buf) - tail_zeros, start)
            if tail_start < len(buf) and not (holes and holes[-1][1] == len(buf)):
                # A short zero run at the end might continue in the next block: decide later.
                self._carry = buf[tail_start:]
                end = tail_start
        pos = start
        for hole_start, hole_end in holes:
            yield from self._data(buf, pos, hole_start)
            yield ZeroRun(hole_end - hole_start)
            pos = hole_end
        if holes and holes[-1][1] == len(buf) and not final:
            self._in_hole = True
        yield from self._data(buf, pos, end)
        self._remember(buf[:end])

    def _data(self, buf: bytes, start: int, end: int) -> Iterator[DataPiece]:
        if start >= end:
            return
        history = (self._history + buf[max(0, start - (_WINDOW - 1)) : start])[-(_WINDOW - 1) :]
        data = buf[start:end]
        pos = 0
        for cut in _rollsum_cuts(history, data):
            yield DataPiece(data[pos : cut + 1], cut_after=True)
            pos = cut + 1
        if pos < len(data):
            yield DataPiece(data[pos:], cut_after=False)

    def _remember(self, processed: bytes) -> None:
        self._history = (self._history + processed[-(_WINDOW - 1) :])[-(_WINDOW - 1) :]


# --- ordered parallel zstd frame writer -------------------------------------------------------------------

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


# --- TOC ----------------------------------------------------------------------------------------------------


def _go_string(value: bytes, what: str) -> str:
    """Go marshals invalid UTF-8 as U+FFFD, after which the reader's TOC/tar-split check fails: refuse."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise DriverError(f"{what} {value!r} is not valid UTF-8; zstd:chunked cannot represent it") from None


_GO_ZERO_TIME = tarstream.Timestamp(-62135596800)  # Go's time.Time{} (0001-01-01), omitted from the TOC
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def rfc3339_nano(ts: tarstream.Timestamp) -> str:
    """Go's time.Time JSON form (RFC 3339 with nanoseconds, trailing zeros trimmed), in UTC."""
    try:
        moment = _EPOCH + datetime.timedelta(seconds=ts.seconds)
    except OverflowError:
        raise DriverError(f"timestamp {ts.seconds} is out of range for zstd:chunked") from None
    text = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
    if ts.nanoseconds:
        text += "." + f"{ts.nanoseconds:09d}".rstrip("0")
    return text + "Z"


@dataclasses.dataclass
class TocEntry:
    """minimal.FileMetadata; `to_json` keeps the reference's field order and omitempty rules."""

    type: str
    name: str
    linkName: str = ""  # camelCase: the JSON field names of the format
    mode: int = 0
    size: int = 0
    uid: int = 0
    gid: int = 0
    modtime: str | None = None
    accesstime: str | None = None
    changetime: str | None = None
    devMajor: int = 0
    devMinor: int = 0
    xattrs: dict[str, str] = dataclasses.field(default_factory=dict)
    digest: str = ""
    offset: int = 0
    endOffset: int = 0
    chunkSize: int = 0
    chunkOffset: int = 0
    chunkDigest: str = ""
    chunkType: str = ""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": self.type, "name": self.name}
        for f in dataclasses.fields(self)[2:]:
            value = getattr(self, f.name)
            if value:
                doc[f.name] = dict(sorted(value.items())) if isinstance(value, dict) else value
        return doc

    @classmethod
    def from_header(cls, header: tarstream.TarHeader) -> TocEntry:
        toc_type = TOC_TYPES.get(header.typeflag)
        name = _go_string(header.name, "tar entry name")
        if toc_type is None:
            raise DriverError(
                f"tar entry {name!r} has type {header.typeflag!r}, which zstd:chunked cannot represent"
            )
        if header.sparse:
            raise DriverError(f"tar entry {name!r} is a sparse file, which zstd:chunked cannot represent")
        xattrs = {
            _go_string(key, "xattr name"): base64.b64encode(value).decode("ascii")
            for key, value in header.xattrs.items()
        }

        def when(ts: tarstream.Timestamp | None) -> str | None:
            return None if ts is None or ts == _GO_ZERO_TIME else rfc3339_nano(ts)

        return cls(
            type=toc_type,
            name=name,
            linkName=_go_string(header.linkname, "tar link target"),
            mode=header.mode,
            size=header.size,
            uid=header.uid,
            gid=header.gid,
            modtime=when(header.mtime),
            accesstime=when(header.atime),
            changetime=when(header.ctime),
            devMajor=header.devmajor,
            devMinor=header.devminor,
            xattrs=xattrs,
        )


# --- tar-split --------------------------------------------------------------------------------------------


def _tarsplit_name(name: bytes) -> dict[str, str]:
    """tar-split stores names that are not clean UTF-8 (or contain U+FFFD) base64'd as name_raw."""
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\ufffd" in text:
        return {"name_raw": base64.b64encode(name).decode("ascii")}
    return {"name": text} if text else {}


class TarSplitWriter:
    """tar-split's JSON-lines stream (as asm.NewInputTarStream packs it), zstd-compressed in memory."""

    def __init__(self, level: int) -> None:
        self._compressed = _CountingBuffer()
        self._zstd = zstandard.ZstdCompressor(level=level, write_checksum=True).stream_writer(
            self._compressed, closefd=False
        )
        self._position = 0
        self.uncompressed_size = 0
        self._seen: set[str] = set()

    def _add(self, entry: dict[str, Any]) -> None:
        entry["position"] = self._position
        self._position += 1
        line = json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        self.uncompressed_size += len(line)
        self._zstd.write(line)

    def add_segment(self, raw: bytes) -> None:
        for start in range(0, len(raw), TARSPLIT_MAX_SEGMENT):
            piece = raw[start : start + TARSPLIT_MAX_SEGMENT]
            self._add({"type": TARSPLIT_SEGMENT, "payload": base64.b64encode(piece).decode("ascii")})

    def add_file(self, name: bytes, size: int, checksum: bytes | None) -> None:
        # The reader's unpacker rejects repeated paths (after filepath.Clean); fail early instead.
        clean = os.path.normpath(name.decode("utf-8", "surrogateescape")) if name else "."
        if clean in self._seen:
            raise DriverError(f"tar entry {name!r} appears twice; zstd:chunked readers reject duplicates")
        self._seen.add(clean)
        entry: dict[str, Any] = {"type": TARSPLIT_FILE, **_tarsplit_name(name)}
        if size:
            entry["size"] = size
        entry["payload"] = base64.b64encode(checksum).decode("ascii") if checksum is not None else None
        self._add(entry)

    def finish(self) -> bytes:
        self._zstd.flush(zstandard.FLUSH_FRAME)
        self._zstd.close()
        return self._compressed.getvalue()


class _CountingBuffer:
    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


# --- footer and annotations -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ZstdChunkedFooter:
    manifest_offset: int
    manifest_length: int
    manifest_uncompressed_length: int
    manifest_type: int
    tarsplit_offset: int
    tarsplit_length: int
    tarsplit_uncompressed_length: int

    _STRUCT: ClassVar[struct.Struct] = struct.Struct("<7Q8s")

    def to_bytes(self) -> bytes:
        return self._STRUCT.pack(*dataclasses.astuple(self), FOOTER_MAGIC)

    @classmethod
    def parse(cls, blob_tail: bytes) -> ZstdChunkedFooter:
        """Parse the last bytes of a blob (at least the footer's skippable frame)."""
        frame = blob_tail[-(SKIPPABLE_FRAME_HEADER_SIZE + FOOTER_SIZE) :]
        if len(frame) != SKIPPABLE_FRAME_HEADER_SIZE + FOOTER_SIZE:
            raise ValueError("blob too small for a zstd:chunked footer")
        if frame[:4] != SKIPPABLE_FRAME_MAGIC or int.from_bytes(frame[4:8], "little") != FOOTER_SIZE:
            raise ValueError("footer is not a 64-byte skippable frame")
        *values, magic = cls._STRUCT.unpack(frame[SKIPPABLE_FRAME_HEADER_SIZE:])
        if magic != FOOTER_MAGIC:
            raise ValueError("zstd:chunked footer magic missing")
        return cls(*values)


def _skippable_frame(payload: bytes) -> bytes:
    return SKIPPABLE_FRAME_MAGIC + len(payload).to_bytes(4, "little") + payload


@dataclasses.dataclass(frozen=True)
class ZstdChunkedResult:
    annotations: dict[str, str]
    footer: ZstdChunkedFooter
    uncompressed_digest: str
    uncompressed_size: int
    toc_entries: int


# --- the writer ---------------------------------------------------------------------------------------------


class _LayerWriter:
    def __init__(self, out: SupportsWrite, level: int, workers: int) -> None:
        self.level = level
        self.frames = FrameWriter(out, level, workers)
        self.tarsplit = TarSplitWriter(level)
        self.entries: list[TocEntry] = []
        self.frame = self.frames.frame()  # the open frame holding headers and padding

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

    def _payload(
        self, member: tarstream.TarMember, entry: TocEntry, entries: list[TocEntry], crc: Crc64 | None
    ) -> None:
        self.frame.close()  # the header frame ends where the payload starts
        file_digest = hashlib.sha256()
        chunks: list[TocEntry] = []  # one per chunk; the first is `entry` itself
        chunk_offset = 0
        current: tuple[Frame, Any, bool] | None = None  # (frame, sha256, is_zeros)

        def close_chunk() -> None:
            nonlocal current, chunk_offset
            if current is None:
                return
            frame, digester, zeros = current
            target = (
                entry
                if not chunks
                else TocEntry(type=TOC_TYPE_CHUNK, name=entry.name, chunkOffset=chunk_offset)
            )
            target.chunkSize = frame.size
            target.chunkDigest = "sha256:" + digester.hexdigest()
            target.chunkType = CHUNK_TYPE_ZEROS if zeros else ""
            chunks.append(target)
            chunk_offset += frame.size
            first = len(chunks) == 1

            def written(start: int, end: int, target: TocEntry = target, first: bool = first) -> None:
                target.offset = start
                if first:
                    entry.offset = start
                entry.endOffset = end

            frame.close(written)
            current = None

        def add(data: bytes, zeros: bool) -> None:
            nonlocal current
            if current is not None and current[2] != zeros:
                close_chunk()
            if current is None:
                current = (self.frames.frame(), hashlib.sha256(), zeros)
            current[0].write(data)
            current[1].update(data)
            file_digest.update(data)

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
        for block in member.iter_data(READ_SIZE):
            if crc is not None:
                crc.update(block)
            consume(chunker.feed(block))
        consume(chunker.finish())
        close_chunk()
        entry.digest = "sha256:" + file_digest.hexdigest()
        if len(chunks) == 1:  # a single chunk is described by the entry alone, without chunk fields
            entry.chunkSize, entry.chunkDigest, entry.chunkType = 0, "", ""
        entries.extend(chunks[1:])
        self.frame = self.frames.frame()

    def finish(self, scanner: tarstream.TarScanner) -> ZstdChunkedResult:
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
        footer = ZstdChunkedFooter(
            manifest_offset=manifest_offset,
            manifest_length=len(compressed_manifest),
            manifest_uncompressed_length=len(manifest),
            manifest_type=MANIFEST_TYPE_CRFS,
            tarsplit_offset=tarsplit_offset,
            tarsplit_length=len(tarsplit),
            tarsplit_uncompressed_length=self.tarsplit.uncompressed_size,
        )
        self.frames.write_raw(_skippable_frame(compressed_manifest))
        self.frames.write_raw(_skippable_frame(tarsplit))
        self.frames.write_raw(_skippable_frame(footer.to_bytes()))
        annotations = {
            mt.ZSTD_CHUNKED_MANIFEST_CHECKSUM: dg.of_bytes(compressed_manifest),
            mt.ZSTD_CHUNKED_MANIFEST_POSITION: (
                f"{manifest_offset}:{len(compressed_manifest)}:{len(manifest)}:{MANIFEST_TYPE_CRFS}"
            ),
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
    tar_stream: BinaryIO, out: SupportsWrite, level: int = 3, workers: int | None = None
) -> ZstdChunkedResult:
    """Convert an uncompressed tar stream into a zstd:chunked blob written to `out` (only `write` used)."""
    writer = _LayerWriter(out, level, workers or os.cpu_count() or 2)
    try:
        scanner = tarstream.TarScanner(tar_stream)
        pending_padding = b""
        for member in scanner:
            writer.member(member, pending_padding)
            pending_padding = member.finish()
        return writer.finish(scanner)
    finally:
        writer.frames.close()


# --- the driver ---------------------------------------------------------------------------------------------


class ZstdChunkedDriver(Driver):
    name: ClassVar[str] = "zstdchunked"
    options_model: ClassVar[type[DriverOptions]] = ZstdChunkedOptions
    implementation_version: ClassVar[str] = "1"

    @property
    def zstd_options(self) -> ZstdChunkedOptions:
        assert isinstance(self.options, ZstdChunkedOptions)
        return self.options

    def convert_layer(self, layer: LayerInput) -> ConvertedLayer:
        with layer.store.writer() as blob:
            with layer.open_tar() as tar_stream:  # verifies the source DiffID on exit
                result = write_zstd_chunked(tar_stream, blob, self.zstd_options.level)
            if result.uncompressed_digest != layer.diff_id:
                raise DriverError(
                    f"zstd:chunked output of layer {layer.descriptor.digest} decompresses to "
                    f"{result.uncompressed_digest}, not the source DiffID {layer.diff_id}"
                )
        assert blob.digest is not None
        descriptor = Descriptor(
            media_type=mt.OCI_LAYER_ZSTD, digest=blob.digest, size=blob.size, annotations=result.annotations
        )
        return ConvertedLayer(source=layer.descriptor, descriptor=descriptor, diff_id=layer.diff_id)

    @classmethod
    def is_converted(cls, layers: list[Descriptor]) -> bool:
        return bool(layers) and all(
            layer.annotation(mt.ZSTD_CHUNKED_MANIFEST_CHECKSUM) is not None for layer in layers
        )
