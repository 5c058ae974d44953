"""Byte-exact, streaming tar scanning.

Python's tarfile normalises what it reads (strips slashes, merges PAX records, skips padding), so it cannot
tell a converter which raw bytes belong to which entry. `TarScanner` walks the stream in 512-byte blocks
and hands out every byte exactly once, in order:

    for each member:  member.header_bytes  (extension headers + their data + the main header block)
                      member payload        (read with member.read / member.iter_data)
                      member.padding        (set once the scanner moves past the member)
    then:             scanner.end_bytes     (the end-of-archive zero blocks actually present)
                      scanner.iter_trailing()  (anything after them)

Header fields are interpreted the way Go's archive/tar reader (and so containers/storage and tar-split)
interprets them, because converted layers are read back by Go tools that compare their view with ours.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterator
from typing import BinaryIO

from accel.errors import InvalidImage, LimitExceeded

BLOCK_SIZE = 512
ZERO_BLOCK = bytes(BLOCK_SIZE)
# Go refuses PAX and GNU long-name data larger than this; so do we.
MAX_SPECIAL_FILE_SIZE = 1 << 20

TYPE_REG = b"0"
TYPE_REG_A = b"\x00"
TYPE_LINK = b"1"
TYPE_SYMLINK = b"2"
TYPE_CHAR = b"3"
TYPE_BLOCK = b"4"
TYPE_DIR = b"5"
TYPE_FIFO = b"6"
TYPE_PAX = b"x"
TYPE_PAX_GLOBAL = b"g"
TYPE_GNU_LONG_NAME = b"L"
TYPE_GNU_LONG_LINK = b"K"
TYPE_GNU_SPARSE = b"S"

# Entries of these types never carry data, whatever their size field says (Go's isHeaderOnlyType).
HEADER_ONLY_TYPES = frozenset({TYPE_LINK, TYPE_SYMLINK, TYPE_CHAR, TYPE_BLOCK, TYPE_DIR, TYPE_FIFO})

PAX_XATTR_PREFIX = b"SCHILY.xattr."
_PAX_SPARSE_KEYS = (
    b"GNU.sparse.major",
    b"GNU.sparse.minor",
    b"GNU.sparse.name",
    b"GNU.sparse.map",
    b"GNU.sparse.size",
    b"GNU.sparse.realsize",
)


class TarError(InvalidImage):
    """The stream is not a tar archive Go's archive/tar would accept."""


@dataclasses.dataclass(frozen=True)
class EntryLimit:
    """At most `max_entries` entries in one layer's tar (converter.limits.max_entries). What a conversion
    keeps per entry (a TOC, tar-split, normalisation tables, the Nydus builder's tree) grows with each one,
    so every walk of a layer's tar stops at the first entry past the limit, before it is kept. `what` names
    the layer, and its images where known, in the failure."""

    max_entries: int
    what: str

    def check(self, count: int) -> None:
        """`count`: the entries met so far, the one at hand included. LimitExceeded past the limit."""
        if count > self.max_entries:
            raise LimitExceeded(
                f"{self.what} has more than {self.max_entries:,} tar entries (converter.limits.max_entries)"
            )


class TarFormat(enum.Enum):
    V7 = "v7"
    USTAR = "ustar"  # also PAX: the magic is the same, PAX adds 'x' headers
    GNU = "gnu"
    STAR = "star"


@dataclasses.dataclass(frozen=True, order=True)
class Timestamp:
    """A point in time as seconds + nanoseconds since the epoch (0 <= nanoseconds < 1e9)."""

    seconds: int
    nanoseconds: int = 0

    @classmethod
    def from_nanoseconds(cls, total: int) -> Timestamp:
        seconds, nanoseconds = divmod(total, 1_000_000_000)
        return cls(seconds, nanoseconds)


