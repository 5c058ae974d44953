"""A layer tar rewritten into the plain form strict tar readers (nydus-image) need; same tree once applied.

Two passes over the uncompressed layer, neither holding payloads in memory:

1. `scan_layer` reads headers only and plans: which occurrences of a repeated path to drop (the last one
   wins, as in layer application), which directory entries to move before their first child, which entries
   to refuse (a `..` escaping the root, a hardlink whose target is not an earlier entry of the layer, an
   entry below a non-directory of the same layer). It also yields the layer's `DirectoryTable`.
2. `normalized_tar` writes the stream: unchanged entries byte for byte, moved directories where their first
   child was, sparse files (old GNU and PAX 0.0/0.1/1.0) expanded into plain files, absolute and `..`
   names rewritten relative to the root (OCI semantics), hardlinks to hardlinks (or with attributes of their
   own) pointed at the chain's first entry with its attributes, owner and mtime values that PAX records
   alone carry written into the header block (see `carried_numbers`), nothing after the end-of-archive
   blocks.

Entries the consumer cannot take in any form are refused by name (`UnsupportedEntry`, raised by the `check`
a scan is given: for nydus-image, `accel.drivers.nydus.tar.refuse_what_nydus_cannot_hold`).

A layer that needs none of this comes out byte-identical (up to its end-of-archive blocks). `as_stream`
turns the output into a file object.
`LayerScan` is pass 1 one member at a time, for a reader that feeds a consumer while it scans (the Nydus
driver's single read of a layer that needs no normalising, `accel.drivers.nydus.tar.ScanningFeed`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

from accel import tarstream
from accel.errors import InvalidImage
from accel.tarstream import TarHeader, TarMember, TarScanner

WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
_AUFS_META_PREFIX = b".wh..wh."
_REGULAR_TYPES = frozenset({tarstream.TYPE_REG, b"7", tarstream.TYPE_GNU_SPARSE})
_ENTRY_TYPES = _REGULAR_TYPES | tarstream.HEADER_ONLY_TYPES
_DROPPED_PAX_KEYS = frozenset({"path", "linkpath", "size"})


class UnsafeEntry(InvalidImage):
    """A layer entry that cannot be applied inside the root filesystem.

    Refused before a builder gets it or, when a later entry shows the problem (a non-directory above it, its
    hardlink target replaced), before the builder gets that entry.
    """


class UnsupportedEntry(InvalidImage):
    """A legal layer entry the consumer cannot hold and no rewriting carries to it (see `LayerScan`'s
    `check`), or whose meaning the normalised layer cannot express."""


_NUMBER_FIELDS = (("uid", 108, 8), ("gid", 116, 8), ("mtime", 136, 12))
_NUMBER_KEYS = frozenset({b"uid", b"gid", b"mtime"})


def entry_label(name: bytes) -> str:
    """`'name'` for messages: bytes that are not UTF-8 as `\\xff` and control characters escaped, once each
    (`repr` of the decoded text doubled the backslashes that `backslashreplace` had written)."""
    text = name.decode("utf-8", "backslashreplace")
    return "'" + "".join(c if c.isprintable() else repr(c)[1:-1] for c in text) + "'"


def clean_path(name: bytes, what: str = "entry") -> bytes:
    """`name` relative to the root, `.` and `..` resolved lexically; UnsafeEntry if `..` leaves the root."""
    parts: list[bytes] = []
    for part in name.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if not parts:
                raise UnsafeEntry(f"tar {what} {entry_label(name)} escapes the root with '..'")
            parts.pop()
            continue
        parts.append(part)
    return b"/".join(parts)


def _parent(path: bytes) -> bytes:
    return path.rpartition(b"/")[0]


def _ancestors(path: bytes) -> Iterator[bytes]:
    """Proper ancestors of `path`, outermost first (the root excluded)."""
    parts = path.split(b"/")
    for depth in range(1, len(parts)):
        yield b"/".join(parts[:depth])


# --- the per-layer directory table -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DirectoryAttributes:
    """What a directory entry sets: mode bits, owner, mtime (seconds, nanoseconds), xattrs."""

    mode: int
    uid: int
    gid: int
    mtime: int
    mtime_ns: int = 0
    xattrs: tuple[tuple[str, str], ...] = ()  # names and values, bytes kept via surrogateescape

    @classmethod
    def of(cls, header: TarHeader) -> DirectoryAttributes:
        xattrs = tuple(sorted((_text(k), _text(v)) for k, v in header.xattrs.items()))
        return cls(header.mode & 0o7777, header.uid, header.gid, header.mtime.seconds,
                   header.mtime.nanoseconds, xattrs)  # fmt: skip

    def to_json(self) -> list[Any]:
        return [self.mode, self.uid, self.gid, self.mtime, self.mtime_ns, [list(x) for x in self.xattrs]]

    @classmethod
    def from_json(cls, value: list[Any]) -> DirectoryAttributes:
        mode, uid, gid, mtime, mtime_ns, xattrs = value
        return cls(mode, uid, gid, mtime, mtime_ns, tuple((k, v) for k, v in xattrs))


@dataclasses.dataclass(frozen=True)
class DirectoryTable:
    """What one layer does to directories when applied, as paths relative to the root (str, surrogateescape).

    `directories`: the directory entries it carries (final attributes); `implied`: parents of its entries it
    does not carry; `whiteouts` / `opaque`: lower paths it removes / directories it empties; `replaced`: its
    non-directory paths (each replaces a lower directory of that name and its subtree).
    """

    directories: dict[str, DirectoryAttributes]
    implied: tuple[str, ...] = ()
    whiteouts: tuple[str, ...] = ()
    opaque: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        doc = {
            "version": 1,
            "directories": {k: v.to_json() for k, v in sorted(self.directories.items())},
            "implied": sorted(self.implied),
            "whiteouts": sorted(self.whiteouts),
            "opaque": sorted(self.opaque),
            "replaced": sorted(self.replaced),
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> DirectoryTable:
        doc = json.loads(raw)
        if doc.get("version") != 1:
            raise ValueError(f"unknown directory table version {doc.get('version')!r}")
        return cls(
            directories={k: DirectoryAttributes.from_json(v) for k, v in doc["directories"].items()},
            implied=tuple(doc["implied"]),
            whiteouts=tuple(doc["whiteouts"]),
            opaque=tuple(doc["opaque"]),
            replaced=tuple(doc["replaced"]),
        )


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


# --- pass 1: plan ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Normalisation:
    """What `normalized_tar` does to each entry, by its index in the stream (what pass 1 decided), and the
    layer's directory table."""

    skip: set[int] = dataclasses.field(default_factory=set)
    # entry index -> directory entries (by index) to write just before it, outermost first
    moved_before: dict[int, list[int]] = dataclasses.field(default_factory=dict)
    directory_headers: dict[int, bytes] = dataclasses.field(default_factory=dict)
    table: DirectoryTable = dataclasses.field(default_factory=lambda: DirectoryTable({}))
    # Entries whose header `normalized_tar` rewrites (sparse files, absolute or `..` names), for messages.
    rewritten: list[str] = dataclasses.field(default_factory=list)
    ends_cleanly: bool = False  # the layer has an end-of-archive marker (`normalized_tar` adds one if not)
    # Entries (by index) whose owner or mtime the header block must carry (`carried_numbers`).
    carried: set[int] = dataclasses.field(default_factory=set)
    # Hardlinks (by index) `normalized_tar` writes as links to the chain's first entry (by index), with its
    # mode, owner and mtime: a link to a link, or a link whose header says other attributes.
    link_targets: dict[int, int] = dataclasses.field(default_factory=dict)
    # Entries with a sub-second mtime (a consumer may keep seconds only): how many, the first few.
    subsecond_mtimes: int = 0
    subsecond_examples: list[str] = dataclasses.field(default_factory=list)
    # Bytes after the end-of-archive blocks, which no reader takes as entries (`normalized_tar` drops them),
    # and whether any of them is not zero (another archive, or not a tar at all).
    trailing_size: int = 0
    trailing_data: bool = False

    @property
    def passes_through(self) -> bool:
        """Whether `normalized_tar` gives the layer byte for byte up to its end-of-archive blocks: a consumer
        may read the layer itself (and stop at those blocks)."""
        return self.ends_cleanly and not self.changes()

    @property
    def reorders(self) -> bool:
        return bool(self.skip or self.moved_before)

    def changes(self) -> list[str]:
        """What the normalised stream changes, one phrase per kind (empty: it is the layer byte for byte)."""
        changes = []
        if self.skip - set(self.directory_headers):
            changes.append(f"{len(self.skip - set(self.directory_headers))} repeated path(s) dropped")
        if self.moved_before:
            changes.append(f"{len(self.directory_headers)} directory entries moved before their children")
        if self.rewritten:
            changes.append(
                f"headers rewritten for {', '.join(self.rewritten[:3])}"
                + (f" and {len(self.rewritten) - 3} more" if len(self.rewritten) > 3 else "")
            )
        return changes


