"""TOC entry types by tar typeflag: one table for eStargz and zstd:chunked, whose TOCs both descend from
CRFS's stargz TOC and name entry types alike. Keys are the raw typeflag bytes, which Python's `tarfile`
(`TarInfo.type`, eStargz) and `accel.tarstream` (zstd:chunked) both use.
"""

from __future__ import annotations

from accel import tarstream

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
