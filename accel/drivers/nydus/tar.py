"""Tar fix-ups on the way into the builder: nydus-image 2.2.0's tar reader is stricter than the writers.

The stream passes through unchanged except for char/block/FIFO headers with blank device numbers (see
`fix_header`), and it ends with the end-of-archive blocks: nydus-image reads on past them (its reader skips
zero blocks), so an archive appended to the layer, or bytes that are no tar, must never reach it. Headers
are read with `accel.tarstream` (Go's reading of a header block); a block that is no valid header (a broken
archive) passes through untouched, so the builder judges a broken archive itself and reports it.

`ScanningFeed` reads a layer once for both the builder and `accel.tarnormalize`'s scan: it gives the
builder what `builder_compatible_tar` gives, each entry's header only after the scan checked that entry
(`refuse_what_nydus_cannot_hold` included). `losses` says what of a layer the image does not keep.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from accel import tarnormalize, tarstream
from accel.tarnormalize import LayerScan, Normalisation

COPY_SIZE = 1 << 20
GATHER_SIZE = 1 << 16
TAR_BLOCK = tarstream.BLOCK_SIZE

# ustar header fields (offset, length) rewritten by `fix_header`.
_TAR_CHECKSUM = (148, 8)
_TAR_DEVMAJOR = (329, 8)
_TAR_DEVMINOR = (337, 8)
_TAR_DEVICE_TYPES = frozenset({tarstream.TYPE_CHAR, tarstream.TYPE_BLOCK, tarstream.TYPE_FIFO})
_TAR_ZERO_DEVICE = b"0000000\0"


def _tar_checksum(header: bytes | bytearray) -> int:
    start, length = _TAR_CHECKSUM
    return sum(header[:start]) + 32 * length + sum(header[start + length :])


def fix_header(block: bytes, header: tarstream.TarHeader) -> bytes:
    """Fill empty device numbers of char/block/fifo header blocks with zeros.

    Python's tarfile (and some other writers) leave them blank for FIFOs; nydus-image 2.2.0's tar reader
    then fails with "numeric field was not a number". Zero is what Go's archive/tar writes.
    """
    if header.typeflag not in _TAR_DEVICE_TYPES:
        return block
    fixed = bytearray(block)
    changed = False
    for start, length in (_TAR_DEVMAJOR, _TAR_DEVMINOR):
        if not fixed[start : start + length].strip(b"\0 "):
            fixed[start : start + length] = _TAR_ZERO_DEVICE
            changed = True
    if not changed:
        return block
    start, length = _TAR_CHECKSUM
    fixed[start : start + length] = b"%06o\0 " % _tar_checksum(fixed)
    return bytes(fixed)


def _read_exactly(source: BinaryIO, size: int) -> bytes:
    data = source.read(size)
    while data and len(data) < size:
        more = source.read(size - len(data))
        if not more:
            break
        data += more
    return data


def builder_compatible_tar(source: BinaryIO) -> Iterator[bytes]:
    """The tar stream in chunks up to its end-of-archive blocks (two zero blocks where a header may start),
    headers fixed up for the builder where needed (see `fix_header`)."""
    after_zero_block = False
    while True:
        block = _read_exactly(source, TAR_BLOCK)
        if len(block) < TAR_BLOCK:
            if block:
                yield block
            return
        if block == tarstream.ZERO_BLOCK:
            yield block
            if after_zero_block:
                return  # the end of the archive, as Go's archive/tar, GNU tar and Python's tarfile read it
            after_zero_block = True
            continue
        after_zero_block = False
        try:
            header, data_size = tarstream.parse_header_block(block)
        except tarstream.TarError:  # not a header: pass through untouched, the builder reports it
            yield block
            continue
        yield fix_header(block, header)
        remaining = data_size + -data_size % TAR_BLOCK
        while remaining > 0:
            chunk = source.read(min(COPY_SIZE, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk


# What nydus-image 2.2.0 keeps: uid and gid as u32; mtime as an unsigned 64-bit number (RAFS i_mtime), which
# its own readers (inspect, unpack) show unsigned and the kernel reads signed: only 0 <= mtime < 2**63 reads
# the same everywhere. Its tar reader splits PAX records at newlines.
_MAX_ID = (1 << 32) - 1
_MTIME_RANGE = range(0, 1 << 63)


def refuse_what_nydus_cannot_hold(header: tarstream.TarHeader) -> None:
    """UnsupportedEntry for an entry nydus-image 2.2.0 would fail on without naming it, or take wrongly (the
    `check` of the driver's `tarnormalize` scans): no rewriting carries it to nydus-image."""
    label = tarnormalize.entry_label(header.name)
    for key, value in header.pax_records.items():
        if b"\n" in key or b"\n" in value:
            record = key.decode("utf-8", "surrogateescape")
            raise tarnormalize.UnsupportedEntry(
                f"tar entry {label}: its PAX record {record!r} holds a newline, which nydus-image 2.2.0's "
                "tar reader cannot read (it splits PAX records at newlines)"
            )
    base = header.name.rstrip(b"/").rpartition(b"/")[2]
    if base.startswith(tarnormalize.WHITEOUT_PREFIX):
        try:
            base.decode("utf-8")
        except UnicodeDecodeError:
            raise tarnormalize.UnsupportedEntry(
                f"tar entry {label} is a whiteout of a name that is not UTF-8, which nydus-image 2.2.0 does "
                "not apply (the file and the whiteout would both stay)"
            ) from None
    for what, value in (("uid", header.uid), ("gid", header.gid)):
        if not 0 <= value <= _MAX_ID:
            raise tarnormalize.UnsupportedEntry(
                f"tar entry {label}: {what} {value} does not fit RAFS's 32-bit {what}"
            )
    if header.mtime.seconds < 0:
        raise tarnormalize.UnsupportedEntry(
            f"tar entry {label}: mtime {header.mtime.seconds} is before 1970, which RAFS (nydus-image 2.2.0) "
            f"keeps as the unsigned {header.mtime.seconds % (1 << 64)}"
        )
    if header.mtime.seconds not in _MTIME_RANGE:
        raise tarnormalize.UnsupportedEntry(
            f"tar entry {label}: mtime {header.mtime.seconds} does not fit RAFS's 63 bits"
        )


def losses(normal: Normalisation) -> list[str]:
    """What of a layer its Nydus image does not hold, one phrase per kind (for a warning naming the layer)."""
    found = []
    if normal.subsecond_mtimes:
        examples = ", ".join(normal.subsecond_examples)
        more = normal.subsecond_mtimes - len(normal.subsecond_examples)
        found.append(
            f"{normal.subsecond_mtimes} sub-second mtime(s) truncated to seconds ({examples}"
            + (f" and {more} more" if more else "")
            + "): nydus-image 2.2.0 writes no nanoseconds to RAFS"
        )
    if normal.trailing_data:
        found.append(
            f"{normal.trailing_size} bytes after the end-of-archive blocks, not all zeros (another archive "
            "appended, or no tar), ignored as Go's archive/tar, GNU tar and Python's tarfile ignore them"
        )
    return found


class NotPassedThrough(Exception):  # a signal to take the two-pass way, not an error
    """`ScanningFeed.chunks` stopped: the layer cannot reach the builder as it is (the reason is the message).

    The builder run fed so far must be discarded; `ScanningFeed.normalisation` says what the layer needs.
    """


class ScanningFeed:
    """One read of a layer tar that feeds the builder and scans the layer (`LayerScan`) at the same time.

    `chunks` gives the bytes `builder_compatible_tar` gives for the same tar, but an entry's header only
    after `LayerScan.add` checked it: a hostile entry (a `..` leaving the root, a hardlink to no earlier
    entry) raises UnsafeEntry, and an entry that shows the layer needs normalising raises NotPassedThrough,
    before the builder gets any of its bytes. `normalisation` scans what `chunks` did not reach (the builder
    stopped reading, or `chunks` stopped) and returns the Normalisation `tarnormalize.scan_layer` gives for
    the whole tar, or raises what it raises. The builder's output is only good when that Normalisation
    `passes_through`.
    """

    def __init__(self, source: BinaryIO, limit: tarstream.EntryLimit | None = None) -> None:
        """`limit`: converter.limits.max_entries, met before the builder gets the entry past it."""
        self._source = source
        self._scanner = tarstream.TarScanner(source, limit)
        self._members = iter(self._scanner)
        self._scan = LayerScan(spot_changes=True, check=refuse_what_nydus_cannot_hold)

    def chunks(self) -> Iterator[bytes]:
        """The builder's input (see the class). Headers and small files are joined into writes of at least
        `GATHER_SIZE` bytes: a Debian rootfs then takes 2,300 FIFO writes instead of 35,000."""
        pending: list[bytes] = []
        pending_size = 0
        for piece in self._pieces():
            if len(piece) >= GATHER_SIZE:
                if pending:
                    yield b"".join(pending)
                    pending, pending_size = [], 0
                yield piece
                continue
            pending.append(piece)
            pending_size += len(piece)
            if pending_size >= GATHER_SIZE:
                yield b"".join(pending)
                pending, pending_size = [], 0
        if pending:
            yield b"".join(pending)

    def _pieces(self) -> Iterator[bytes]:
        for member in self._members:
            change = self._scan.add(member)
            if change is not None:
                raise NotPassedThrough(change)
            yield self._builder_header(member)
            yield from member.iter_data(COPY_SIZE)
            if padding := member.finish():
                yield padding
        # The scanner stops after the end-of-archive blocks; what follows them is no part of the layer.
        if self._scanner.end_bytes:
            yield self._scanner.end_bytes

    def normalisation(self) -> Normalisation:
        self._scan.spot_changes = False  # the normalisation is decided now; early signs no longer matter
        for member in self._members:
            self._scan.add(member)
        return self._scan.normalisation(self._scanner)

    @staticmethod
    def _builder_header(member: tarstream.TarMember) -> bytes:
        """The member's header bytes as `builder_compatible_tar` passes them on (a sparse member never
        gets here: it is rewritten, and old GNU sparse extension blocks follow its main block)."""
        header_bytes = member.header_bytes
        if len(header_bytes) == TAR_BLOCK:
            return fix_header(header_bytes, member.header)
        # Extension headers first: `builder_compatible_tar` reads the payload size from the main block's own
        # fields, not from PAX records or a long name; where they disagree it walks this entry differently.
        main_block = header_bytes[-TAR_BLOCK:]
        block_header, block_data_size = tarstream.parse_header_block(main_block)
        if block_data_size != member.data_size:
            raise NotPassedThrough(
                f"{member.header.name!r}: its extension headers change its payload size, which "
                "builder_compatible_tar reads from the main header block alone"
            )
        fixed = fix_header(main_block, block_header)
        return header_bytes if fixed is main_block else header_bytes[:-TAR_BLOCK] + fixed
