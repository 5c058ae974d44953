"""TOC entry types by tar typeflag: one table for eStargz and zstd:chunked, whose TOCs both descend from
CRFS's stargz TOC and name entry types alike. Keys are the raw typeflag bytes, which Python's `tarfile`
(`TarInfo.type`, eStargz) and `accel.tarstream` (zstd:chunked) both use.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from accel import tarstream, trees

TOC_TYPE_REG = "reg"
TOC_TYPE_CHUNK = "chunk"  # a regular file's second and later chunks; no typeflag writes one

TOC_TYPES: dict[bytes, str] = {
    tarstream.TYPE_REG: TOC_TYPE_REG,
    tarstream.TYPE_LINK: "hardlink",
    tarstream.TYPE_SYMLINK: "symlink",
    tarstream.TYPE_CHAR: "char",
    tarstream.TYPE_BLOCK: "block",
    tarstream.TYPE_DIR: "dir",
    tarstream.TYPE_FIFO: "fifo",
}


# --- reading a TOC back: what a runtime that mounts the layer from its TOC shows -----------------------

# What both TOCs hold of an entry but no lazy-pulling runtime shows, so a TOC is not compared on it.
TOC_OMITS = frozenset({"uname", "gname"})
_HASH_OF_NOTHING = "sha256:" + hashlib.sha256(b"").hexdigest()


def _rfc3339(text: str) -> tuple[int, int]:
    """(seconds, nanoseconds) of an RFC 3339 UTC time as Go writes it; (0, 0) for none."""
    if not text:
        return 0, 0
    whole, _, fraction = text.removesuffix("Z").partition(".")
    moment = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.UTC)
    seconds = int((moment - _EPOCH).total_seconds())
    return seconds, int(fraction[:9].ljust(9, "0")) if fraction else 0


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def toc_tree(raw_entries: Sequence[Any]) -> dict[str, trees.Entry]:
    """A TOC's file entries (chunk entries aside) as tree entries by normalised name, the last of a name
    winning. Raises ValueError (or KeyError, TypeError) for a TOC of the wrong shape."""
    tree: dict[str, trees.Entry] = {}
    for raw in raw_entries:
        kind = raw["type"]
        if kind == TOC_TYPE_CHUNK:
            continue
        if kind not in TOC_TYPES.values():
            raise ValueError(f"TOC entry {raw.get('name')!r} has the unknown type {kind!r}")
        name = trees.normalize_path(str(raw["name"]))
        if not name:
            continue
        seconds, nanoseconds = _rfc3339(str(raw.get("modtime") or ""))
        link = str(raw.get("linkName") or "")
        device = kind in ("char", "block")
        size = int(raw.get("size") or 0) if kind == TOC_TYPE_REG else 0
        tree[name] = trees.Entry(
            path=name,
            type=kind,
            mode=int(raw.get("mode") or 0) & 0o7777,
            uid=int(raw.get("uid") or 0),
            gid=int(raw.get("gid") or 0),
            size=size,
            sha256=(str(raw.get("digest") or "") or _HASH_OF_NOTHING) if kind == TOC_TYPE_REG else None,
            linkname=trees.normalize_path(link) if kind == "hardlink" else link if kind == "symlink" else "",
            devmajor=int(raw.get("devMajor") or 0) if device else 0,
            devminor=int(raw.get("devMinor") or 0) if device else 0,
            xattrs={
                k: base64.b64decode(v, validate=True) for k, v in sorted((raw.get("xattrs") or {}).items())
            },
            mtime=seconds,
            mtime_ns=nanoseconds,
        )
    return tree


def toc_difference(
    toc: Mapping[str, trees.Entry], tar: Mapping[str, trees.Entry], *, ignore: frozenset[str] = frozenset()
) -> str | None:
    """The first entry where the TOC says something else than the layer's own tar stream (`tar` already in
    the form the TOC holds it: see each reader), or None."""
    differences = trees.compare(tar, toc, ignore=TOC_OMITS | ignore, labels=("the tar", "the TOC"))
    return differences[0] if differences else None


def missing_hardlink_targets(raw_entries: Sequence[Any]) -> str | None:
    """The first hardlink whose target the TOC does not hold, worded as the reference reader refuses it
    (stargz-snapshotter's estargz reader and containers/storage both resolve hardlinks within the TOC)."""
    names = {
        trees.normalize_path(str(raw.get("name", ""))) for raw in raw_entries if raw.get("type") != "chunk"
    }
    for raw in raw_entries:
        if raw.get("type") == "hardlink" and trees.normalize_path(str(raw.get("linkName", ""))) not in names:
            return f"{raw.get('name')!r} is a hardlink but the linkname {raw.get('linkName')!r} isn't found"
    return None
