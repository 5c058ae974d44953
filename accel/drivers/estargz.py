"""eStargz driver: a gzip tar whose file chunks are separately seekable gzip members, plus a TOC.

Layout (stargz-snapshotter docs/estargz.md, mirroring `estargz.Build` with its default options):

    member: .no.prefetch.landmark header            (or: prioritized entries, then .prefetch.landmark)
    member: chunk payload [+ tar padding + the headers of the entries that follow, until the next payload]
    ...
    member: stargz.index.json tar entry + end-of-archive blocks
    footer: an empty 51-byte gzip member whose extra field holds the TOC member's offset

Each regular-file chunk starts a new gzip member, so a reader can fetch and inflate one chunk on its own;
its TOC entry records that member's compressed `offset`. Decompressing the whole blob gives one valid tar
(TOC entry included); its sha256 is the layer's DiffID.

Members are compressed on a small thread pool (zlib-ng releases the GIL) and written in order; because
a member's compressed offset is only known once everything before it is written, TOC entries refer to
their member by index until the TOC is serialised.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
import datetime
import hashlib
import io
import json
import math
import os
import posixpath
import shutil
import struct
import tarfile
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from pydantic import Field, field_validator
from zlib_ng import zlib_ng

from accel import constants as mt
from accel.digest import Digester
from accel.drivers.base import ConvertedLayer, Driver, DriverOptions, LayerInput, oci_unless_docker_kept
from accel.errors import DriverError, InvalidImage
from accel.oci import Descriptor
from accel.store import BlobWriter

# Bump when the bytes produced for the same input and options change.
IMPLEMENTATION_VERSION = "1"

DEFAULT_CHUNK_SIZE = 4 << 20  # the reference writer's default
FOOTER_SIZE = 51
TOC_VERSION = 1
LANDMARK_CONTENT = b"\x0f"  # the single byte the reference writer puts in a landmark file

READ_SIZE = 1 << 20
# A member buffered beyond this is compressed inline instead of on the pool, so a huge chunk size or a
# long run of headers never sits in memory whole.
MEMBER_BUFFER_LIMIT = 16 << 20
WORKERS = max(1, min(8, os.cpu_count() or 1))

_TAR_BLOCK = 512
_GZIP_WBITS = 31  # deflate with a gzip header and trailer
_TAR_ENCODING = "utf-8"
_TAR_ERRORS = "surrogateescape"  # non-UTF-8 names survive the read/write round trip byte for byte
_XATTR_PAX_PREFIX = "SCHILY.xattr."
_RESERVED_NAMES = frozenset(
    {mt.ESTARGZ_TOC_TAR_NAME, mt.ESTARGZ_PREFETCH_LANDMARK, mt.ESTARGZ_NO_PREFETCH_LANDMARK}
)

_TOC_TYPES = {
    tarfile.LNKTYPE: "hardlink",
    tarfile.SYMTYPE: "symlink",
    tarfile.DIRTYPE: "dir",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}


class EStargzOptions(DriverOptions):
    compression_level: int = 9
    chunk_size: int = DEFAULT_CHUNK_SIZE
    prioritized_files: list[str] = Field(default_factory=list)
    docker2oci: bool = True

    @field_validator("compression_level")
    @classmethod
    def _check_level(cls, value: int) -> int:
        if not 0 <= value <= 9:
            raise ValueError(f"compression_level must be a gzip level from 0 to 9, got {value}")
        return value

    @field_validator("chunk_size")
    @classmethod
    def _check_chunk_size(cls, value: int) -> int:
        if value <= 0:
            raise ValueError(f"chunk_size must be a positive number of bytes, got {value}")
        return value

    @field_validator("prioritized_files")
    @classmethod
    def _check_prioritized(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _clean_name(name):
                raise ValueError(f"prioritized_files entries must name a file, got {name!r}")
        return value


class EStargzDriver(Driver):
    name: ClassVar[str] = "estargz"
    options_model: ClassVar[type[DriverOptions]] = EStargzOptions
    implementation_version: ClassVar[str] = IMPLEMENTATION_VERSION
    options: EStargzOptions

    def writes_oci(self, source_media_type: str) -> bool:
        # Layers are plain gzip tars, which Docker manifests can list too: `docker2oci` decides.
        return oci_unless_docker_kept(self.options.docker2oci, source_media_type)

    def __init__(self, options: DriverOptions) -> None:
        if not isinstance(options, EStargzOptions):
            raise TypeError(f"EStargzDriver needs EStargzOptions, got {type(options).__name__}")
        super().__init__(options)

    @classmethod
    def is_converted(cls, layers: list[Descriptor]) -> bool:
        return bool(layers) and all(layer.annotation(mt.ESTARGZ_TOC_DIGEST) for layer in layers)

    def convert_layer(self, layer: LayerInput) -> ConvertedLayer:
        opts = self.options
        # Source entries are read inside the writer block: a DiffID mismatch (raised when the source
        # stream ends) aborts the blob instead of committing it.
        with layer.store.writer() as out, _source_entries(layer, opts.prioritized_files) as entries:
            builder = _BlobBuilder(out, opts.compression_level, opts.chunk_size)
            try:
                for entry in entries:
                    builder.add(entry)
                result = builder.finish()
            finally:
                builder.close()
        assert out.digest is not None
        descriptor = Descriptor(
            media_type=mt.OCI_LAYER_GZIP,
            digest=out.digest,
            size=out.size,
            annotations={
                mt.ESTARGZ_TOC_DIGEST: result.toc_digest,
                mt.ESTARGZ_UNCOMPRESSED_SIZE: str(result.uncompressed_size),
            },
        )
        return ConvertedLayer(source=layer.descriptor, descriptor=descriptor, diff_id=result.diff_id)


# --- source entries ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Entry:
    """One tar entry to write: its header and, for regular files, where to read the payload from."""

    info: tarfile.TarInfo
    payload: BinaryIO | None


@contextlib.contextmanager
def _source_entries(layer: LayerInput, prioritized: Sequence[str]) -> Iterator[Iterator[_Entry]]:
    """The entries in output order, landmark included."""
    if not prioritized:
        with layer.open_tar() as stream:
            yield _streamed_entries(stream, layer)
        return
    # Reordering needs random access: spool the uncompressed tar to scratch (its DiffID is checked
    # when the spooling block ends, before anything is converted).
    scratch = layer.store.temp_path(".tar")
    try:
        with layer.open_tar() as stream, scratch.open("wb") as spool:
            shutil.copyfileobj(stream, spool, READ_SIZE)
        with _open_tar(layer, scratch, "r:") as tar:
            yield _prioritized_entries(tar, layer, prioritized)
    finally:
        scratch.unlink(missing_ok=True)


def _open_tar(layer: LayerInput, source: BinaryIO | Path, mode: str) -> tarfile.TarFile:
    try:
        if isinstance(source, Path):
            return tarfile.open(source, mode, encoding=_TAR_ENCODING, errors=_TAR_ERRORS)
        return tarfile.open(fileobj=source, mode=mode, encoding=_TAR_ENCODING, errors=_TAR_ERRORS)
    except tarfile.TarError as exc:
        raise InvalidImage(f"layer {layer.descriptor.digest}: not a readable tar: {exc}") from None


def _streamed_entries(stream: BinaryIO, layer: LayerInput) -> Iterator[_Entry]:
    yield _landmark(mt.ESTARGZ_NO_PREFETCH_LANDMARK)
    if not stream.peek(1):  # type: ignore[attr-defined]
        return  # a zero-byte layer is an empty tar
    with _open_tar(layer, stream, "r|") as tar:
        while (info := _next_member(tar, layer)) is not None:
            # Stream mode remembers every member it has seen; we never look back, so drop them.
            tar.members.clear()
            if _clean_name(info.name) in _RESERVED_NAMES:
                continue
            yield _Entry(info, tar.extractfile(info) if info.isreg() else None)


def _next_member(tar: tarfile.TarFile, layer: LayerInput) -> tarfile.TarInfo | None:
    try:
        return tar.next()
    except tarfile.TarError as exc:
        raise InvalidImage(f"layer {layer.descriptor.digest}: broken tar: {exc}") from None


def _prioritized_entries(
    tar: tarfile.TarFile, layer: LayerInput, prioritized: Sequence[str]
) -> Iterator[_Entry]:
    """Prioritized files (with parent dirs and hardlink targets) first, then the landmark, then the rest.

    Like the reference builder, a name that occurs twice keeps only its last occurrence (that is the
    one extraction would leave behind, and it must not be overridden by a stale copy after the move),
    and prioritized names missing from this layer are skipped: they may live in another layer.
    """
    by_name: dict[str, tarfile.TarInfo] = {}
    while (info := _next_member(tar, layer)) is not None:
        name = _clean_name(info.name)
        if name in _RESERVED_NAMES:
            continue
        by_name.pop(name, None)  # re-inserting moves it to the position of its last occurrence
        by_name[name] = info

    picked: dict[str, tarfile.TarInfo] = {}
    visiting: set[str] = set()

    def pick(name: str) -> None:
        if name in picked or name in visiting:
            return  # already placed, or a hardlink cycle
        visiting.add(name)
        if name:
            pick(_clean_name(posixpath.dirname(name)))
        info = by_name.get(name)
        if info is not None:
            if info.islnk():
                pick(_clean_name(info.linkname))
            picked[name] = info
        visiting.discard(name)

    for wanted in prioritized:
        name = _clean_name(wanted)
        if name in by_name:
            pick(name)

    def entry(info: tarfile.TarInfo) -> _Entry:
        return _Entry(info, tar.extractfile(info) if info.isreg() else None)

    for info in picked.values():
        yield entry(info)
    yield _landmark(mt.ESTARGZ_PREFETCH_LANDMARK)
    for name, info in by_name.items():
        if name not in picked:
            yield entry(info)


def _landmark(name: str) -> _Entry:
    # The reference header carries nothing but name, type and size (mode 0, no owner, no mtime).
    info = tarfile.TarInfo(name)
    info.size = len(LANDMARK_CONTENT)
    info.mode = 0
    return _Entry(info, io.BytesIO(LANDMARK_CONTENT))


def _clean_name(name: str) -> str:
    """The reference reader's name normalisation: relative to root, no `.`/`..`, no trailing slash."""
    return posixpath.normpath("/" + name).lstrip("/")


