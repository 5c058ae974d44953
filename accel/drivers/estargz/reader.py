"""Reading an eStargz blob back: footer → TOC (its digest against the layer's annotation) → every chunk
and every file digest; then the layer's file entries from the whole decompressed stream, without the TOC
and landmark files the format adds, owner names filled back in."""

from __future__ import annotations

import calendar
import dataclasses
import hashlib
import io
import json
import tarfile
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from accel import constants as mt
from accel import digest as dg
from accel import trees
from accel.drivers.estargz.entries import RESERVED_NAMES
from accel.drivers.estargz.footer import FOOTER_SIZE, toc_offset
from accel.drivers.estargz.toc import modtime, toc_text
from accel.drivers.reader import DECODE_ERRORS, LayerReader, LayerReadError, decode_problem
from accel.drivers.toctypes import (
    TOC_TYPE_CHUNK,
    TOC_TYPE_REG,
    missing_hardlink_targets,
    toc_difference,
    toc_tree,
)
from accel.model import SourceLayer
from accel.oci import Descriptor


def _read_at(f: BinaryIO, offset: int, length: int) -> bytes:
    f.seek(offset)
    return f.read(length)


def _gunzip_prefix(f: BinaryIO, offset: int, length: int, what: str) -> bytes:
    """The first `length` bytes of the gzip member starting at `offset`."""
    f.seek(offset)
    inflater = zlib.decompressobj(31)
    out = bytearray()
    try:
        while len(out) < length:
            piece = f.read(1 << 16)
            if not piece:
                break
            out += inflater.decompress(piece, length - len(out))
            while inflater.unconsumed_tail and len(out) < length:
                out += inflater.decompress(inflater.unconsumed_tail, length - len(out))
            if inflater.eof:
                break
    except zlib.error as exc:
        raise LayerReadError(f"{what}: no gzip member at offset {offset}: {exc}") from exc
    if len(out) < length:
        raise LayerReadError(
            f"{what}: the gzip member at offset {offset} holds {len(out)} bytes, not {length}"
        )
    return bytes(out)


def _toc_bytes(f: BinaryIO, size: int, desc: Descriptor) -> bytes:
    """The TOC JSON the footer points at, its digest checked against the layer's annotation."""
    if size < FOOTER_SIZE:
        raise LayerReadError(f"eStargz footer: a blob of {size} bytes holds no {FOOTER_SIZE}-byte footer")
    try:
        offset = toc_offset(_read_at(f, size - FOOTER_SIZE, FOOTER_SIZE))
    except ValueError as exc:
        raise LayerReadError(f"eStargz footer: {exc}") from exc
    if not 0 <= offset < size - FOOTER_SIZE:
        raise LayerReadError(f"eStargz footer: TOC offset {offset} outside the blob")
    f.seek(offset)
    try:
        toc_tar = zlib.decompressobj(31).decompress(f.read(size - FOOTER_SIZE - offset))
        with tarfile.open(fileobj=io.BytesIO(toc_tar)) as tar:
            member = tar.extractfile(mt.ESTARGZ_TOC_TAR_NAME)
            toc_raw = member.read() if member else b""
    except (zlib.error, tarfile.TarError, KeyError) as exc:
        raise LayerReadError(f"eStargz TOC at offset {offset}: unreadable: {exc}") from exc
    toc_digest = dg.of_bytes(toc_raw)
    annotated = desc.annotation(mt.ESTARGZ_TOC_DIGEST)
    if toc_digest != annotated:
        raise LayerReadError(f"eStargz TOC digest {toc_digest} differs from the annotation {annotated}")
    return toc_raw


def toc_entries(path: Path, desc: Descriptor) -> list[dict[str, Any]]:
    """The TOC's entries (its digest checked against the annotation)."""
    with path.open("rb") as f:
        return json.loads(_toc_bytes(f, path.stat().st_size, desc)).get("entries") or []


