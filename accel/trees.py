"""File trees as comparable dicts: from a tar, from a stack of layers, from a directory on disk (used by
`accel.verify` and by the tests).

All three produce `dict[path, Entry]` with the same normalisation so `compare` can diff them:

- paths are relative, without a leading "/" or "./" and without a trailing "/"; the root itself is
  never reported;
- `mode` is the permission bits including setuid/setgid/sticky (`st_mode & 0o7777`);
- regular files carry `size` and `sha256` ("sha256:<hex>"); every other type has size 0 and no hash;
- xattrs are bytes (PAX `SCHILY.xattr.*` or `LIBARCHIVE.xattr.*`; `os.getxattr` on disk);
- hardlinks: in `apply_layers` and `dir_entries` output, each group of paths sharing one inode is
  reported as the sorted-first path with its real type, and every other path as type "hardlink" with
  `linkname` = that first path. Hardlink entries carry the inode's metadata (mode, owner, size, sha256,
  xattrs, mtime) so a broken link shows up as a difference. A link header's own metadata is not
  applied (writers repeat the target's; `TarBuilder.hardlink` does). `tar_entries` reports an archive raw:
  hardlinks as written, whiteout markers as the empty files they are; run a single archive through
  `apply_layers([archive])` to get the normalised view;
- `dir_entries` cannot know user/group names: `uname`/`gname` are None there. Compare with
  `ignore=DISK_IGNORE` (names, plus mtime because extraction cannot set a symlink's mtime).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import os
import stat
import tarfile
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_AUFS_META_PREFIX = ".wh..wh."  # aufs bookkeeping (.wh..wh.plnk etc.), not a whiteout

COMPARED_FIELDS = (
    "type",
    "mode",
    "uid",
    "gid",
    "uname",
    "gname",
    "size",
    "sha256",
    "linkname",
    "devmajor",
    "devminor",
    "xattrs",
    "mtime",
    "mtime_ns",
)
DISK_IGNORE = frozenset({"uname", "gname", "mtime", "mtime_ns"})
# Attributes the host adds on its own (ACL mirrors, overlay bookkeeping, SELinux labels).
HOST_XATTR_PREFIXES = ("system.", "trusted.overlay.", "security.selinux")

_READ_SIZE = 1 << 20


@dataclass(frozen=True)
class Entry:
    path: str
    type: str  # reg | dir | symlink | hardlink | char | block | fifo
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    uname: str | None = None
    gname: str | None = None
    size: int = 0
    sha256: str | None = None
    linkname: str = ""  # symlink target as written; hardlink target as a normalised path
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    mtime: int = 0  # whole seconds (floor: -1.5 s is -2 s + 500000000 ns)
    mtime_ns: int = 0  # the sub-second part, 0 <= mtime_ns < 1e9 (a PAX `mtime` with a fraction)
    implicit: bool = False  # a parent dir `apply_layers` had to invent: only its type is compared


def normalize_path(name: str) -> str:
    while name.startswith(("/", "./")):
        name = name[1:] if name.startswith("/") else name[2:]
    name = name.rstrip("/")
    return "" if name == "." else name


# --- tar side --------------------------------------------------------------------------------------


def _tar_type(info: tarfile.TarInfo) -> str:
    if info.islnk():
        return "hardlink"
    if info.isreg():
        return "reg"
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.ischr():
        return "char"
    if info.isblk():
        return "block"
    if info.isfifo():
        return "fifo"
    raise ValueError(f"unsupported tar member type {info.type!r} for {info.name!r}")


def _pax_xattrs(headers: Mapping[str, str]) -> dict[str, bytes]:
    xattrs: dict[str, bytes] = {}
    for key, value in headers.items():
        if key.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote(key.removeprefix("LIBARCHIVE.xattr."))
            xattrs.setdefault(name, base64.b64decode(value + "=" * (-len(value) % 4)))
    for key, value in headers.items():
        if key.startswith("SCHILY.xattr."):
            # tarfile decodes PAX values to str with surrogateescape; this restores the exact bytes.
            xattrs[key.removeprefix("SCHILY.xattr.")] = value.encode("utf-8", "surrogateescape")
    return dict(sorted(xattrs.items()))


def _hash_stream(stream: BinaryIO) -> str:
    h = hashlib.sha256()
    while chunk := stream.read(_READ_SIZE):
        h.update(chunk)
    return "sha256:" + h.hexdigest()


def _mtime(info: tarfile.TarInfo) -> tuple[int, int]:
    """(seconds, nanoseconds) exactly: tarfile's float cannot hold a PAX `mtime`'s nanoseconds."""
    text = info.pax_headers.get("mtime")
    if text is None:
        return int(info.mtime), 0
    whole, _, fraction = text.strip().partition(".")
    try:
        seconds = int(whole or "0")
        nanoseconds = int((fraction[:9] or "0").ljust(9, "0")) if fraction.isdigit() or not fraction else 0
    except ValueError:
        return int(info.mtime), 0
    if whole.startswith("-"):
        nanoseconds = -nanoseconds
    return divmod(seconds * 1_000_000_000 + nanoseconds, 1_000_000_000)


def iter_tar(source: bytes | BinaryIO | Path | str) -> Iterator[Entry]:
    """Every member of an archive in order, content hashed while streaming (root skipped)."""
    if isinstance(source, bytes | bytearray | memoryview):
        yield from iter_tar(io.BytesIO(source))
        return
    if isinstance(source, Path | str):
        with open(source, "rb") as f:
            yield from iter_tar(f)
        return
    # tarfile stops at the end-of-archive zero blocks (as Go's archive/tar and GNU tar do) and reads
    # nothing after them: an archive appended after the end blocks, or trailing bytes, are not entries.
    with tarfile.open(fileobj=source, mode="r|", encoding="utf-8", errors="surrogateescape") as tar:
        for info in tar:
            path = normalize_path(info.name)
            if not path:
                continue
            kind = _tar_type(info)
            sha256 = None
            size = 0
            if kind == "reg":
                content = tar.extractfile(info)
                assert content is not None
                sha256 = _hash_stream(content)
                size = info.size
            linkname = normalize_path(info.linkname) if kind == "hardlink" else info.linkname
            seconds, nanoseconds = _mtime(info)
            yield Entry(
                path=path,
                type=kind,
                mode=info.mode & 0o7777,
                uid=info.uid,
                gid=info.gid,
                uname=info.uname,
                gname=info.gname,
                size=size,
                sha256=sha256,
                linkname=linkname if kind in ("symlink", "hardlink") else "",
                devmajor=info.devmajor if kind in ("char", "block") else 0,
                devminor=info.devminor if kind in ("char", "block") else 0,
                xattrs=_pax_xattrs(info.pax_headers),
                mtime=seconds,
                mtime_ns=nanoseconds,
            )


def tar_entries(source: bytes | BinaryIO | Path | str) -> dict[str, Entry]:
    """One archive as written (a later member with the same path wins), keyed by normalised path."""
    return {entry.path: entry for entry in iter_tar(source)}


# --- layer stack -----------------------------------------------------------------------------------


class _Filesystem:
    """Paths mapped to (entry, inode id); hardlinks share the inode id of their target."""

    def __init__(self) -> None:
        self.nodes: dict[str, tuple[Entry, int]] = {}
        self._next_inode = 0

    def _new_inode(self) -> int:
        self._next_inode += 1
        return self._next_inode

    def remove_subtree(self, path: str, *, keep_root: bool) -> None:
        prefix = f"{path}/" if path else ""
        doomed = [p for p in self.nodes if p.startswith(prefix)]
        if not keep_root:
            doomed.append(path)
        for p in doomed:
            self.nodes.pop(p, None)

    def _ensure_parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            parent = "/".join(parts[:depth])
            existing = self.nodes.get(parent)
            if existing is not None and existing[0].type == "dir":
                continue
            self.nodes.pop(parent, None)
            self.nodes[parent] = (
                Entry(path=parent, type="dir", mode=0o755, implicit=True),
                self._new_inode(),
            )

    def put(self, entry: Entry) -> None:
        self._ensure_parents(entry.path)
        existing = self.nodes.get(entry.path)
        if existing is not None and existing[0].type == "dir" and entry.type != "dir":
            self.remove_subtree(entry.path, keep_root=False)
        if entry.type == "hardlink":
            target = self.nodes.get(entry.linkname)
            if target is None or target[0].type == "dir":
                raise ValueError(f"hardlink {entry.path!r} -> {entry.linkname!r}: no such non-directory")
            self.nodes[entry.path] = (dataclasses.replace(target[0], path=entry.path), target[1])
        elif existing is not None and existing[0].type == "dir" and entry.type == "dir":
            # A dir over a dir changes its metadata; its lower children stay.
            self.nodes[entry.path] = (entry, existing[1])
        else:
            self.nodes[entry.path] = (entry, self._new_inode())

    def apply_layer(self, members: Iterable[Entry]) -> None:
        # Whiteouts and opaque markers act on the lower layers only, whatever their position in the
        # archive, so they are applied before any of this layer's own entries.
        opaque_dirs: list[str] = []
        whiteouts: list[str] = []
        own: list[Entry] = []
        for entry in members:
            parent, _, base = entry.path.rpartition("/")
            if base == OPAQUE_MARKER:
                opaque_dirs.append(parent)
            elif base.startswith(_AUFS_META_PREFIX):
                continue
            elif base.startswith(WHITEOUT_PREFIX):
                hidden = base.removeprefix(WHITEOUT_PREFIX)
                whiteouts.append(f"{parent}/{hidden}" if parent else hidden)
            else:
                own.append(entry)
        for directory in opaque_dirs:
            self.remove_subtree(directory, keep_root=True)
        for path in whiteouts:
            self.remove_subtree(path, keep_root=False)
        # The directory a marker lives in exists after the layer, as containerd creates every entry's
        # parents (an `implicit` dir when no layer lists it).
        for path in [*(f"{d}/{OPAQUE_MARKER}" if d else OPAQUE_MARKER for d in opaque_dirs), *whiteouts]:
            self._ensure_parents(path)
        for entry in own:
            self.put(entry)

    def entries(self) -> dict[str, Entry]:
        return normalise_hardlinks(self.nodes)


def normalise_hardlinks(nodes: Mapping[str, tuple[Entry, Any]]) -> dict[str, Entry]:
    """Express every multi-path inode as its sorted-first path plus 'hardlink' entries pointing at it."""
    groups: dict[Any, list[str]] = {}
    for path, (entry, inode) in nodes.items():
        if entry.type != "dir":
            groups.setdefault(inode, []).append(path)
    result: dict[str, Entry] = {}
    for path in sorted(nodes):
        entry, inode = nodes[path]
        if entry.type == "hardlink":
            raise AssertionError(f"unresolved hardlink {path!r}")
        group = groups.get(inode, [])
        first = min(group) if group else path
        if first != path:
            entry = dataclasses.replace(entry, type="hardlink", linkname=first)
        result[path] = entry
    return result


def apply_layers(layers: Iterable[bytes | BinaryIO | Path | str]) -> dict[str, Entry]:
    """The filesystem after unpacking `layers` in order with OCI whiteout semantics.

    `.wh.x` removes lower `x` and its subtree; `.wh..wh..opq` empties the lower contents of its dir; the
    directory a marker lives in exists afterwards (as containerd creates every entry's parents);
    a later entry replaces an earlier one; a non-dir over a dir removes the dir's subtree; a dir over a
    dir keeps the children. Missing parents are added as `implicit` dirs. Output is sorted by path.
    """
    return apply_entries(list(iter_tar(layer)) for layer in layers)


def apply_entries(layers: Iterable[Iterable[Entry]]) -> dict[str, Entry]:
    """`apply_layers` over layers already read into entries (`iter_tar` order)."""
    fs = _Filesystem()
    for members in layers:
        fs.apply_layer(members)
    return fs.entries()


# --- directory side --------------------------------------------------------------------------------


def _disk_type(mode: int) -> str:
    for check, name in (
        (stat.S_ISREG, "reg"),
        (stat.S_ISDIR, "dir"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISCHR, "char"),
        (stat.S_ISBLK, "block"),
        (stat.S_ISFIFO, "fifo"),
    ):
        if check(mode):
            return name
    raise ValueError(f"unsupported file type {stat.filemode(mode)}")


def _disk_xattrs(path: Path, skip_prefixes: tuple[str, ...]) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {
        name: os.getxattr(path, name, follow_symlinks=False)
        for name in sorted(names)
        if not name.startswith(skip_prefixes)
    }


def dir_entries(
    root: Path | str, *, skip_xattr_prefixes: tuple[str, ...] = HOST_XATTR_PREFIXES
) -> dict[str, Entry]:
    """An unpacked tree on disk, normalised like `apply_layers` (see the module docstring)."""
    root = Path(root)
    nodes: dict[str, tuple[Entry, Any]] = {}
    for current, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [*dirnames, *filenames]:
            full = Path(current) / name
            st = full.lstat()
            kind = _disk_type(st.st_mode)
            sha256 = None
            size = 0
            if kind == "reg":
                with full.open("rb") as f:
                    sha256 = _hash_stream(f)
                size = st.st_size
            device = kind in ("char", "block")
            entry = Entry(
                path=full.relative_to(root).as_posix(),
                type=kind,
                mode=stat.S_IMODE(st.st_mode),
                uid=st.st_uid,
                gid=st.st_gid,
                size=size,
                sha256=sha256,
                linkname=os.readlink(full) if kind == "symlink" else "",
                devmajor=os.major(st.st_rdev) if device else 0,
                devminor=os.minor(st.st_rdev) if device else 0,
                xattrs=_disk_xattrs(full, skip_xattr_prefixes),
                mtime=st.st_mtime_ns // 1_000_000_000,
                mtime_ns=st.st_mtime_ns % 1_000_000_000,
            )
            # Directories never share inodes; give each its own key so only real hardlinks group.
            inode = (st.st_dev, st.st_ino) if kind != "dir" else ("dir", entry.path)
            nodes[entry.path] = (entry, inode)
    return normalise_hardlinks(nodes)


# --- comparison ------------------------------------------------------------------------------------


def _show(field_name: str, value: Any) -> str:
    if field_name == "mode" and isinstance(value, int):
        return oct(value)
    return repr(value)


def compare(
    a: Mapping[str, Entry],
    b: Mapping[str, Entry],
    *,
    ignore: Iterable[str] = (),
    labels: tuple[str, str] = ("a", "b"),
) -> list[str]:
    """Human-readable differences between two trees, sorted by path; empty means equal.

    `ignore` names Entry fields to skip (e.g. {"mtime", "uname", "gname"}). A path whose type differs
    is reported once for its type only. Implicit dirs are compared by type only.
    """
    skipped = set(ignore)
    unknown = skipped - set(COMPARED_FIELDS)
    if unknown:
        raise ValueError(f"unknown fields to ignore: {sorted(unknown)}")
    left, right = labels
    differences: list[str] = []
    for path in sorted(a.keys() | b.keys()):
        ea, eb = a.get(path), b.get(path)
        if eb is None:
            assert ea is not None
            differences.append(f"{path}: only in {left} ({ea.type})")
            continue
        if ea is None:
            differences.append(f"{path}: only in {right} ({eb.type})")
            continue
        if ea.type != eb.type:
            differences.append(f"{path}: type {ea.type} in {left}, {eb.type} in {right}")
            continue
        if ea.implicit or eb.implicit:
            continue
        for name in COMPARED_FIELDS:
            if name in skipped:
                continue
            va, vb = getattr(ea, name), getattr(eb, name)
            if name == "xattrs":
                va, vb = dict(va), dict(vb)
            if va != vb:
                differences.append(
                    f"{path}: {name} {_show(name, va)} in {left}, {_show(name, vb)} in {right}"
                )
    return differences