# --- gzip members ------------------------------------------------------------------------------------


def _compress_member(pieces: list[bytes], level: int) -> bytes:
    compressor = zlib_ng.compressobj(level, zlib_ng.DEFLATED, _GZIP_WBITS)
    out = [compressor.compress(piece) for piece in pieces]
    out.append(compressor.flush())
    return b"".join(out)


class _GzipMembers:
    """Writes consecutive gzip members to `out`, compressing buffered members on a bounded thread pool.

    Uncompressed bytes go into the current member through `write`; `new_member` ends it. Members are
    written in order. `offsets[i]` is member i's compressed offset once it has been written, and
    `uncompressed` hashes every uncompressed byte in order (the DiffID of the whole blob).
    """

    def __init__(self, out: BlobWriter, level: int) -> None:
        self._out = out
        self._level = level
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="estargz-gzip")
        self._in_flight: collections.deque[Future[bytes]] = collections.deque()
        self._max_in_flight = 2 * WORKERS
        self._pieces: list[bytes] = []
        self._buffered = 0
        self._inline: Any = None  # the compressor of an oversized member compressed on this thread
        self.current = 0  # index of the member being filled
        self.offsets: list[int] = []
        self.uncompressed = Digester()

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.uncompressed.update(data)
        if self._inline is not None:
            self._out.write(self._inline.compress(data))
            return
        self._pieces.append(data)
        self._buffered += len(data)
        if self._buffered > MEMBER_BUFFER_LIMIT:
            self._compress_inline()

    def new_member(self) -> int:
        """End the current member (unless it is still empty); return the index of the next one."""
        if self._inline is not None:
            self._out.write(self._inline.flush())
            self._inline = None
            self.current += 1
        elif self._pieces:
            self._in_flight.append(self._pool.submit(_compress_member, self._pieces, self._level))
            self._pieces, self._buffered = [], 0
            self.current += 1
            while len(self._in_flight) > self._max_in_flight:
                self._write_oldest()
        return self.current

    def drain(self) -> None:
        """End the current member and write every member still being compressed."""
        self.new_member()
        while self._in_flight:
            self._write_oldest()

    def close(self) -> None:
        for future in self._in_flight:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _write_oldest(self) -> None:
        member = self._in_flight.popleft().result()
        self.offsets.append(self._out.tell())
        self._out.write(member)

    def _compress_inline(self) -> None:
        while self._in_flight:  # everything before this member must be in the file first
            self._write_oldest()
        self.offsets.append(self._out.tell())
        self._inline = zlib_ng.compressobj(self._level, zlib_ng.DEFLATED, _GZIP_WBITS)
        for piece in self._pieces:
            self._out.write(self._inline.compress(piece))
        self._pieces, self._buffered = [], 0


