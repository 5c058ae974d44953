"""Proving a converted image against its source, trusting nothing about how it was made.

For every platform of the source, the target's manifest for that platform is read and checked:

1. every blob (configs, layers) is fetched into a private content store: digest and size verified;
2. each target layer decodes through its format's own reader (`accel.drivers.reader_for`: each format's
   `reader` module beside its writer) — eStargz: footer, TOC digest annotation, every chunk digest and every
   file digest; zstd:chunked: footer and position annotation, manifest checksum, every chunk digest and
   every file digest, and the decompressed stream equals the source DiffID (the format promises a
   byte-exact tar); Nydus: `nydus-image check` of the merged bootstrap, each layer unpacked from its own
   bootstrap; other layers: the decompressed stream equals its DiffID;
3. the file tree of each target layer equals its source layer's (names, types, modes, owners, mtimes,
   sizes, content hashes, link targets, xattrs), and the merged view equals the source's layers applied.

This module fetches, pairs layers and compares trees; it parses no format. `verify_image` returns a
`Verdict`: a row per layer (what was checked, the first problem) and the first differing entry. It never
raises for a difference; only for an image it cannot read at all.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from accel import digest as dg
from accel import trees
from accel.drivers import reader_for
from accel.drivers.reader import (
    DECODE_ERRORS,
    LayerReader,
    PlatformReader,
    PlatformUnderTest,
    decode_problem,
    source_entries,
)
from accel.errors import AccelError
from accel.image import resolve_source
from accel.model import SourceImage, SourceLayer, SourceManifest
from accel.oci import Descriptor, Platform, detect_media_type
from accel.reference import Reference
from accel.registry.interfaces import ManifestSource
from accel.store import ContentStore
from accel.verdict import LayerVerdict, Verdict

_READ_SIZE = 1 << 20

__all__ = [
    "LayerVerdict",
    "StoredImage",
    "Verdict",
    "VerifyError",
    "layer_format",
    "verify_built",
    "verify_image",
]


class VerifyError(AccelError):
    """One check failed; the message names the layer part or entry."""


def layer_format(desc: Descriptor) -> str:
    """The layer's format as the verdict names it (its reader's label)."""
    return reader_for(desc).label(desc)


# --- images ----------------------------------------------------------------------------------------


def _platform_key(manifest: SourceManifest) -> str:
    return str(manifest.platform) if manifest.platform else "-"


def _pick_target(candidates: list[SourceManifest]) -> SourceManifest:
    """An index may hold, per platform, the source image beside the converted one (Nydus `merge_manifest`):
    the one whose layers a format's reader claims is the converted image."""
    for candidate in candidates:
        if any(reader_for(layer.descriptor).claims(layer.descriptor) for layer in candidate.layers):
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
    """Blobs a layer reads its data from although no manifest lists them (a Nydus zran layer's data is the
    source's gzip blob) must be in the target repository too."""
    by_digest = {
        layer.descriptor.digest: layer.descriptor for m in source_image.manifests for layer in m.layers
    }
    broken: set[str] = set()
    for manifest in target_image.manifests:
        for layer in manifest.layers:
            for referenced in reader_for(layer.descriptor).referenced_blobs(layer.descriptor):
                if referenced in broken or store.exists(referenced):
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
    mounted_view: bool = False,
) -> Verdict:
    """Check `target_ref` against `source_ref` (see the module docstring); blobs go to a private store.
    `mounted_view`: formats that a runtime mounts are also mounted and read (Nydus: nydusd, where FUSE works;
    a row says so where it does not)."""
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
            target_manifest = _pick_target(candidates)
            stores = (source_store, target_store)
            try:
                _verify_platform(
                    source_manifest, target_manifest, stores, broken, verdict, scratch, mounted_view
                )
            except Exception as exc:  # a verdict row, never a traceback, whatever the input
                row = next((r for r in reversed(verdict.layers) if r.platform == key and r.ok), None)
                verdict.fail(f"platform {key}: unreadable: {decode_problem(exc)}", row)
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


def _layer_rows(
    key: str, target: SourceManifest, readers: Sequence[LayerReader | PlatformReader], verdict: Verdict
) -> list[LayerVerdict]:
    """One row per target layer (position, digest, format), added to the verdict."""
    rows = [
        LayerVerdict(key, n, layer.descriptor.digest, reader.label(layer.descriptor))
        for n, (layer, reader) in enumerate(zip(target.layers, readers, strict=True))
    ]
    verdict.layers.extend(rows)
    return rows


def _source_trees(
    key: str, source: SourceManifest, store: ContentStore, broken: set[str], verdict: Verdict
) -> list[list[trees.Entry]] | None:
    """Each source layer's entries; None (the failure recorded) when one cannot be read."""
    source_trees: list[list[trees.Entry]] = []
    for layer in source.layers:
        if layer.descriptor.digest in broken:
            return None
        try:
            source_trees.append(source_entries(store, layer))
        except (AccelError, *DECODE_ERRORS) as exc:
            verdict.fail(f"platform {key}: source layer {layer.descriptor.digest}: {decode_problem(exc)}")
            return None
    return source_trees