@dataclasses.dataclass(frozen=True)
class TarHeader:
    """One archive entry's metadata after all extension headers are applied (Go semantics).

    Strings stay bytes: tar names are byte strings, and callers decide how to decode them.
    `typeflag` is normalised like Go does: an old-style '\\0' becomes '0', or '5' when the name ends in '/'.
    `size` is the logical size (for sparse files the expanded size); `TarMember.data_size` is what the
    stream actually holds.
    """

    name: bytes
    linkname: bytes
    typeflag: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: Timestamp
    atime: Timestamp | None
    ctime: Timestamp | None
    uname: bytes
    gname: bytes
    devmajor: int
    devminor: int
    format: TarFormat
    pax_records: dict[bytes, bytes] = dataclasses.field(default_factory=dict)
    sparse: bool = False
    # Old GNU sparse ('S'): the (offset, length) regions from the header and its extension blocks.
    gnu_sparse_map: tuple[tuple[int, int], ...] = ()

    @property
    def xattrs(self) -> dict[bytes, bytes]:
        """Extended attributes from SCHILY.xattr.* PAX records (empty values included, as Go keeps them)."""
        n = len(PAX_XATTR_PREFIX)
        return {k[n:]: v for k, v in self.pax_records.items() if k.startswith(PAX_XATTR_PREFIX)}

    @property
    def is_header_only(self) -> bool:
        return self.typeflag in HEADER_ONLY_TYPES