def check_blob(path: Path, desc: Descriptor) -> list[str]:
    """Footer, TOC digest, every chunk digest and every file digest of an eStargz blob."""
    size = path.stat().st_size
    with path.open("rb") as f:
        toc_raw = _toc_bytes(f, size, desc)
        entries: list[dict[str, Any]] = json.loads(toc_raw).get("entries") or []
        files: dict[str, tuple[Any, str, int]] = {}  # name → (hasher, expected digest, next chunk offset)
        sizes: dict[str, int] = {}
        for entry in entries:
            kind = entry.get("type")
            if kind not in (TOC_TYPE_REG, TOC_TYPE_CHUNK) or (kind == TOC_TYPE_REG and not entry.get("size")):
                continue
            name = entry["name"]
            if kind == TOC_TYPE_REG:
                files[name] = (hashlib.sha256(), entry.get("digest", ""), 0)
                sizes[name] = entry["size"]
            hasher, expected, next_offset = files[name]
            chunk_offset = entry.get("chunkOffset", 0)
            if chunk_offset != next_offset:
                raise LayerReadError(
                    f"{name}: eStargz chunk at file offset {chunk_offset}, expected {next_offset}"
                )
            length = entry.get("chunkSize") or sizes[name] - chunk_offset
            data = _gunzip_prefix(f, entry.get("offset", 0), length, f"{name} chunk at {chunk_offset}")
            if dg.of_bytes(data) != entry.get("chunkDigest"):
                raise LayerReadError(
                    f"{name}: eStargz chunk at file offset {chunk_offset} does not match its chunkDigest"
                )
            hasher.update(data)
            files[name] = (hasher, expected, chunk_offset + length)
        for name, (hasher, expected, end) in files.items():
            if end != sizes[name] or "sha256:" + hasher.hexdigest() != expected:
                raise LayerReadError(f"{name}: eStargz chunks do not add up to the file's digest")
    return ["footer", "toc digest", f"{sum(1 for e in entries if e.get('chunkDigest'))} chunks"]


def is_estargz_layer(desc: Descriptor) -> bool:
    """The stargz TOC digest on a gzip layer: stargz-snapshotter also puts it on the zstd layers of its
    other format, which are not eStargz."""
    return bool(desc.annotation(mt.ESTARGZ_TOC_DIGEST)) and desc.media_type != mt.OCI_LAYER_ZSTD


def as_toc_holds(entries: Sequence[trees.Entry]) -> dict[str, trees.Entry]:
    """Tar entries as an eStargz TOC holds them: names (and xattr names, link targets) as UTF-8 with U+FFFD,
    mtimes rounded to the second (none for the zero time), as the reference writer writes them."""
    held: dict[str, trees.Entry] = {}
    for entry in entries:
        stamp = modtime(entry.mtime + entry.mtime_ns / 1_000_000_000)
        seconds = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")) if stamp else 0
        path = toc_text(entry.path)
        held[path] = dataclasses.replace(
            entry,
            path=path,
            linkname=toc_text(entry.linkname),
            xattrs={toc_text(name): value for name, value in sorted(entry.xattrs.items())},
            mtime=seconds,
            mtime_ns=0,
        )
    return held


def refill_owner_names(entries: Sequence[trees.Entry]) -> list[trees.Entry]:
    """eStargz writers drop a user/group name unchanged since the previous entry; readers fill it back."""
    users: dict[int, str] = {}
    groups: dict[int, str] = {}
    out = []
    for e in entries:
        uname = e.uname or users.get(e.uid) or e.uname
        gname = e.gname or groups.get(e.gid) or e.gname
        if uname:
            users[e.uid] = uname
        if gname:
            groups[e.gid] = gname
        out.append(dataclasses.replace(e, uname=uname, gname=gname))
    return out


class EStargzReader(LayerReader):
    def claims(self, desc: Descriptor) -> bool:
        return is_estargz_layer(desc)

    def label(self, desc: Descriptor) -> str:
        return "estargz"

    def check(self, blob: Path, desc: Descriptor) -> list[str]:
        return check_blob(blob, desc)

    def read(self, blob: Path, layer: SourceLayer, checks: list[str]) -> list[trees.Entry]:
        """The blob's structure, its tar stream, then its TOC against that stream: a lazy-pulling runtime
        shows the TOC's metadata and reads file data where the TOC points, so a TOC that says something
        else than the tar is as wrong as a damaged chunk."""
        try:
            checks.extend(self.check(blob, layer.descriptor))
            raw_toc = toc_entries(blob, layer.descriptor)
            unresolved = missing_hardlink_targets(raw_toc)
            if unresolved:
                raise LayerReadError(f"eStargz TOC: {unresolved} (the reference reader cannot open it)")
            toc = {p: e for p, e in toc_tree(raw_toc).items() if p not in RESERVED_NAMES}
            entries = self.entries(blob, layer)
        except DECODE_ERRORS as exc:
            raise LayerReadError(decode_problem(exc)) from exc
        checks.append("diff_id")
        problem = toc_difference(toc, as_toc_holds(entries))
        if problem:
            raise LayerReadError(f"eStargz TOC: {problem}")
        checks.append("toc == tar")
        return entries

    def entries(self, blob: Path, layer: SourceLayer) -> list[trees.Entry]:
        in_layer = [e for e in super().entries(blob, layer) if e.path not in RESERVED_NAMES]
        return refill_owner_names(in_layer)

    def comparable_source(self, entries: Sequence[trees.Entry]) -> list[trees.Entry]:
        # `entries` fills names back from earlier entries; a source entry left unnamed gets the same.
        return refill_owner_names(entries)