def _verify_platform(
    source: SourceManifest,
    target: SourceManifest,
    stores: tuple[ContentStore, ContentStore],  # source's, target's
    broken: set[str],
    verdict: Verdict,
    scratch: Path,
    mounted_view: bool = False,
) -> None:
    key = _platform_key(source)
    readers = [reader_for(layer.descriptor) for layer in target.layers]
    rows = _layer_rows(key, target, readers, verdict)
    whole = next((r for r in readers if isinstance(r, PlatformReader)), None)
    if whole is not None:
        _verify_whole_platform(whole, source, target, rows, stores, broken, verdict, scratch, mounted_view)
        return
    layer_readers = [r for r in readers if isinstance(r, LayerReader)]
    paired = len(source.layers) == len(target.layers)
    if not paired:
        verdict.fail(
            f"platform {key}: {len(target.layers)} target layers for {len(source.layers)} source layers"
        )
    source_trees = _source_trees(key, source, stores[0], broken, verdict)
    if source_trees is None:
        return
    target_trees: list[list[trees.Entry] | None] = []
    for n, (row, layer, reader) in enumerate(zip(rows, target.layers, layer_readers, strict=True)):
        row.checks.append("digest+size")
        if paired:
            row.source = source.layers[n].descriptor.digest
        if layer.descriptor.digest in broken:
            row.problem = next(p for p in verdict.problems if layer.descriptor.digest in p)
            target_trees.append(None)
            continue
        target_trees.append(_read_layer(row, layer, reader, stores[1], verdict))
        if paired and target_trees[-1] is not None and row.ok:
            source_trees[n] = reader.comparable_source(source_trees[n])
            differences = trees.compare(
                {e.path: e for e in source_trees[n]},
                {e.path: e for e in target_trees[-1]},
                ignore=reader.omits,
                labels=("source", "target"),
            )
            if differences:
                verdict.fail(f"platform {key} layer {n}: {differences[0]}", row)
            else:
                row.checks.append("tree")
        if paired and reader.keeps_source_tar:
            # The format promises the source tar byte for byte (checked after the tree, whose first
            # differing entry says more than two digests).
            source_diff_id = source.layers[n].diff_id
            if layer.diff_id != source_diff_id:
                problem = f"diff_id {layer.diff_id} is not the source DiffID {source_diff_id}"
                verdict.fail(f"platform {key} layer {n}: {problem}", row)
            elif row.ok:
                row.checks.append("diff_id == source")
    if all(t is not None for t in target_trees):
        try:
            differences = trees.compare(
                trees.apply_entries(source_trees),
                trees.apply_entries([t for t in target_trees if t is not None]),
                ignore=set().union(*(reader.omits for reader in layer_readers)),
                labels=("source", "target"),
            )
        except ValueError as exc:  # a layer that cannot be applied (a hardlink to nothing)
            differences = [f"cannot be applied: {exc}"]
        if differences:
            verdict.fail(f"platform {key} merged view: {differences[0]}")


def _read_layer(
    row: LayerVerdict, layer: SourceLayer, reader: LayerReader, store: ContentStore, verdict: Verdict
) -> list[trees.Entry] | None:
    where = f"platform {row.platform} layer {row.position} ({row.format} {dg.short(row.target)})"
    try:
        return reader.read(store.path(layer.descriptor.digest), layer, row.checks)
    except (AccelError, *DECODE_ERRORS) as exc:
        verdict.fail(f"{where}: {decode_problem(exc)}", row)
        return None


def _verify_whole_platform(
    reader: PlatformReader,
    source: SourceManifest,
    target: SourceManifest,
    rows: list[LayerVerdict],
    stores: tuple[ContentStore, ContentStore],  # source's, target's
    broken: set[str],
    verdict: Verdict,
    scratch: Path,
    mounted_view: bool = False,
) -> None:
    """A format whose layers are read together: its reader pairs layers and compares trees itself."""
    key = _platform_key(source)
    for row in rows:
        row.checks.append("digest+size")
        if row.target in broken:
            row.problem = next(p for p in verdict.problems if row.target in p)
    if any(row.problem for row in rows):
        return
    source_trees = _source_trees(key, source, stores[0], broken, verdict)
    if source_trees is None:
        return
    reader.verify_platform(
        PlatformUnderTest(
            key=key,
            source_layers=source.layers,
            source_trees=source_trees,
            target_layers=target.layers,
            rows=rows,
            store=stores[1],
            verdict=verdict,
            scratch=scratch,
            mounted_view=mounted_view,
        )
    )


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