@dataclasses.dataclass
class _Seen:
    index: int
    header: TarHeader
    path: bytes
    carry: bool = False  # the header block does not say the owner or mtime PAX records set


def scan_layer(
    stream: BinaryIO, check: EntryCheck | None = None, limit: tarstream.EntryLimit | None = None
) -> Normalisation:
    """Pass 1 (headers only): the Normalisation for `normalized_tar` and the layer's directory table; `check`
    as in `LayerScan`; `limit`: converter.limits.max_entries (the scan keeps a record per entry). Pass 2
    reads the same bytes, so the limit held there too."""
    scan = LayerScan(check=check)
    scanner = TarScanner(stream, limit)
    for member in scanner:
        scan.add(member)
    return scan.normalisation(scanner)


EntryCheck = Callable[[TarHeader], None]


def _trailing(scanner: TarScanner) -> tuple[int, bool]:
    """How many bytes follow the end-of-archive blocks, and whether any of them is not zero."""
    size, data = 0, False
    for chunk in scanner.iter_trailing():
        size += len(chunk)
        data = data or bool(chunk.strip(b"\0"))
    return size, data


class LayerScan:
    """`scan_layer` one member at a time, for a reader that also forwards the layer (one pass over it).

    `add` makes the checks that can decide on one entry and what came before it (a `..` escaping the root,
    a hardlink to a path that is no earlier entry) and raises UnsafeEntry; `normalisation` makes the rest once
    every member was added. With `spot_changes`, `add` also says when the normalisation can no longer pass
    the layer through (see `_spot_change`), so a reader forwarding the layer as it is can stop early.
    """

    def __init__(self, spot_changes: bool = False, check: EntryCheck | None = None) -> None:
        self._check = check  # raises UnsupportedEntry for an entry the consumer cannot hold in any form
        self._entries: list[_Seen | None] = []
        self._last: dict[bytes, int] = {}  # path -> index of its latest entry (its keys: every path so far)
        self._directory_headers: dict[int, bytes] = {}
        self.spot_changes = spot_changes
        # Paths with an earlier entry below them / of an entry that is no directory (for `_spot_change`).
        self._above_entries: set[bytes] = set()
        self._non_directories: set[bytes] = set()
        self._subsecond = 0
        self._subsecond_examples: list[str] = []

    def add(self, member: TarMember) -> str | None:
        """Check the next member; with `spot_changes`, why the layer cannot pass through (None: it may)."""
        index = len(self._entries)
        header = member.header
        if header.typeflag not in _ENTRY_TYPES:
            self._entries.append(None)  # PAX global headers and unknown types pass through untouched
            return None
        path = clean_path(header.name)
        if self._check is not None:
            self._check(header)
        carry = _needs_carrying(member)
        if header.mtime.nanoseconds:
            self._subsecond += 1
            if len(self._subsecond_examples) < 3:
                self._subsecond_examples.append(entry_label(header.name))
        if header.typeflag == tarstream.TYPE_DIR:
            # Header-only and few: kept in case the directory must move before its first child.
            if not _name_is_clean(header.name):
                self._directory_headers[index] = carried_numbers(rewritten_header(header, 0), header)
            else:
                kept = member.header_bytes
                self._directory_headers[index] = carried_numbers(kept, header) if carry else kept
        if header.typeflag == tarstream.TYPE_LINK:
            target = clean_path(header.linkname, f"hardlink {entry_label(header.name)} target")
            if not target or target not in self._last:
                raise UnsafeEntry(
                    f"tar entry {entry_label(header.name)} is a hardlink to {entry_label(header.linkname)}, "
                    "which is not an earlier entry of the layer"
                )
        change = None
        if self.spot_changes and carry:
            change = f"{entry_label(header.name)}'s owner or mtime is only in PAX records"
        elif self.spot_changes and path:
            change = self._spot_change(header, path)
        seen = _Seen(index, header, path, carry)
        self._entries.append(seen)
        self._last[path] = index
        return change

    def _spot_change(self, header: TarHeader, path: bytes) -> str | None:
        """Why the normalisation will not pass the layer through, seen at this (non-root) entry; None: not
        yet known.

        Each reason is certain: the normalisation drops, moves or rewrites an entry, or refuses the layer. The
        first reason is the one to act on: the bookkeeping stops there, so later answers may miss changes.
        """
        if path in self._last:
            return f"{entry_label(header.name)} repeats a path"  # the earlier entry is dropped
        if header.sparse or not _name_is_clean(header.name):
            return f"{entry_label(header.name)} is rewritten"  # unless a later entry drops it
        if header.typeflag == tarstream.TYPE_LINK:
            if not _name_is_clean(header.linkname):
                return f"{entry_label(header.name)} is rewritten"
            target = self._entries[self._last[clean_path(header.linkname)]]
            if target is not None and target.header.typeflag == tarstream.TYPE_DIR:
                return f"{entry_label(header.name)} is a hardlink to a directory"  # refused unless replaced
            if target is not None and target.header.typeflag == tarstream.TYPE_LINK:
                return f"{entry_label(header.name)} is a hardlink to a hardlink"  # pointed at the first
            if target is not None and _attributes(target.header) != _attributes(header):
                return f"{entry_label(header.name)} is a hardlink with attributes of its own"
        if path in self._above_entries:
            # A directory after an entry below it moves; a non-directory above entries is refused.
            return f"{entry_label(header.name)} comes after an entry below it"
        if header.typeflag != tarstream.TYPE_DIR:
            self._non_directories.add(path)
        # Every ancestor of a path in `_above_entries` is in it: stop at the first one already there.
        ancestor = _parent(path)
        while ancestor and ancestor not in self._above_entries:
            if ancestor in self._non_directories:
                return f"{entry_label(header.name)} lies below a non-directory"  # refused unless replaced
            self._above_entries.add(ancestor)
            ancestor = _parent(ancestor)
        return None

    def normalisation(self, scanner: TarScanner) -> Normalisation:
        """The Normalisation for `normalized_tar` once `scanner` (which gave every member added) is done; it
        reads what follows the end-of-archive blocks. Raises UnsafeEntry as `scan_layer` does."""
        normal = _normalisation(self._entries, self._last, self._directory_headers, bool(scanner.end_bytes))
        normal.subsecond_mtimes, normal.subsecond_examples = self._subsecond, list(self._subsecond_examples)
        normal.trailing_size, normal.trailing_data = _trailing(scanner)
        return normal