def footer_bytes(toc_offset: int) -> bytes:
    """The 51-byte footer: an empty gzip member whose FEXTRA subfield `SG` holds `%016x` offset + STARGZ."""
    subfield = b"%016xSTARGZ" % toc_offset
    extra = b"SG" + struct.pack("<H", len(subfield)) + subfield
    header = b"\x1f\x8b\x08\x04" + b"\x00\x00\x00\x00" + b"\x00\xff"  # ID, deflate, FEXTRA, mtime, XFL, OS
    empty_stored_block = b"\x01\x00\x00\xff\xff"  # BFINAL, stored, LEN 0, NLEN
    footer = header + struct.pack("<H", len(extra)) + extra + empty_stored_block + b"\x00" * 8  # CRC, ISIZE
    assert len(footer) == FOOTER_SIZE
    return footer


def parse_footer(footer: bytes) -> int:
    """The TOC offset from an eStargz footer; ValueError if it is not one."""
    if len(footer) != FOOTER_SIZE or footer[:4] != b"\x1f\x8b\x08\x04":
        raise ValueError("not an eStargz footer: bad gzip header")
    (xlen,) = struct.unpack_from("<H", footer, 10)
    extra = footer[12 : 12 + xlen]
    if xlen != 26 or extra[:2] != b"SG" or struct.unpack_from("<H", extra, 2)[0] != 22:
        raise ValueError("not an eStargz footer: no SG subfield")
    if extra[20:] != b"STARGZ":
        raise ValueError("not an eStargz footer: STARGZ magic missing")
    return int(extra[4:20], 16)


