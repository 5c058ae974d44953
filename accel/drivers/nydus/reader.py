"""Reading a Nydus image back, one platform at a time (a bootstrap layer only makes sense with its blobs),
through the real `nydus-image` (`readback`): `check` of the merged bootstrap and its inode listing against
the source's layers applied; each layer unpacked from its own bootstrap against its source layer (RAFS keeps
numeric owners only, so user and group names are not compared)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from accel import constants as mt
from accel import digest as dg
from accel import trees
from accel.drivers.nydus import mount, readback
from accel.drivers.reader import PlatformReader, PlatformUnderTest
from accel.errors import ConfigError
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
        key, rows, store, verdict, scratch = (
            platform.key, platform.rows, platform.store, platform.verdict, platform.scratch
        )  # fmt: skip
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
            merged = readback.bootstrap_of_layer(
                store.path(bootstrap_row.target), scratch / f"{key.replace('/', '-')}.boot"
            )
            readback.check(builder, merged, readback.blob_dir(store), scratch)
            bootstrap_row.checks.append("nydus-image check")
            listed = readback.checked_inodes(builder, merged, readback.blob_dir(store))
        except readback.NydusReadError as exc:
            verdict.fail(f"{where}: {exc}", bootstrap_row)
            return
        source_layers, source_trees = platform.source_layers, platform.source_trees
        blob_rows = [row for row in rows[:-1] if row.format == BLOB_LABEL]
        one_for_one = len(blob_rows) == len(source_layers) and not any(
            layer.descriptor.annotation(mt.NYDUS_REF_ANNOTATION) for layer in platform.target_layers
        )  # not so with a chunk dictionary or zran
        for n, row in enumerate(blob_rows if one_for_one else []):
            row.source = source_layers[n].descriptor.digest
            where = f"platform {key} layer {row.position} ({BLOB_LABEL} {dg.short(row.target)})"
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
        if platform.mounted_view:
            _mounted_view(platform, bootstrap_row, merged, expected)


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


def _whiteout_parents(entries: Sequence[trees.Entry]) -> set[str]:
    parents: set[str] = set()
    for entry in entries:
        directory, _, base = entry.path.rpartition("/")
        if base.startswith(trees.WHITEOUT_PREFIX):
            while directory:
                parents.add(directory)
                directory = directory.rpartition("/")[0]
    return parents