def _normalisation(
    entries: list[_Seen | None],
    last: dict[bytes, int],
    directory_headers: dict[int, bytes],
    ends_cleanly: bool,
) -> Normalisation:
    normal = Normalisation(ends_cleanly=ends_cleanly)
    kept: list[_Seen] = []
    for seen in entries:
        if seen is None:
            continue
        if not seen.path:
            if seen.carry:  # the root itself: never moved, but its owner and mtime count
                normal.carried.add(seen.index)
                normal.rewritten.append(entry_label(seen.header.name))
            continue
        if last[seen.path] != seen.index:
            final = entries[last[seen.path]]
            if final is not None and final.header.typeflag == tarstream.TYPE_DIR != seen.header.typeflag:
                # Applied in order, the non-directory removes the directory's subtree (lower layers' and
                # this layer's earlier entries), and the later directory starts empty: the last entry alone
                # (merged over the lower directory) does not say that.
                raise UnsupportedEntry(
                    f"tar entry {entry_label(seen.header.name)} is a non-directory that a later entry of the "
                    "layer makes a directory again, which empties it; its last entry alone cannot say that"
                )
            normal.skip.add(seen.index)
            continue
        header = seen.header
        if (
            seen.carry
            or header.sparse
            or not _name_is_clean(header.name)
            or (header.typeflag == tarstream.TYPE_LINK and not _name_is_clean(header.linkname))
        ):
            normal.rewritten.append(entry_label(header.name))
        if seen.carry:
            normal.carried.add(seen.index)
        kept.append(seen)
    kept_by_path = {seen.path: seen for seen in kept}
    chain_first: dict[int, _Seen] = {}  # each hardlink (by index): the first entry of its chain

    for seen in kept:
        for ancestor in _ancestors(seen.path):
            carrier = kept_by_path.get(ancestor)
            if carrier is not None and carrier.header.typeflag != tarstream.TYPE_DIR:
                below = entry_label(carrier.header.name)
                raise UnsafeEntry(
                    f"tar entry {entry_label(seen.header.name)} lies below {below}, "
                    "which this layer makes a non-directory"
                )
        if seen.header.typeflag == tarstream.TYPE_LINK:
            target = clean_path(seen.header.linkname)
            if last[target] > seen.index:
                raise UnsafeEntry(
                    f"tar entry {entry_label(seen.header.name)} is a hardlink to "
                    f"{entry_label(seen.header.linkname)}, which the layer replaces after the link"
                )
            linked = kept_by_path[target]
            if linked is seen:  # the link replaces its own target: extraction has nothing to link to
                raise UnsafeEntry(f"tar entry {entry_label(seen.header.name)} is a hardlink to itself")
            if linked.header.typeflag == tarstream.TYPE_DIR:
                raise UnsafeEntry(f"tar entry {entry_label(seen.header.name)} is a hardlink to a directory")
            # nydus-image 2.2.0 links only to entries that are no hardlinks themselves ("unknown target"),
            # and gives the shared inode the link header's mode, owner and mtime, which extraction ignores:
            # such a link goes to the chain's first entry (the same inode), with that entry's attributes.
            first = chain_first.get(linked.index, linked)
            chain_first[seen.index] = first
            if first is not linked or _attributes(first.header) != _attributes(seen.header):
                normal.link_targets[seen.index] = first.index
                if entry_label(seen.header.name) not in normal.rewritten:
                    normal.rewritten.append(entry_label(seen.header.name))

    # Directories go before their first child.
    placed: set[bytes] = set()
    directories: dict[str, DirectoryAttributes] = {}
    implied: set[str] = set()
    whiteouts: list[str] = []
    opaque: list[str] = []
    replaced: list[str] = []
    for seen in kept:
        moved: list[int] = []
        for ancestor in _ancestors(seen.path):
            if ancestor in placed:
                continue
            placed.add(ancestor)
            carrier = kept_by_path.get(ancestor)
            if carrier is None:
                implied.add(_text(ancestor))
            elif carrier.index > seen.index:
                moved.append(carrier.index)
        if moved:
            normal.moved_before[seen.index] = moved
            normal.skip.update(moved)
        base = seen.path.rpartition(b"/")[2]
        if seen.header.typeflag == tarstream.TYPE_DIR:
            placed.add(seen.path)
            directories[_text(seen.path)] = DirectoryAttributes.of(seen.header)
        elif base == OPAQUE_MARKER:
            opaque.append(_text(_parent(seen.path)))
        elif base.startswith(_AUFS_META_PREFIX):
            pass
        elif base.startswith(WHITEOUT_PREFIX):
            hidden = base.removeprefix(WHITEOUT_PREFIX)
            parent = _parent(seen.path)
            whiteouts.append(_text(parent + b"/" + hidden if parent else hidden))
        else:
            replaced.append(_text(seen.path))
    normal.directory_headers = {
        index: directory_headers[index] for moved in normal.moved_before.values() for index in moved
    }
    normal.table = DirectoryTable(
        directories, *(tuple(sorted(paths)) for paths in (implied, whiteouts, opaque, replaced))
    )
    return normal