# --- TOC -----------------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _TocEntry:
    """One TOC entry; `to_json` emits the reference's field order and omits empty fields like Go does."""

    name: str
    type: str
    size: int = 0
    modtime: str = ""
    link_name: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user_name: str = ""
    group_name: str = ""
    member: int | None = None  # index of the gzip member where the payload starts; becomes `offset`
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: dict[str, str] | None = None  # base64 values: Go marshals []byte that way
    digest: str = ""
    chunk_offset: int = 0
    chunk_size: int = 0
    chunk_digest: str = ""

    def to_json(self, offsets: Sequence[int]) -> dict[str, Any]:
        fields = (
            ("size", self.size),
            ("modtime", self.modtime),
            ("linkName", self.link_name),
            ("mode", self.mode),
            ("uid", self.uid),
            ("gid", self.gid),
            ("userName", self.user_name),
            ("groupName", self.group_name),
            ("offset", offsets[self.member] if self.member is not None else 0),
            ("devMajor", self.dev_major),
            ("devMinor", self.dev_minor),
            ("xattrs", self.xattrs),
            ("digest", self.digest),
            ("chunkOffset", self.chunk_offset),
            ("chunkSize", self.chunk_size),
            ("chunkDigest", self.chunk_digest),
        )
        return {"name": self.name, "type": self.type} | {key: value for key, value in fields if value}


def _toc_text(text: str) -> str:
    # Undecodable bytes were kept as surrogates; JSON gets U+FFFD, as Go's encoder would write.
    return text.encode(_TAR_ENCODING, _TAR_ERRORS).decode(_TAR_ENCODING, "replace")


def _modtime(mtime: float) -> str:
    """RFC 3339 UTC, rounded to the second; empty for the zero time, as the reference writes it."""
    seconds = math.floor(mtime + 0.5)
    if seconds == 0:
        return ""
    try:
        stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return ""
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- blob builder ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _BuildResult:
    toc_digest: str
    diff_id: str
    uncompressed_size: int


