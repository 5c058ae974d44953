"""Reading a Nydus image back, one platform at a time (a bootstrap layer only makes sense with its blobs),
through the real `nydus-image` (`readback`): `check` of the merged bootstrap, then its tree (`merged_view`:
type, mode, uid, gid, mtime with nanoseconds, size, content digest, link target) against the source's layers
applied; each layer unpacked from its own bootstrap against the source layer it stands for (everything but
owner names, which RAFS does not keep, and nanoseconds, which `unpack` does not write). Source layers without
data of their own have no blob and are passed over; one with data and no blob fails. With `mounted_view`, a
row of its own: the image mounted with nydusd (`mount`) and its tree compared too."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from accel import constants as mt
from accel import digest as dg
from accel import trees
from accel.compression import open_uncompressed
from accel.drivers.nydus import mount, readback
from accel.drivers.reader import DECODE_ERRORS, PlatformReader, PlatformUnderTest, decode_problem
from accel.errors import AccelError, ConfigError
from accel.oci import Descriptor
from accel.verdict import LayerVerdict

BOOTSTRAP_LABEL = "nydus-bootstrap"
BLOB_LABEL = "nydus"
MOUNT_LABEL = "nydusd mount"  # the extra row of the mounted view


class NydusReader(PlatformReader):
    def claims(self, desc: Descriptor) -> bool:
        return bool(
            desc.annotation(mt.NYDUS_BOOTSTRAP_ANNOTATION)
            or desc.annotation(mt.NYDUS_BLOB_ANNOTATION)
            or desc.media_type == mt.NYDUS_BLOB
        )

    def label(self, desc: Descriptor) -> str:
        return BOOTSTRAP_LABEL if desc.annotation(mt.NYDUS_BOOTSTRAP_ANNOTATION) else BLOB_LABEL

    def referenced_blobs(self, desc: Descriptor) -> tuple[str, ...]:
        referenced = desc.annotation(mt.NYDUS_REF_ANNOTATION)  # zran: the data is the source's gzip blob
        return (referenced,) if referenced else ()

    def verify_platform(self, platform: PlatformUnderTest) -> None:
        key, rows, verdict = platform.key, platform.rows, platform.verdict
        try:
            builder = readback.builder()
        except ConfigError as exc:
            verdict.fail(f"platform {key}: checking a Nydus image needs nydus-image: {exc}", rows[-1])
            return
        bootstrap_row = rows[-1]
        if bootstrap_row.format != BOOTSTRAP_LABEL:
            verdict.fail(f"platform {key}: the last layer is not a Nydus bootstrap layer", bootstrap_row)
            return
        where = f"platform {key} layer {bootstrap_row.position} ({BOOTSTRAP_LABEL})"
        try:
            merged = self._checked_bootstrap(builder, platform, bootstrap_row)
        except (AccelError, *DECODE_ERRORS) as exc:
            verdict.fail(f"{where}: {decode_problem(exc)}", bootstrap_row)
            return
        zran = any(layer.descriptor.annotation(mt.NYDUS_REF_ANNOTATION) for layer in platform.target_layers)
        blob_rows = [row for row in rows[:-1] if row.format == BLOB_LABEL]
        if not zran and len(blob_rows) <= len(platform.source_layers):
            # More blobs than source layers: chunk dictionary blobs are among them (their layers' data is
            # spread over several blobs, which `unpack` cannot read); the merged view covers them.
            self._verify_layers(builder, platform, blob_rows, bootstrap_row)
        # After the layers: a layer's first differing entry says more than the merged view's.
        # nydus-image 2.2.0 writes no nanoseconds (RAFS v6 `i_mtime_nsec` stays 0): that is what the
        # format holds of a sub-second mtime, so the target must show 0 there.
        expected = {
            path: dataclasses.replace(entry, mtime_ns=0)
            for path, entry in trees.apply_entries(platform.source_trees).items()
        }
        try:
            # The bootstrap's own blob table says whether chunks are zran (read from it, not the annotations).
            view = readback.merged_view(builder, merged, readback.blob_dir(platform.store))
            # zran chunks sit inside the source's gzip stream: their data is not read back here.
            unread = any(e.type == "reg" and e.sha256 is None for e in view.values())
            omitted = readback.MERGED_VIEW_OMITS | ({"sha256"} if unread else set())
            differences = trees.compare(expected, view, ignore=omitted, labels=("source", "target"))
        except (readback.NydusReadError, *DECODE_ERRORS) as exc:
            verdict.fail(f"{where}: merged view: {decode_problem(exc)}", bootstrap_row)
        else:
            if differences:
                verdict.fail(f"platform {key} merged view: {differences[0]}", bootstrap_row)
            else:
                bootstrap_row.checks.append("merged view")
        if platform.mounted_view:
            _mounted_view(platform, bootstrap_row, merged, expected)

    @staticmethod
    def _checked_bootstrap(builder: Path, platform: PlatformUnderTest, row: LayerVerdict) -> Path:
        """The merged bootstrap, out of its layer and through `nydus-image check`; every layer's DiffID
        first (a runtime checks them when it unpacks a layer: a blob's is its own digest, the bootstrap
        layer's that of its tar)."""
        for layer, layer_row in zip(platform.target_layers, platform.rows, strict=True):
            if layer_row is row:
                with open_uncompressed(
                    platform.store.path(row.target), layer.descriptor.media_type, layer.diff_id
                ) as stream:
                    while stream.read(1 << 20):
                        pass
            elif layer.diff_id != layer.descriptor.digest:
                raise readback.NydusReadError(
                    f"layer {layer_row.position}: diff_id {layer.diff_id} is not the blob's digest "
                    f"{layer.descriptor.digest}"
                )
        row.checks.append("diff_ids")
        merged = readback.bootstrap_of_layer(
            platform.store.path(row.target), platform.scratch / f"{platform.key.replace('/', '-')}.boot"
        )
        readback.check(builder, merged, readback.blob_dir(platform.store), platform.scratch)
        row.checks.append("nydus-image check")
        return merged

    def _verify_layers(
        self,
        builder: Path,
        platform: PlatformUnderTest,
        blob_rows: Sequence[LayerVerdict],
        bootstrap_row: LayerVerdict,
    ) -> None:
        """Each blob unpacked from its own bootstrap against the source layer it stands for. Blobs are in
        source layer order; a source layer whose files hold no data of their own (empty, only directories,
        links, whiteouts, or files a lower layer already holds) has no blob: a blob pairs with the first
        source layer from there on with an equal tree, and every source layer it passes over must be one
        of those. A source layer with data of its own and no blob fails."""
        key, verdict = platform.key, platform.verdict
        source_trees = platform.source_trees
        expected = [_comparable_layer(tree) for tree in source_trees]
        cursor = 0
        for row in blob_rows:
            where = f"platform {key} layer {row.position} ({BLOB_LABEL} {dg.short(row.target)})"
            if cursor >= len(source_trees):
                verdict.fail(f"{where}: no source layer is left for this blob", row)
                continue
            try:
                unpacked = readback.unpack_layer(builder, platform.store, row.target, platform.scratch)
                with unpacked.open("rb") as stream:
                    layer_tree = trees.apply_layers([stream])
                unpacked.unlink()
            except (readback.NydusReadError, *DECODE_ERRORS) as exc:
                verdict.fail(f"{where}: {decode_problem(exc)}", row)
                cursor += 1
                continue
            differences_at = {}
            chosen = None
            for n in range(cursor, len(source_trees)):
                differences_at[n] = _layer_differences(source_trees[n], expected[n], layer_tree)
                if not differences_at[n]:
                    chosen = n
                    break
                if _holds_own_data(source_trees, n):
                    break  # a blob cannot stand for a later layer while this one has none
            if chosen is None:
                # No equal layer: report against the first layer it could stand for.
                chosen = next(
                    (n for n in differences_at if _holds_own_data(source_trees, n)), min(differences_at)
                )
            self._passed_over(platform, range(cursor, chosen), bootstrap_row)
            row.source = platform.source_layers[chosen].descriptor.digest
            if differences_at[chosen]:
                verdict.fail(f"platform {key} layer {row.position}: {differences_at[chosen][0]}", row)
            else:
                row.checks.extend(["unpack", "tree"])
            cursor = chosen + 1
        self._passed_over(platform, range(cursor, len(source_trees)), bootstrap_row)

    @staticmethod
    def _passed_over(platform: PlatformUnderTest, skipped: range, bootstrap_row: LayerVerdict) -> None:
        for n in skipped:
            if _holds_own_data(platform.source_trees, n):
                digest = platform.source_layers[n].descriptor.digest
                platform.verdict.fail(
                    f"platform {platform.key}: source layer {n} ({dg.short(digest)}) holds file data, "
                    "but no Nydus blob stands for it",
                    bootstrap_row,
                )
            else:
                bootstrap_row.checks.append(f"source layer {n}: no data, no blob")


def _mounted_view(
    platform: PlatformUnderTest,
    bootstrap_row: LayerVerdict,
    merged: Path,
    expected: dict[str, trees.Entry],
) -> None:
    """A row of its own: the image mounted with nydusd over its fetched blobs, its tree compared with the
    source's layers applied; where this machine cannot mount, the row says why."""
    row = LayerVerdict(platform.key, bootstrap_row.position, bootstrap_row.target, MOUNT_LABEL)
    platform.verdict.layers.append(row)
    why_not = mount.fuse_unavailable()
    if why_not:
        row.checks.append(f"not mounted: {why_not}")
        return
    workdir = platform.scratch / f"mount-{platform.key.replace('/', '-')}"
    where = f"platform {platform.key} {MOUNT_LABEL}"
    try:
        blobs = mount.LocalBlobs(readback.blob_dir(platform.store))
        differences = mount.compare_mounted(merged, blobs, expected, workdir)
    except mount.MountError as exc:
        platform.verdict.fail(f"{where}: {exc}", row)
        return
    if differences:
        platform.verdict.fail(f"{where}: {differences[0]}", row)
    else:
        row.checks.append("mounted tree")


def _comparable_layer(entries: Sequence[trees.Entry]) -> dict[str, trees.Entry]:
    return trees.apply_entries([entries])


def _layer_differences(
    entries: Sequence[trees.Entry], source_tree: dict[str, trees.Entry], layer_tree: dict[str, trees.Entry]
) -> list[str]:
    # A Nydus layer has the directories its whiteouts live in, which a source layer need not list.
    invented = _whiteout_parents(entries) - source_tree.keys()
    layer_tree = {p: e for p, e in layer_tree.items() if not (p in invented and e.type == "dir")}
    return trees.compare(
        source_tree, layer_tree, ignore=readback.LAYER_VIEW_OMITS, labels=("source", "target")
    )


def _holds_own_data(source_trees: Sequence[Sequence[trees.Entry]], n: int) -> bool:
    """Whether source layer `n` has file data no lower layer holds (so its Nydus blob has chunks): the
    files the layer leaves behind (a file the same layer replaces later leaves no data)."""
    lower = {e.sha256 for tree in source_trees[:n] for e in tree if e.type == "reg"}
    kept = trees.apply_entries([source_trees[n]]).values()
    return any(e.type == "reg" and e.size and e.sha256 not in lower for e in kept)


def _whiteout_parents(entries: Sequence[trees.Entry]) -> set[str]:
    parents: set[str] = set()
    for entry in entries:
        directory, _, base = entry.path.rpartition("/")
        if base.startswith(trees.WHITEOUT_PREFIX):
            while directory:
                parents.add(directory)
                directory = directory.rpartition("/")[0]
    return parents
