"""Proving a converted image against its source, trusting nothing about how it was made.

For every platform of the source, the target's manifest for that platform is read and checked:

1. every blob (configs, layers) is fetched into a private content store: digest and size verified;
2. each target layer decodes through its format's own structure — eStargz: footer, TOC digest annotation,
   every chunk digest and every file digest; zstd:chunked: footer and position annotation, manifest
   checksum, every chunk digest and every file digest, and the decompressed stream equals the source
   DiffID (the format promises a byte-exact tar); Nydus: `nydus-image check` of the merged bootstrap,
   each layer unpacked from its own bootstrap; other layers: the decompressed stream equals its DiffID;
3. the file tree of each target layer equals its source layer's (names, types, modes, owners, mtimes,
   sizes, content hashes, link targets, xattrs), and the merged view equals the source's layers applied.

`verify_image` returns a `Verdict`: a row per layer (what was checked, the first problem) and the first
differing entry. It never raises for a difference; only for an image it cannot read at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import struct
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from accel import constants as mt
from accel import digest as dg
from accel import trees
from accel.compression import open_uncompressed
from accel.drivers.nydus import readback
from accel.drivers.zstdchunked.footer import FOOTER_SIZE as ZSTD_FOOTER_SIZE
from accel.drivers.zstdchunked.footer import SKIPPABLE_FRAME_HEADER_SIZE, ZstdChunkedFooter
from accel.errors import AccelError, ConfigError
from accel.image import resolve_source
from accel.model import SourceImage, SourceLayer, SourceManifest
from accel.oci import Descriptor, Platform, detect_media_type
from accel.reference import Reference
from accel.registry.interfaces import ManifestSource
from accel.store import ContentStore

ESTARGZ_FOOTER_SIZE = 51
_ESTARGZ_IN_BLOB = frozenset(
    {mt.ESTARGZ_TOC_TAR_NAME, mt.ESTARGZ_PREFETCH_LANDMARK, mt.ESTARGZ_NO_PREFETCH_LANDMARK}
)
_READ_SIZE = 1 << 20


class VerifyError(AccelError):
    """One check failed; the message names the layer part or entry."""


@dataclass
class LayerVerdict:
    platform: str
    position: int
    target: str  # digest
    format: str
    source: str | None = None  # digest of the source layer it stands for, when paired one to one
    checks: list[str] = field(default_factory=list)
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass
class Verdict:
    source: str
    target: str
    layers: list[LayerVerdict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # every difference, in the order found

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_difference(self) -> str | None:
        return self.problems[0] if self.problems else None

    def fail(self, problem: str, layer: LayerVerdict | None = None) -> None:
        self.problems.append(problem)
        if layer is not None and layer.problem is None:
            layer.problem = problem

    def table(self) -> str:
        """The per-layer verdict table, then the first difference (or "ok")."""
        rows = [("platform", "#", "format", "source", "target", "verdict", "checked")]
        for v in self.layers:
            rows.append(
                (
                    v.platform,
                    str(v.position),
                    v.format,
                    dg.short(v.source)[7:] if v.source else "-",
                    dg.short(v.target)[7:],
                    "ok" if v.ok else "FAIL",
                    ", ".join(v.checks) or "-",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows]
        lines.append(f"first difference: {self.first_difference}" if self.problems else "ok: target proven")
        return "\n".join(line.rstrip() for line in lines)


# --- formats ---------------------------------------------------------------------------------------


def layer_format(desc: Descriptor) -> str:
    if desc.annotation(mt.ESTARGZ_TOC_DIGEST):
        return "estargz"
    if desc.annotation(mt.ZSTD_CHUNKED_MANIFEST_CHECKSUM):
        return "zstd:chunked"
    if desc.annotation(mt.NYDUS_BOOTSTRAP_ANNOTATION):
        return "nydus-bootstrap"
    if desc.annotation(mt.NYDUS_BLOB_ANNOTATION) or desc.media_type == mt.NYDUS_BLOB:
        return "nydus"
    return desc.media_type.rsplit(".", 1)[-1]


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
        raise VerifyError(f"{what}: no gzip member at offset {offset}: {exc}") from exc
    if len(out) < length:
        raise VerifyError(f"{what}: the gzip member at offset {offset} holds {len(out)} bytes, not {length}")
    return bytes(out)


def check_estargz(path: Path, desc: Descriptor) -> list[str]:
    """Footer, TOC digest, every chunk digest and every file digest of an eStargz blob."""
    size = path.stat().st_size
    with path.open("rb") as f:
        footer = _read_at(f, size - ESTARGZ_FOOTER_SIZE, ESTARGZ_FOOTER_SIZE)
        if size < ESTARGZ_FOOTER_SIZE or footer[:4] != b"\x1f\x8b\x08\x04":
            raise VerifyError("eStargz footer: not a gzip header with an extra field")
        xlen = struct.unpack_from("<H", footer, 10)[0]
        extra = footer[12 : 12 + xlen]
        if extra[:2] != b"SG" or extra[-6:] != b"STARGZ":
            raise VerifyError("eStargz footer: no SG subfield ending in STARGZ")
        toc_offset = int(extra[4:20], 16)
        if not 0 <= toc_offset < size - ESTARGZ_FOOTER_SIZE:
            raise VerifyError(f"eStargz footer: TOC offset {toc_offset} outside the blob")
        f.seek(toc_offset)
        try:
            toc_tar = zlib.decompressobj(31).decompress(f.read(size - ESTARGZ_FOOTER_SIZE - toc_offset))
            with tarfile.open(fileobj=io.BytesIO(toc_tar)) as tar:
                member = tar.extractfile(mt.ESTARGZ_TOC_TAR_NAME)
                toc_raw = member.read() if member else b""
        except (zlib.error, tarfile.TarError, KeyError) as exc:
            raise VerifyError(f"eStargz TOC at offset {toc_offset}: unreadable: {exc}") from exc
        toc_digest = dg.of_bytes(toc_raw)
        annotated = desc.annotation(mt.ESTARGZ_TOC_DIGEST)
        if toc_digest != annotated:
            raise VerifyError(f"eStargz TOC digest {toc_digest} differs from the annotation {annotated}")
        entries: list[dict[str, Any]] = json.loads(toc_raw).get("entries") or []
        files: dict[str, tuple[Any, str, int]] = {}  # name → (hasher, expected digest, next chunk offset)
        sizes: dict[str, int] = {}
        for entry in entries:
            if entry.get("type") not in ("reg", "chunk") or (
                entry.get("type") == "reg" and not entry.get("size")
            ):
                continue
            name = entry["name"]
            if entry["type"] == "reg":
                files[name] = (hashlib.sha256(), entry.get("digest", ""), 0)
                sizes[name] = entry["size"]
            hasher, expected, next_offset = files[name]
            chunk_offset = entry.get("chunkOffset", 0)
            if chunk_offset != next_offset:
                raise VerifyError(
                    f"{name}: eStargz chunk at file offset {chunk_offset}, expected {next_offset}"
                )
            length = entry.get("chunkSize") or sizes[name] - chunk_offset
            data = _gunzip_prefix(f, entry.get("offset", 0), length, f"{name} chunk at {chunk_offset}")
            if dg.of_bytes(data) != entry.get("chunkDigest"):
                raise VerifyError(
                    f"{name}: eStargz chunk at file offset {chunk_offset} does not match its chunkDigest"
                )
            hasher.update(data)
            files[name] = (hasher, expected, chunk_offset + length)
        for name, (hasher, expected, end) in files.items():
            if end != sizes[name] or "sha256:" + hasher.hexdigest() != expected:
                raise VerifyError(f"{name}: eStargz chunks do not add up to the file's digest")
    return ["footer", "toc digest", f"{sum(1 for e in entries if e.get('chunkDigest'))} chunks"]


def check_zstd_chunked(path: Path, desc: Descriptor) -> list[str]:
    """Footer, manifest position and checksum, every chunk digest and every file digest."""
    size = path.stat().st_size
    with path.open("rb") as f:
        try:
            footer = ZstdChunkedFooter.parse(
                _read_at(f, size - SKIPPABLE_FRAME_HEADER_SIZE - ZSTD_FOOTER_SIZE, size)
            )
        except ValueError as exc:
            raise VerifyError(f"zstd:chunked footer: {exc}") from exc
        position = (
            f"{footer.manifest_offset}:{footer.manifest_length}:"
            f"{footer.manifest_uncompressed_length}:{footer.manifest_type}"
        )
        annotated = desc.annotation(mt.ZSTD_CHUNKED_MANIFEST_POSITION)
        if annotated is not None and annotated != position:
            raise VerifyError(
                f"zstd:chunked manifest position {annotated} differs from the footer's {position}"
            )
        compressed = _read_at(f, footer.manifest_offset, footer.manifest_length)
        checksum = dg.of_bytes(compressed)
        if checksum != desc.annotation(mt.ZSTD_CHUNKED_MANIFEST_CHECKSUM):
            raise VerifyError(
                f"zstd:chunked manifest checksum {checksum} differs from the annotation "
                f"{desc.annotation(mt.ZSTD_CHUNKED_MANIFEST_CHECKSUM)}"
            )
        try:
            manifest = zstandard.ZstdDecompressor().decompress(
                compressed, max_output_size=footer.manifest_uncompressed_length
            )
        except zstandard.ZstdError as exc:
            raise VerifyError(f"zstd:chunked manifest: {exc}") from exc
        entries: list[dict[str, Any]] = json.loads(manifest).get("entries") or []
        chunks = 0
        for i, entry in enumerate(entries):
            if entry.get("type") != "reg" or not entry.get("size"):
                continue
            name = entry["name"]
            pieces = [entry]
            for following in entries[i + 1 :]:
                if following.get("type") != "chunk" or following.get("name") != name:
                    break
                pieces.append(following)
            hasher = hashlib.sha256()
            position_in_file = 0
            for n, piece in enumerate(pieces):
                start = piece.get("offset", 0)
                end = pieces[n + 1].get("offset", 0) if n + 1 < len(pieces) else entry.get("endOffset", 0)
                expected_size = piece.get("chunkSize") or entry["size"]
                if piece.get("chunkOffset", 0) != position_in_file or not 0 < start < end <= size:
                    raise VerifyError(f"{name}: zstd:chunked chunk {n} is at a wrong place ({start}..{end})")
                try:
                    reader = zstandard.ZstdDecompressor().stream_reader(
                        io.BytesIO(_read_at(f, start, end - start)), read_across_frames=True
                    )
                    data = reader.read(expected_size + 1)
                except zstandard.ZstdError as exc:
                    raise VerifyError(f"{name}: zstd:chunked chunk {n} does not decompress: {exc}") from exc
                digest = piece.get("chunkDigest") or entry.get("digest")
                if len(data) != expected_size or dg.of_bytes(data) != digest:
                    raise VerifyError(f"{name}: zstd:chunked chunk {n} does not match its chunkDigest")
                hasher.update(data)
                position_in_file += len(data)
                chunks += 1
            if position_in_file != entry["size"] or "sha256:" + hasher.hexdigest() != entry.get("digest"):
                raise VerifyError(f"{name}: zstd:chunked chunks do not add up to the file's digest")
    return ["footer", "manifest checksum", f"{chunks} chunks"]


def _strip_estargz(entries: Mapping[str, trees.Entry]) -> dict[str, trees.Entry]:
    """The TOC and landmark files an eStargz blob carries at its root are not part of the layer."""
    return {path: e for path, e in entries.items() if path not in _ESTARGZ_IN_BLOB}


def _refill_owner_names(entries: Sequence[trees.Entry]) -> list[trees.Entry]:
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
        out.append(replace(e, uname=uname, gname=gname))
    return out


def _source_layer_entries(store: ContentStore, layer: SourceLayer) -> list[trees.Entry]:
    desc = layer.descriptor
    with open_uncompressed(store.path(desc.digest), desc.media_type, layer.diff_id) as stream:
        return list(trees.iter_tar(stream))


def _target_layer_entries(store: ContentStore, layer: SourceLayer, fmt: str) -> list[trees.Entry]:
    desc = layer.descriptor
    media_type = mt.OCI_LAYER_ZSTD if fmt == "zstd:chunked" else desc.media_type
    with open_uncompressed(store.path(desc.digest), media_type, layer.diff_id) as stream:
        entries = list(trees.iter_tar(stream))
    if fmt == "estargz":
        entries = _refill_owner_names([e for e in entries if e.path not in _ESTARGZ_IN_BLOB])
    return entries


# --- images ----------------------------------------------------------------------------------------


def _platform_key(manifest: SourceManifest) -> str:
    return str(manifest.platform) if manifest.platform else "-"


def _pick_target(candidates: list[SourceManifest], store: ContentStore) -> SourceManifest:
    """With Nydus `merge_manifest` an index holds the source image and the Nydus image per platform."""
    for candidate in candidates:
        doc = json.loads(store.read_bytes(candidate.descriptor.digest))
        if doc.get("artifactType") == mt.NYDUS_ARTIFACT_TYPE:
            return candidate
    return candidates[-1]


def _fetch_all(
    registry: ManifestSource,
    ref: Reference,
    image: SourceImage,
    store: ContentStore,
    verdict: Verdict,
    side: str,
) -> set[str]:
    """Every layer into the store; returns the digests that could not be fetched intact."""
    broken: set[str] = set()
    for manifest in image.manifests:
        for layer in manifest.layers:
            desc = layer.descriptor
            if desc.urls or desc.digest in broken or store.exists(desc.digest):
                continue
            try:
                registry.fetch_blob(ref, desc, store)
            except AccelError as exc:
                broken.add(desc.digest)
                verdict.fail(f"{side} blob {desc.digest}: {exc}")
    return broken


def _fetch_referenced(
    target: ManifestSource,
    target_ref: Reference,
    source_image: SourceImage,
    target_image: SourceImage,
    store: ContentStore,
    verdict: Verdict,
) -> set[str]:
    """A Nydus zran layer's data is the source's gzip blob, which must be in the target repository too."""
    by_digest = {
        layer.descriptor.digest: layer.descriptor for m in source_image.manifests for layer in m.layers
    }
    broken: set[str] = set()
    for manifest in target_image.manifests:
        for layer in manifest.layers:
            referenced = layer.descriptor.annotation(mt.NYDUS_REF_ANNOTATION)
            if not referenced or referenced in broken or store.exists(referenced):
                continue
            desc = by_digest.get(referenced)
            try:
                if desc is None:
                    raise VerifyError("not a layer of the source")
                target.fetch_blob(target_ref, desc, store)
            except AccelError as exc:
                broken.add(layer.descriptor.digest)
                verdict.fail(
                    f"target blob {referenced} (data of zran layer {layer.descriptor.digest}): {exc}"
                )
    return broken


def verify_image(
    source: ManifestSource,
    source_ref: Reference,
    target: ManifestSource,
    target_ref: Reference,
    *,
    work_dir: Path | None = None,
    platforms: Sequence[Platform] = (),
    nydus_image: Path | None = None,
) -> Verdict:
    """Check `target_ref` against `source_ref` (see the module docstring); blobs go to a private store."""
    verdict = Verdict(source=str(source_ref), target=str(target_ref))
    with _scratch(work_dir) as scratch:
        # Two stores: a blob both images list is fetched (and verified) from each.
        source_store, target_store = ContentStore(scratch / "source"), ContentStore(scratch / "target")
        source_image = resolve_source(source, source_ref, source_store, platforms)
        try:
            target_image = resolve_source(target, target_ref, target_store, platforms)
        except AccelError as exc:
            verdict.fail(f"target {target_ref}: {exc}")
            return verdict
        broken = _fetch_all(source, source_ref, source_image, source_store, verdict, "source")
        broken |= _fetch_all(target, target_ref, target_image, target_store, verdict, "target")
        broken |= _fetch_referenced(target, target_ref, source_image, target_image, target_store, verdict)
        by_platform: dict[str, list[SourceManifest]] = {}
        for manifest in target_image.manifests:
            by_platform.setdefault(_platform_key(manifest), []).append(manifest)
        for source_manifest in source_image.manifests:
            key = _platform_key(source_manifest)
            candidates = by_platform.get(key)
            if not candidates:
                verdict.fail(f"platform {key}: no target manifest")
                continue
            target_manifest = _pick_target(candidates, target_store)
            stores = (source_store, target_store)
            _verify_platform(source_manifest, target_manifest, stores, broken, verdict, scratch, nydus_image)
    return verdict


@contextlib.contextmanager
def _scratch(work_dir: Path | None) -> Iterator[Path]:
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="accel-verify-", dir=work_dir))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _layer_rows(key: str, target: SourceManifest, verdict: Verdict) -> list[LayerVerdict]:
    """One row per target layer (position, digest, format), added to the verdict."""
    rows = [
        LayerVerdict(key, n, layer.descriptor.digest, layer_format(layer.descriptor))
        for n, layer in enumerate(target.layers)
    ]
    verdict.layers.extend(rows)
    return rows


def _verify_platform(
    source: SourceManifest,
    target: SourceManifest,
    stores: tuple[ContentStore, ContentStore],  # source's, target's
    broken: set[str],
    verdict: Verdict,
    scratch: Path,
    nydus_image: Path | None,
) -> None:
    key = _platform_key(source)
    if any(layer_format(layer.descriptor).startswith("nydus") for layer in target.layers):
        _verify_nydus(source, target, stores, broken, verdict, scratch, nydus_image)
        return
    rows = _layer_rows(key, target, verdict)
    paired = len(source.layers) == len(target.layers)
    if not paired:
        verdict.fail(
            f"platform {key}: {len(target.layers)} target layers for {len(source.layers)} source layers"
        )
    source_trees: list[list[trees.Entry]] = []
    for layer in source.layers:
        if layer.descriptor.digest in broken:
            return
        try:
            source_trees.append(_source_layer_entries(stores[0], layer))
        except AccelError as exc:
            verdict.fail(f"platform {key}: source layer {layer.descriptor.digest}: {exc}")
            return
    target_trees: list[list[trees.Entry] | None] = []
    for n, (row, layer) in enumerate(zip(rows, target.layers, strict=True)):
        row.checks.append("digest+size")
        if paired:
            row.source = source.layers[n].descriptor.digest
        if layer.descriptor.digest in broken:
            row.problem = next(p for p in verdict.problems if layer.descriptor.digest in p)
            target_trees.append(None)
            continue
        target_trees.append(_verify_layer(row, layer, stores[1], verdict))
        if paired and target_trees[-1] is not None and row.ok:
            if row.format == "estargz":
                source_trees[n] = _refill_owner_names(source_trees[n])
            differences = trees.compare(
                {e.path: e for e in source_trees[n]},
                {e.path: e for e in target_trees[-1]},
                labels=("source", "target"),
            )
            if differences:
                verdict.fail(f"platform {key} layer {n}: {differences[0]}", row)
            else:
                row.checks.append("tree")
        if paired and row.format == "zstd:chunked":
            # The format promises the source tar byte for byte (checked after the tree, whose first
            # differing entry says more than two digests).
            source_diff_id = source.layers[n].diff_id
            if layer.diff_id != source_diff_id:
                problem = f"diff_id {layer.diff_id} is not the source DiffID {source_diff_id}"
                verdict.fail(f"platform {key} layer {n}: {problem}", row)
            elif row.ok:
                row.checks.append("diff_id == source")
    if all(t is not None for t in target_trees):
        differences = trees.compare(
            trees.apply_entries(source_trees),
            trees.apply_entries([t for t in target_trees if t is not None]),
            labels=("source", "target"),
        )
        if differences:
            verdict.fail(f"platform {key} merged view: {differences[0]}")


def _verify_layer(
    row: LayerVerdict, layer: SourceLayer, store: ContentStore, verdict: Verdict
) -> list[trees.Entry] | None:
    where = f"platform {row.platform} layer {row.position} ({row.format} {dg.short(row.target)})"
    path = store.path(layer.descriptor.digest)
    checkers: dict[str, Callable[[Path, Descriptor], list[str]]] = {
        "estargz": check_estargz,
        "zstd:chunked": check_zstd_chunked,
    }
    try:
        if row.format in checkers:
            row.checks.extend(checkers[row.format](path, layer.descriptor))
        entries = _target_layer_entries(store, layer, row.format)
        row.checks.append("diff_id")
        return entries
    except (AccelError, ValueError, OSError, tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
        verdict.fail(f"{where}: {exc}", row)
        return None


# --- Nydus -----------------------------------------------------------------------------------------


def _verify_nydus(
    source: SourceManifest,
    target: SourceManifest,
    stores: tuple[ContentStore, ContentStore],  # source's, target's
    broken: set[str],
    verdict: Verdict,
    scratch: Path,
    nydus_image: Path | None,
) -> None:
    """`nydus-image check` of the merged bootstrap and its inode listing against the source's layers
    applied; each layer unpacked from its own bootstrap against its source layer (RAFS keeps numeric
    owners only, so user and group names are not compared)."""
    key = _platform_key(source)
    rows = _layer_rows(key, target, verdict)
    for row in rows:
        row.checks.append("digest+size")
        if row.target in broken:
            row.problem = next(p for p in verdict.problems if row.target in p)
    if any(row.problem for row in rows) or any(layer.descriptor.digest in broken for layer in source.layers):
        return
    try:
        builder = readback.builder(nydus_image)
    except ConfigError as exc:
        verdict.fail(f"platform {key}: checking a Nydus image needs nydus-image: {exc}", rows[-1])
        return
    bootstrap_row = rows[-1]
    if bootstrap_row.format != "nydus-bootstrap":
        verdict.fail(f"platform {key}: the last layer is not a Nydus bootstrap layer", bootstrap_row)
        return
    source_store, store = stores
    source_trees = [_source_layer_entries(source_store, layer) for layer in source.layers]
    where = f"platform {key} layer {bootstrap_row.position} (nydus-bootstrap)"
    try:
        merged = readback.bootstrap_of_layer(
            store.path(bootstrap_row.target), scratch / f"{key.replace('/', '-')}.boot"
        )
        readback.check(builder, merged, readback.blob_dir(store), scratch)
        bootstrap_row.checks.append("nydus-image check")
        listed = readback.checked_inodes(builder, merged, readback.blob_dir(store))
    except readback.NydusReadError as exc:
        verdict.fail(f"{where}: {exc}", bootstrap_row)
        return
    blob_rows = [row for row in rows[:-1] if row.format == "nydus"]
    one_for_one = len(blob_rows) == len(source.layers) and not any(
        layer.descriptor.annotation(mt.NYDUS_REF_ANNOTATION) for layer in target.layers
    )  # not so with a chunk dictionary or zran
    for n, row in enumerate(blob_rows if one_for_one else []):
        row.source = source.layers[n].descriptor.digest
        where = f"platform {key} layer {row.position} (nydus {dg.short(row.target)})"
        try:
            unpacked = readback.unpack_layer(builder, store, row.target, scratch)
        except readback.NydusReadError as exc:
            verdict.fail(f"{where}: {exc}", row)
            continue
        with unpacked.open("rb") as stream:
            layer_tree = trees.apply_layers([stream])
        source_tree = trees.apply_entries([source_trees[n]])
        # A Nydus layer has the directories its whiteouts live in, which a source layer need not list.
        invented = _whiteout_parents(source_trees[n]) - source_tree.keys()
        layer_tree = {p: e for p, e in layer_tree.items() if not (p in invented and e.type == "dir")}
        differences = trees.compare(
            source_tree, layer_tree, ignore={"uname", "gname"}, labels=("source", "target")
        )
        unpacked.unlink()
        if differences:
            verdict.fail(f"platform {key} layer {row.position}: {differences[0]}", row)
        else:
            row.checks.extend(["unpack", "tree"])
    # After the layers: a layer's first differing entry says more than the merged view's.
    expected = trees.apply_entries(source_trees)
    difference = readback.compare_listing(expected, listed)
    if difference:
        verdict.fail(f"platform {key} merged view: {difference}", bootstrap_row)
    else:
        bootstrap_row.checks.append("merged view")


def _whiteout_parents(entries: Sequence[trees.Entry]) -> set[str]:
    parents: set[str] = set()
    for entry in entries:
        directory, _, base = entry.path.rpartition("/")
        if base.startswith(trees.WHITEOUT_PREFIX):
            while directory:
                parents.add(directory)
                directory = directory.rpartition("/")[0]
    return parents


# --- a built image, before it is pushed ------------------------------------------------------------


class StoredImage:
    """A built image still in the content store, readable as a `ManifestSource` (for the flow's verify step:
    what cannot be proven is not pushed). Blobs are copied out digest-verified, like from a registry."""

    def __init__(
        self,
        store: ContentStore,
        root: Descriptor,
        fallback: ManifestSource | None = None,
        at: Reference | None = None,
    ) -> None:
        self.store = store
        self.root = root
        self.fallback, self.at = fallback, at  # where blobs not stored locally are (cache hits mounted there)

    def fetch_manifest(self, ref: Reference) -> tuple[Descriptor, bytes]:
        digest = ref.digest or self.root.digest
        raw = self.store.read_bytes(digest)
        media_type = self.root.media_type if digest == self.root.digest else None
        return Descriptor.of(detect_media_type(raw, media_type), raw), raw

    def fetch_blob(self, repo_ref: Reference, desc: Descriptor, store: ContentStore) -> Path:
        if store.exists(desc.digest):
            return store.path(desc.digest)
        if not self.store.exists(desc.digest) and self.fallback is not None and self.at is not None:
            return self.fallback.fetch_blob(self.at, desc, store)
        with self.store.open(desc.digest) as stream, store.writer(expected=desc.digest) as writer:
            copied = 0
            while chunk := stream.read(_READ_SIZE):
                copied += writer.write(chunk)
        if copied != desc.size:
            store.path(desc.digest).unlink()
            raise VerifyError(f"blob {desc.digest}: {copied} bytes stored, descriptor says {desc.size}")
        return store.path(desc.digest)

    def fetch_blob_bytes(self, repo_ref: Reference, desc: Descriptor) -> bytes:
        data = self.store.read_bytes(desc.digest)
        if len(data) != desc.size:
            raise VerifyError(f"blob {desc.digest}: {len(data)} bytes stored, descriptor says {desc.size}")
        return data


def verify_built(
    source: ManifestSource,
    source_ref: Reference,
    store: ContentStore,
    root: Descriptor,
    *,
    work_dir: Path | None = None,
    platforms: Sequence[Platform] = (),
    target: ManifestSource | None = None,
    target_ref: Reference | None = None,
) -> Verdict:
    """`verify_image` of a built image still in `store` (its root descriptor) against its source; blobs
    not in the store are read from `target_ref` in `target` (where cache hits were mounted)."""
    built_ref = Reference(registry="store", repository="built", digest=root.digest)
    stored = StoredImage(store, root, target, target_ref)
    return verify_image(source, source_ref, stored, built_ref, work_dir=work_dir, platforms=platforms)