class _BlobBuilder:
    """Re-encodes tar entries into eStargz members and collects the TOC."""

    def __init__(self, out: BlobWriter, level: int, chunk_size: int) -> None:
        self._out = out
        self._chunk_size = chunk_size
        self._members = _GzipMembers(out, level)
        self._toc: list[_TocEntry] = []
        # The reference writes userName/groupName only when they change for a uid/gid.
        self._last_user: dict[int, str] = {}
        self._last_group: dict[int, str] = {}

    def close(self) -> None:
        self._members.close()

    def add(self, entry: _Entry) -> None:
        header = _output_header(entry.info)
        toc_entry = self._toc_entry(header)
        self._members.write(header.tobuf(tarfile.PAX_FORMAT, _TAR_ENCODING, _TAR_ERRORS))
        if toc_entry.type != "reg":
            self._toc.append(toc_entry)
            return
        if entry.payload is None:
            raise DriverError(f"no payload for regular file {entry.info.name!r}")
        file_digest = hashlib.sha256()
        chunk_entry = toc_entry  # the first chunk is described by the file's own entry
        for chunk_offset in range(0, header.size, self._chunk_size):
            chunk = min(self._chunk_size, header.size - chunk_offset)
            if chunk == self._chunk_size:
                chunk_entry.chunk_size = chunk  # the reference leaves it out on a short last chunk
            # Each chunk starts a gzip member; the tar padding and the headers that follow share it.
            chunk_entry.member = self._members.new_member()
            chunk_entry.chunk_offset = chunk_offset
            chunk_entry.chunk_digest = self._copy(entry, chunk, file_digest)
            self._toc.append(chunk_entry)
            chunk_entry = _TocEntry(name=toc_entry.name, type="chunk")
        if header.size == 0:
            self._toc.append(toc_entry)
        self._members.write(b"\0" * (-header.size % _TAR_BLOCK))
        toc_entry.digest = "sha256:" + file_digest.hexdigest()

    def _copy(self, entry: _Entry, size: int, file_digest: Any) -> str:
        assert entry.payload is not None
        chunk_digest = hashlib.sha256()
        while size > 0:
            piece = entry.payload.read(min(size, READ_SIZE))
            if not piece:
                raise InvalidImage(f"tar entry {entry.info.name!r} is truncated")
            chunk_digest.update(piece)
            file_digest.update(piece)
            self._members.write(piece)
            size -= len(piece)
        return "sha256:" + chunk_digest.hexdigest()

    def _toc_entry(self, header: tarfile.TarInfo) -> _TocEntry:
        kind = "reg" if header.type == tarfile.REGTYPE else _TOC_TYPES[header.type]
        xattrs = {
            _toc_text(key[len(_XATTR_PAX_PREFIX) :]): base64.b64encode(
                value.encode(_TAR_ENCODING, _TAR_ERRORS)
            ).decode("ascii")
            for key, value in sorted(header.pax_headers.items())
            if key.startswith(_XATTR_PAX_PREFIX)
        }
        # tarfile strips a directory's trailing slash and writes it back; name it as written.
        name = header.name + "/" if header.isdir() and not header.name.endswith("/") else header.name
        entry = _TocEntry(
            name=_toc_text(name),
            type=kind,
            size=header.size if kind == "reg" else 0,
            modtime=_modtime(header.mtime),
            link_name=_toc_text(header.linkname) if kind in ("hardlink", "symlink") else "",
            mode=header.mode,
            uid=header.uid,
            gid=header.gid,
            user_name=_name_if_changed(self._last_user, header.uid, _toc_text(header.uname)),
            group_name=_name_if_changed(self._last_group, header.gid, _toc_text(header.gname)),
            xattrs=xattrs or None,
        )
        if kind in ("char", "block"):
            entry.dev_major, entry.dev_minor = header.devmajor, header.devminor
        return entry

    def finish(self) -> _BuildResult:
        self._members.drain()
        offsets = self._members.offsets
        toc = {"version": TOC_VERSION, "entries": [entry.to_json(offsets) for entry in self._toc]}
        toc_json = json.dumps(toc, indent="\t", ensure_ascii=False).encode()

        toc_header = tarfile.TarInfo(mt.ESTARGZ_TOC_TAR_NAME)
        toc_header.size = len(toc_json)
        toc_header.mode = 0
        toc_member = self._members.new_member()
        self._members.write(toc_header.tobuf(tarfile.PAX_FORMAT, _TAR_ENCODING, _TAR_ERRORS))
        self._members.write(toc_json)
        self._members.write(b"\0" * (-len(toc_json) % _TAR_BLOCK) + b"\0" * (2 * _TAR_BLOCK))
        self._members.drain()
        self._out.write(footer_bytes(self._members.offsets[toc_member]))
        return _BuildResult(
            toc_digest="sha256:" + hashlib.sha256(toc_json).hexdigest(),
            diff_id=self._members.uncompressed.digest(),
            uncompressed_size=self._members.uncompressed.size,
        )


def _name_if_changed(last: dict[int, str], ident: int, name: str) -> str:
    if not name or last.get(ident) == name:
        return ""
    last[ident] = name
    return name


def _output_header(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """The header we write for a source entry: same metadata, PAX-encodable, regular types normalised."""
    if info.type not in _TOC_TYPES and not info.isreg():
        raise DriverError(f"unsupported tar entry type {info.type!r} for {info.name!r}")
    out = tarfile.TarInfo(info.name)
    out.type = tarfile.REGTYPE if info.isreg() else info.type  # also '\0', contiguous and sparse files
    out.size = info.size if info.isreg() else 0
    out.mode = info.mode & 0o7777  # what tarfile writes anyway; the TOC must agree with the header
    out.uid, out.gid = info.uid, info.gid
    out.uname, out.gname = info.uname, info.gname
    out.mtime = info.mtime
    out.linkname = info.linkname
    out.devmajor, out.devminor = info.devmajor, info.devminor
    # Sparse maps describe the source's on-disk layout, not ours (we write the payload expanded).
    out.pax_headers = {
        key: value
        for key, value in info.pax_headers.items()
        if not key.startswith("GNU.sparse.") and not (info.sparse is not None and key == "size")
    }
    return out