class _Source:
    """Exact reads from the underlying stream, counting the offset."""

    def __init__(self, fileobj: BinaryIO) -> None:
        self._f = fileobj
        self.offset = 0

    def read_up_to(self, n: int) -> bytes:
        """Up to n bytes; fewer only at end of stream."""
        if n <= 0:
            return b""
        data = self._f.read(n)
        if len(data) == n or not data:
            self.offset += len(data)
            return data
        parts = [data]
        got = len(data)
        while got < n:
            more = self._f.read(n - got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        data = b"".join(parts)
        self.offset += len(data)
        return data

    def read_exact(self, n: int, what: str) -> bytes:
        data = self.read_up_to(n)
        if len(data) != n:
            raise TarError(f"tar stream truncated in {what} (wanted {n} bytes, got {len(data)})")
        return data


class TarMember:
    """One entry of the stream: raw header bytes, parsed header, and its payload as a stream."""

    def __init__(
        self, source: _Source, header: TarHeader, header_bytes: bytes, offset: int, data_size: int
    ) -> None:
        self._source = source
        self.header = header
        self.header_bytes = header_bytes
        self.offset = offset  # stream offset of header_bytes[0]
        self.data_offset = offset + len(header_bytes)
        self.data_size = data_size
        self.padding_size = _padding(data_size)
        self._remaining = data_size
        self.padding: bytes | None = None  # set by finish(); shorter than padding_size only at stream end

    @property
    def remaining(self) -> int:
        return self._remaining

    def read(self, size: int = -1) -> bytes:
        """Payload bytes; b"" once the payload is exhausted. A truncated payload raises TarError."""
        if size < 0 or size > self._remaining:
            size = self._remaining
        if size == 0:
            return b""
        data = self._source.read_exact(size, f"the data of {self.header.name!r}")
        self._remaining -= size
        return data

    def iter_data(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        while self._remaining:
            yield self.read(chunk_size)

    def finish(self) -> bytes:
        """Read (and drop) any unread payload, then the padding; returns the padding bytes."""
        if self.padding is None:
            while self._remaining:
                self.read(1 << 20)
            # Go tolerates a stream that ends inside the padding: the archive simply ends there.
            self.padding = self._source.read_up_to(self.padding_size)
        return self.padding


class TarScanner:
    """Iterate a tar stream's members without buffering payloads. Single pass, not thread-safe. With
    `limit`, the member past it raises LimitExceeded instead of being handed out."""

    def __init__(self, fileobj: BinaryIO, limit: EntryLimit | None = None) -> None:
        self._source = _Source(fileobj)
        self._limit = limit
        self.count = 0  # members handed out
        self._done = False
        self._ended_in_padding = False
        self.end_bytes = b""  # the end-of-archive blocks, set when iteration finishes
        self.last_member: TarMember | None = None

    @property
    def offset(self) -> int:
        return self._source.offset

    def __iter__(self) -> Iterator[TarMember]:
        return self.members()

    def members(self) -> Iterator[TarMember]:
        while not self._done:
            if self.last_member is not None:
                padding = self.last_member.finish()
                if len(padding) < self.last_member.padding_size:
                    self._done = True
                    break
            member = self._next_member()
            if member is None:
                self._done = True
                break
            self.count += 1
            if self._limit is not None:
                self._limit.check(self.count)
            self.last_member = member
            yield member
        if self.last_member is not None:
            self.last_member.finish()

    def iter_trailing(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Bytes after the end-of-archive marker (often zero padding up to a record size)."""
        if not self._done:
            raise RuntimeError("iter_trailing() before all members were read")
        while data := self._source.read_up_to(chunk_size):
            yield data

    # --- internals -----------------------------------------------------------------------------------

    def _next_member(self) -> TarMember | None:
        start = self._source.offset
        raw: list[bytes] = []
        pax: dict[bytes, bytes] | None = None
        long_name: bytes | None = None
        long_link: bytes | None = None
        while True:
            block = self._source.read_up_to(BLOCK_SIZE)
            if not block:
                if raw:
                    raise TarError("tar stream ends after an extension header")
                return None
            if len(block) != BLOCK_SIZE:
                raise TarError(f"tar stream truncated in a header block at offset {start}")
            if block == ZERO_BLOCK:
                if raw:
                    raise TarError("zero block after an extension header")
                return self._end_of_archive(block)
            raw.append(block)
            fields = _parse_block(block)
            typeflag = fields.typeflag
            if typeflag in (TYPE_PAX, TYPE_PAX_GLOBAL, TYPE_GNU_LONG_NAME, TYPE_GNU_LONG_LINK):
                if fields.size > MAX_SPECIAL_FILE_SIZE:
                    raise TarError(f"extension header of {fields.size} bytes is too large")
                if typeflag == TYPE_PAX_GLOBAL:
                    # Go returns a global header as an entry of its own; so do we, its records as payload.
                    records = self._source.read_exact(fields.size, "a PAX global header")
                    header, _ = _make_header(fields, _parse_pax(records), None, None)
                    return _PreloadedMember(self._source, header, block, start, records)
                data = self._source.read_exact(fields.size, "an extension header")
                raw.append(data)
                raw.append(self._source.read_exact(_padding(fields.size), "extension header padding"))
                if typeflag == TYPE_PAX:
                    pax = _parse_pax(data)  # a later 'x' header replaces an earlier one, as in Go
                elif typeflag == TYPE_GNU_LONG_NAME:
                    long_name = _cstring(data)
                else:
                    long_link = _cstring(data)
                continue
            gnu_sparse_map: list[tuple[int, int]] = []
            if typeflag == TYPE_GNU_SPARSE and fields.format is TarFormat.GNU:
                # Old GNU sparse: 4 regions in the header, more in extension blocks of 21 each.
                gnu_sparse_map += _gnu_sparse_regions(block[386:482], 4)
                extended = block[482] != 0
                while extended:
                    ext = self._source.read_exact(BLOCK_SIZE, "a GNU sparse extension block")
                    raw.append(ext)
                    gnu_sparse_map += _gnu_sparse_regions(ext[:504], 21)
                    extended = ext[504] != 0
            header, stored_size = _make_header(fields, pax, long_name, long_link)
            if gnu_sparse_map:
                header = dataclasses.replace(header, gnu_sparse_map=tuple(gnu_sparse_map))
            data_size = 0 if header.is_header_only else stored_size
            return TarMember(self._source, header, b"".join(raw), start, data_size)

    def _end_of_archive(self, first: bytes) -> None:
        second = self._source.read_up_to(BLOCK_SIZE)
        if second and len(second) != BLOCK_SIZE:
            raise TarError("tar stream truncated in the end-of-archive marker")
        if second and second != ZERO_BLOCK:
            raise TarError("a zero block followed by a non-zero block (corrupt archive)")
        self.end_bytes = first + second
        return None


class _PreloadedMember(TarMember):
    """A PAX global header: its payload was already read to parse it."""

    def __init__(self, source: _Source, header: TarHeader, block: bytes, offset: int, data: bytes) -> None:
        super().__init__(source, header, block, offset, len(data))
        self._data = data

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > self._remaining:
            size = self._remaining
        start = len(self._data) - self._remaining
        self._remaining -= size
        return self._data[start : start + size]


def _padding(size: int) -> int:
    return -size % BLOCK_SIZE


def _gnu_sparse_regions(data: bytes, count: int) -> list[tuple[int, int]]:
    """(offset, length) pairs of 12-byte numeric fields; an all-NUL offset ends the list."""
    regions = []
    for index in range(count):
        entry = data[index * 24 : index * 24 + 24]
        if not entry[:12].strip(b"\x00"):
            break
        try:
            regions.append((_parse_numeric(entry[:12]), _parse_numeric(entry[12:24])))
        except ValueError as exc:
            raise TarError(f"invalid GNU sparse map: {exc}") from None
    return regions


# --- sparse files ----------------------------------------------------------------------------------


def sparse_regions(member: TarMember) -> list[tuple[int, int]]:
    """The data regions (offset, length) of a sparse member, in the order its payload stores them.

    Covers the three forms Go reads: old GNU ('S' header and extension blocks), PAX 0.0/0.1
    (GNU.sparse.offset/numbytes pairs or GNU.sparse.map) and PAX 1.0, whose map is the start of the
    payload (decimal numbers, one a line, padded to a block) and is consumed here.
    """
    header = member.header
    if header.gnu_sparse_map:
        regions = list(header.gnu_sparse_map)
    elif header.pax_records.get(b"GNU.sparse.major") == b"1":
        regions = _read_pax1_map(member)
    elif b"GNU.sparse.map" in header.pax_records:
        numbers = [
            _pax_int(n, "GNU.sparse.map") for n in header.pax_records[b"GNU.sparse.map"].split(b",") if n
        ]
        if len(numbers) % 2:
            raise TarError(f"sparse map of {header.name!r} has an odd number of fields")
        regions = list(zip(numbers[::2], numbers[1::2], strict=True))
    else:
        raise TarError(f"{header.name!r} is marked sparse but has no sparse map")
    # Writers end maps with empty regions (GNU tar: one at the file size, zeros after it); they hold nothing.
    regions = [(offset, length) for offset, length in regions if length]
    end = 0
    for offset, length in regions:
        if offset < end or length < 0 or offset + length > header.size:
            raise TarError(f"sparse map of {header.name!r} has overlapping or out-of-range regions")
        end = offset + length
    return regions


def _read_pax1_map(member: TarMember) -> list[tuple[int, int]]:
    consumed = 0
    pending = b""
    numbers: list[int] = []
    wanted: int | None = None
    while wanted is None or len(numbers) < 2 * wanted:
        block = member.read(BLOCK_SIZE)
        if len(block) != BLOCK_SIZE:
            raise TarError(f"sparse map of {member.header.name!r} is truncated")
        consumed += BLOCK_SIZE
        *lines, pending = (pending + block).split(b"\n")
        for line in lines:
            value = _pax_int(line, "sparse map entry")
            if wanted is None:
                wanted = value
            else:
                numbers.append(value)
        if consumed > MAX_SPECIAL_FILE_SIZE:
            raise TarError(f"sparse map of {member.header.name!r} is too large")
    if len(numbers) != 2 * wanted:
        raise TarError(f"sparse map of {member.header.name!r} is malformed")
    return list(zip(numbers[::2], numbers[1::2], strict=True))


def iter_expanded(member: TarMember, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """A regular member's content as extraction writes it: sparse holes filled with zeros."""
    if not member.header.sparse:
        yield from member.iter_data(chunk_size)
        return
    position = 0
    for offset, length in sparse_regions(member):
        yield from _zeros(offset - position, chunk_size)
        remaining = length
        while remaining:
            data = member.read(min(chunk_size, remaining))
            if not data:
                raise TarError(f"sparse data of {member.header.name!r} is shorter than its map")
            remaining -= len(data)
            yield data
        position = offset + length
    yield from _zeros(member.header.size - position, chunk_size)


def _zeros(count: int, chunk_size: int) -> Iterator[bytes]:
    while count > 0:
        step = min(count, chunk_size)
        yield bytes(step)
        count -= step


def parse_header_block(block: bytes) -> tuple[TarHeader, int]:
    """One 512-byte header block on its own (no extension headers applied), for callers that walk tar
    blocks themselves: the header, and how many payload bytes follow the block in the stream (0 for the
    header-only types). TarError when the block is no valid header (zero blocks included)."""
    if len(block) != BLOCK_SIZE:
        raise TarError(f"a tar header block is {BLOCK_SIZE} bytes, not {len(block)}")
    header, stored_size = _make_header(_parse_block(block), None, None, None)
    return header, 0 if header.is_header_only else stored_size


# --- header parsing (mirrors Go's archive/tar reader) -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _BlockFields:
    name: bytes
    linkname: bytes
    typeflag: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    uname: bytes
    gname: bytes
    devmajor: int
    devminor: int
    prefix: bytes
    atime: int | None
    ctime: int | None
    realsize: int | None
    format: TarFormat


def _cstring(b: bytes) -> bytes:
    nul = b.find(0)
    return b if nul < 0 else b[:nul]


_OCTAL_DIGITS = re.compile(rb"[0-7]+")
# The usual shapes ("0000644\x00", "   644 \x00", ""): what the general rule below gives, in one match.
_PLAIN_OCTAL = re.compile(rb" *([0-7]*)[ \x00]*")


def _parse_octal(b: bytes) -> int:
    if plain := _PLAIN_OCTAL.fullmatch(b):
        return int(plain[1], 8) if plain[1] else 0
    text = _cstring(b.strip(b" \x00"))
    if not text:
        return 0
    if not _OCTAL_DIGITS.fullmatch(text):  # a per-byte check in Python showed in profiles (8 per header)
        raise ValueError(f"invalid octal field {b!r}")
    return int(text, 8)


def _parse_numeric(b: bytes) -> int:
    """Octal, or base-256 (GNU/star extension for large values) when the high bit is set."""
    if b and b[0] & 0x80:
        negative = bool(b[0] & 0x40)
        data = bytes(c ^ 0xFF for c in b) if negative else b
        value = int.from_bytes(bytes([data[0] & 0x7F]) + data[1:], "big")
        if value >> 63:
            raise ValueError("base-256 field overflows int64")
        return ~value if negative else value
    return _parse_octal(b)


def _format_of(block: bytes) -> TarFormat:
    try:
        stored = _parse_octal(block[148:156])
    except ValueError:
        raise TarError("tar header has an unreadable checksum") from None
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    if stored != unsigned:  # the signed sum (old writers) costs a Python loop: only when needed
        signed = sum(c - 256 if c > 127 else c for c in block[:148]) + 8 * 0x20
        signed += sum(c - 256 if c > 127 else c for c in block[156:])
        if stored != signed:
            raise TarError("tar header checksum mismatch")
    magic, version, trailer = block[257:263], block[263:265], block[508:512]
    if magic == b"ustar\x00":
        return TarFormat.STAR if trailer == b"tar\x00" else TarFormat.USTAR
    if magic == b"ustar " and version == b" \x00":
        return TarFormat.GNU
    return TarFormat.V7


def _parse_block(block: bytes) -> _BlockFields:
    fmt = _format_of(block)
    try:
        mode = _parse_numeric(block[100:108])
        uid = _parse_numeric(block[108:116])
        gid = _parse_numeric(block[116:124])
        size = _parse_numeric(block[124:136])
        mtime = _parse_numeric(block[136:148])
        uname = gname = prefix = b""
        devmajor = devminor = 0
        atime = ctime = realsize = None
        if fmt is not TarFormat.V7:
            uname = _cstring(block[265:297])
            gname = _cstring(block[297:329])
            devmajor = _parse_numeric(block[329:337])
            devminor = _parse_numeric(block[337:345])
        if fmt is TarFormat.USTAR:
            prefix = _cstring(block[345:500])
        elif fmt is TarFormat.STAR:
            prefix = _cstring(block[345:476])
            atime = _parse_numeric(block[476:488])
            ctime = _parse_numeric(block[488:500])
        elif fmt is TarFormat.GNU:
            try:
                atime = _parse_numeric(block[345:357]) if block[345] else None
                ctime = _parse_numeric(block[357:369]) if block[357] else None
            except ValueError:
                # Pre-Go1.8 writers put a USTAR prefix here; Go falls back to reading it as one.
                atime = ctime = None
                candidate = _cstring(block[345:500])
                if candidate.isascii():
                    prefix = candidate
            if block[156:157] == TYPE_GNU_SPARSE:
                realsize = _parse_numeric(block[483:495])
    except ValueError as exc:
        raise TarError(f"invalid tar header: {exc}") from None
    if size < 0:
        raise TarError("negative size in tar header")
    name = _cstring(block[0:100])
    if prefix:
        name = prefix + b"/" + name
    return _BlockFields(
        name=name,
        linkname=_cstring(block[157:257]),
        typeflag=block[156:157],
        mode=mode,
        uid=uid,
        gid=gid,
        size=size,
        mtime=mtime,
        uname=uname,
        gname=gname,
        devmajor=devmajor,
        devminor=devminor,
        prefix=prefix,
        atime=atime,
        ctime=ctime,
        realsize=realsize,
        format=fmt,
    )


def _parse_pax(data: bytes) -> dict[bytes, bytes]:
    """PAX records "%d %s=%s\\n"; GNU sparse 0.0 offset/numbytes pairs are folded into GNU.sparse.map."""
    records: dict[bytes, bytes] = {}
    sparse_map: list[bytes] = []
    rest = data
    while rest:
        space = rest.find(b" ")
        if space <= 0 or not rest[:space].isdigit():
            raise TarError("malformed PAX record length")
        length = int(rest[:space])
        if length < 5 or length > len(rest) or length <= space + 1 or rest[length - 1 : length] != b"\n":
            raise TarError("malformed PAX record")
        record, rest = rest[space + 1 : length - 1], rest[length:]
        key, eq, value = record.partition(b"=")
        if not eq or not key:
            raise TarError("PAX record without a key")
        if key in (b"path", b"linkpath", b"uname", b"gname"):
            if b"\x00" in value:
                raise TarError(f"PAX {key.decode()} contains NUL")
        elif b"\x00" in key:
            raise TarError("PAX key contains NUL")
        if key in (b"GNU.sparse.offset", b"GNU.sparse.numbytes"):
            sparse_map.append(value)
        else:
            records[key] = value
    if sparse_map:
        records[b"GNU.sparse.map"] = b",".join(sparse_map)
    return records


def _pax_int(value: bytes, what: str) -> int:
    try:
        return int(value.decode("ascii"), 10)
    except (UnicodeDecodeError, ValueError):
        raise TarError(f"invalid PAX {what} {value!r}") from None


def _pax_time(value: bytes) -> Timestamp:
    """Parse secs[.frac] with at most nanosecond precision kept (extra digits truncated), like Go."""
    secs_text, dot, frac = value.partition(b".")
    seconds = _pax_int(secs_text, "time")
    if not dot or not frac:
        return Timestamp(seconds)
    if not frac.isdigit():
        raise TarError(f"invalid PAX time {value!r}")
    nanos = int(frac[:9].ljust(9, b"0"))
    if secs_text.startswith(b"-"):
        nanos = -nanos
    return Timestamp.from_nanoseconds(seconds * 1_000_000_000 + nanos)


def _make_header(
    fields: _BlockFields,
    pax: dict[bytes, bytes] | None,
    long_name: bytes | None,
    long_link: bytes | None,
) -> tuple[TarHeader, int]:
    """The merged header, and how many payload bytes the stream holds (before any sparse expansion)."""
    name, linkname = fields.name, fields.linkname
    uid, gid, size = fields.uid, fields.gid, fields.size
    uname, gname = fields.uname, fields.gname
    mtime = Timestamp(fields.mtime)
    atime = Timestamp(fields.atime) if fields.atime is not None else None
    ctime = Timestamp(fields.ctime) if fields.ctime is not None else None
    records = dict(pax or {})
    for key, value in records.items():
        if not value:
            continue  # Go keeps the header-block value for empty records
        if key == b"path":
            name = value
        elif key == b"linkpath":
            linkname = value
        elif key == b"uname":
            uname = value
        elif key == b"gname":
            gname = value
        elif key == b"uid":
            uid = _pax_int(value, "uid")
        elif key == b"gid":
            gid = _pax_int(value, "gid")
        elif key == b"size":
            size = _pax_int(value, "size")
        elif key == b"mtime":
            mtime = _pax_time(value)
        elif key == b"atime":
            atime = _pax_time(value)
        elif key == b"ctime":
            ctime = _pax_time(value)
    if long_name is not None and long_name:
        name = long_name
    if long_link is not None and long_link:
        linkname = long_link
    stored_size = size
    typeflag = fields.typeflag
    if typeflag == TYPE_REG_A:
        typeflag = TYPE_DIR if name.endswith(b"/") else TYPE_REG
    sparse = False
    if any(k in records for k in _PAX_SPARSE_KEYS):
        sparse = True
        if records.get(b"GNU.sparse.name"):
            name = records[b"GNU.sparse.name"]
        if b"GNU.sparse.size" in records:
            size = _pax_int(records[b"GNU.sparse.size"], "GNU.sparse.size")
        elif b"GNU.sparse.realsize" in records:
            size = _pax_int(records[b"GNU.sparse.realsize"], "GNU.sparse.realsize")
    if fields.realsize is not None:
        sparse = True
        size = fields.realsize
    if size < 0 or stored_size < 0:
        raise TarError("negative size in tar header")
    header = TarHeader(
        name=name,
        linkname=linkname,
        typeflag=typeflag,
        mode=fields.mode,
        uid=uid,
        gid=gid,
        size=size,
        mtime=mtime,
        atime=atime,
        ctime=ctime,
        uname=uname,
        gname=gname,
        devmajor=fields.devmajor,
        devminor=fields.devminor,
        format=fields.format,
        pax_records=records,
        sparse=sparse,
    )
    return header, stored_size