# --- pass 2: write ---------------------------------------------------------------------------------


def normalized_tar(stream: BinaryIO, normal: Normalisation, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Pass 2: the normalised tar, in chunks. `stream` is the same layer `scan_layer` read. It ends with the
    end-of-archive blocks: what follows them is no part of the layer."""
    moved_headers = normal.directory_headers
    linked = set(normal.link_targets.values())
    linked_headers: dict[int, TarHeader] = {}  # the chains' first entries, as the stream passes them
    scanner = TarScanner(stream)
    for index, member in enumerate(scanner):
        for moved in normal.moved_before.get(index, ()):
            yield moved_headers[moved]
        if index in linked:
            linked_headers[index] = member.header
        if index in normal.skip:
            member.finish()
            continue
        if index in normal.link_targets:
            yield _link_header(member.header, linked_headers[normal.link_targets[index]])
            member.finish()
            continue
        yield from _entry_bytes(member, chunk_size, index in normal.carried)
    yield scanner.end_bytes or tarstream.ZERO_BLOCK * 2


def _attributes(header: TarHeader) -> tuple[int, int, int, int]:
    """What nydus-image 2.2.0 gives an inode from a header: mode bits, owner, mtime (seconds)."""
    return header.mode & 0o7777, header.uid, header.gid, header.mtime.seconds


def _link_header(link: TarHeader, first: TarHeader) -> bytes:
    """A hardlink named as `link` to `first` (the chain's first entry), with `first`'s attributes."""
    header = dataclasses.replace(
        first,
        name=link.name,
        typeflag=tarstream.TYPE_LINK,
        linkname=first.name,
        sparse=False,
        gnu_sparse_map=(),
    )
    return carried_numbers(rewritten_header(header, 0), header)


def _entry_bytes(member: TarMember, chunk_size: int, carry: bool) -> Iterator[bytes]:
    header = member.header
    if header.typeflag not in _ENTRY_TYPES:
        yield member.header_bytes
        yield from member.iter_data(chunk_size)
        yield member.finish()
        return
    name_ok = _name_is_clean(header.name)
    link_ok = header.typeflag != tarstream.TYPE_LINK or _name_is_clean(header.linkname)
    if name_ok and link_ok and not header.sparse:
        yield carried_numbers(member.header_bytes, header) if carry else member.header_bytes
        yield from member.iter_data(chunk_size)
        yield member.finish()
        return
    size = header.size if header.typeflag in _REGULAR_TYPES else 0
    yield carried_numbers(rewritten_header(header, size), header)
    written = 0
    if header.typeflag in _REGULAR_TYPES:
        for data in tarstream.iter_expanded(member, chunk_size):
            written += len(data)
            yield data
    member.finish()
    if written != size:
        raise tarstream.TarError(
            f"{entry_label(header.name)}: {written} bytes of content, header says {size}"
        )
    yield bytes(-written % tarstream.BLOCK_SIZE)


def _name_is_clean(name: bytes) -> bool:
    """Relative, without `..`: nydus-image takes it as it is (`./` prefixes and `//` are fine)."""
    return not name.startswith(b"/") and b".." not in name.split(b"/")


def _needs_carrying(member: TarMember) -> bool:
    """Whether the member's PAX records set an owner or mtime its header block does not hold (nydus-image
    2.2.0 reads those from the header block alone)."""
    header = member.header
    if not _NUMBER_KEYS.intersection(header.pax_records) or header.sparse:
        return False  # a sparse entry's header is rewritten, its numbers carried then
    block, _ = tarstream.parse_header_block(member.header_bytes[-tarstream.BLOCK_SIZE :])
    return (block.uid, block.gid, block.mtime.seconds) != (header.uid, header.gid, header.mtime.seconds)


def carried_numbers(header_bytes: bytes, header: TarHeader) -> bytes:
    """`header_bytes` with the header block (the last one) holding `header`'s uid, gid and mtime seconds:
    octal where they fit, GNU base-256 where not, the form nydus-image 2.2.0 reads (its reader ignores those
    PAX records). The PAX records stay as they are."""
    block = bytearray(header_bytes[-tarstream.BLOCK_SIZE :])
    values = {"uid": header.uid, "gid": header.gid, "mtime": header.mtime.seconds}
    for name, start, length in _NUMBER_FIELDS:
        value = values[name]
        if 0 <= value < 8 ** (length - 1):
            field = b"%0*o\0" % (length - 1, value)
        else:
            field = bytearray(value.to_bytes(length, "big", signed=True))
            field[0] |= 0x80
        block[start : start + length] = field
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return header_bytes[: -tarstream.BLOCK_SIZE] + bytes(block)


def rewritten_header(header: TarHeader, size: int) -> bytes:
    """A PAX header with `header`'s metadata, the name relative to the root, sparse records dropped."""
    info = tarfile.TarInfo(_text(clean_path(header.name) or b"."))
    if header.typeflag in _REGULAR_TYPES:
        info.type = tarfile.REGTYPE
    else:
        info.type = header.typeflag
    info.size = size
    info.mode = header.mode & 0o7777
    info.uid, info.gid = header.uid, header.gid
    info.uname, info.gname = _text(header.uname), _text(header.gname)
    info.mtime = header.mtime.seconds
    info.devmajor, info.devminor = header.devmajor, header.devminor
    if header.typeflag == tarstream.TYPE_LINK:
        info.linkname = _text(clean_path(header.linkname))
    else:
        info.linkname = _text(header.linkname)
    info.pax_headers = {
        _text(key): _text(value)
        for key, value in header.pax_records.items()
        if not key.startswith(b"GNU.sparse.") and _text(key) not in _DROPPED_PAX_KEYS
    }
    if header.mtime.nanoseconds and "mtime" not in info.pax_headers:
        info.pax_headers["mtime"] = f"{header.mtime.seconds}.{header.mtime.nanoseconds:09d}"
    if info.type == tarfile.DIRTYPE and not info.name.endswith("/"):
        info.name += "/"
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class _ChunkReader(io.RawIOBase):
    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def as_stream(chunks: Iterable[bytes]) -> BinaryIO:
    """A readable binary file over `chunks` (e.g. `normalized_tar`), for consumers that want `read()`."""
    return io.BufferedReader(_ChunkReader(chunks), buffer_size=1 << 20)  # type: ignore[return-value]
