"""Implicit parent directories in the merged bootstrap: lower layers' attributes, fixed at merge time.

A layer holding `d/b` but no `d/` entry gets a `d` with builder defaults (0755, root, mtime 0) in its own
bootstrap, and `nydus-image merge` lets that upper `d` win over the lower layer's real one. OCI layer
application keeps the lower directory instead. The fix leaves every layer blob as it is (a blob stays a
function of its own source layer, so blobs and cache records are shared between images whatever lies
below) and corrects the merged view instead: after a layer with such directories, `finish` merges a small
*patch* bootstrap, built from a tar of directory entries only, that restores the attributes the directory
has in the layers below. A patch has no chunks, so no blob of it is referenced or shipped.

A second kind of patch goes *before* a layer. `nydus-image merge` gives a path the upper layer's node but
keeps the children the lower node had, even when the upper node is no directory: a directory an upper layer
replaces with a file, symlink, hardlink, device or FIFO keeps its subtree hidden under the new node, and a
later layer that makes the path a directory again brings that subtree back, where OCI layer application
(overlayfs, containerd) shows only the later layer's entries (issue 20, case H). Before such a layer,
`finish` merges an *emptying* patch: the path as a directory holding an opaque marker, which drops the kept
subtree; the layer's own directory then replaces the patch's (`stale_subtrees`, `emptying_tar`). And an
empty patch goes first when the first layer has whiteouts, which merge would keep as files
(`first_layer_whites_out`).

The inputs are the layers' `DirectoryTable`s (written during conversion, see `accel.tarnormalize`):
which directories each layer carries, which it only implies, what it whites out, empties or replaces
with non-directories.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Sequence

from accel.oci import Descriptor
from accel.store import ContentStore
from accel.tarnormalize import OPAQUE_MARKER, DirectoryAttributes, DirectoryTable

# What nydus-image 2.2.0 gives a directory no tar entry describes.
BUILDER_DEFAULT = DirectoryAttributes(mode=0o755, uid=0, gid=0, mtime=0)
# A layer's DirectoryTable as stored: one of its `local_blobs`, so it travels with conversion cache records.
DIRECTORY_TABLE_MEDIA_TYPE = "application/vnd.accel.nydus.directory-table.v1+json"


def store_table(store: ContentStore, table: DirectoryTable) -> Descriptor:
    """`table` into the content store, as `ConvertedLayer.local_blobs` lists it."""
    raw = table.to_json()
    return Descriptor(media_type=DIRECTORY_TABLE_MEDIA_TYPE, digest=store.put_bytes(raw), size=len(raw))


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:depth]) for depth in range(1, len(parts))]


class _Directories:
    """The directories of the layers applied so far: path -> attributes (None: the builder's defaults)."""

    def __init__(self) -> None:
        self.known: dict[str, DirectoryAttributes | None] = {}

    def remove(self, path: str, *, keep_root: bool) -> None:
        if path not in self.known and not keep_root:
            return  # not a directory: nothing below it either
        prefix = f"{path}/"
        for doomed in [p for p in self.known if p.startswith(prefix)]:
            del self.known[doomed]
        if not keep_root:
            self.known.pop(path, None)


def patches(tables: Sequence[DirectoryTable]) -> list[dict[str, DirectoryAttributes]]:
    """Per layer, the directory entries to merge right after it (empty: the layer needs no patch).

    A directory a layer only implies gets the attributes it has below (the topmost lower layer carrying it,
    after whiteouts and opaque directories); a patch also carries the directory's ancestors with the
    attributes they have after the layer, so the patch's own implied parents change nothing.
    """
    below = _Directories()
    result: list[dict[str, DirectoryAttributes]] = []
    for table in tables:
        # Whiteouts and opaque markers act on the lower layers, whatever their place in the archive.
        for path in table.whiteouts:
            below.remove(path, keep_root=False)
        for path in table.opaque:
            below.remove(path, keep_root=True)
        patch = {path: attrs for path in table.implied if (attrs := below.known.get(path)) is not None}
        for path in list(patch):
            for ancestor in _ancestors(path):
                if ancestor not in patch:
                    patch[ancestor] = (
                        table.directories.get(ancestor) or below.known.get(ancestor) or (BUILDER_DEFAULT)
                    )
        result.append(dict(sorted(patch.items())))
        for path in table.replaced:
            below.remove(path, keep_root=False)
        for path in table.implied:
            below.known.setdefault(path, None)
        below.known.update(table.directories)
    return result


def stale_subtrees(tables: Sequence[DirectoryTable]) -> list[tuple[str, ...]]:
    """Per layer, the paths to empty in the merged view just before merging it (usually none): non-directories
    that replaced a directory (merge kept its subtree under them) and that the layer makes directories again.

    Only the outermost such path is named: emptying it drops everything below. A path whited out, or in a
    directory made opaque, since it was replaced lost its node and kept subtree in the merge already.
    """
    directories = _PathTree()  # the directories of the layers applied so far
    hiding: set[str] = set()  # non-directories that replaced a directory, its subtree kept below them
    result: list[tuple[str, ...]] = []
    for table in tables:
        for path in table.whiteouts:
            directories.discard_tree(path, keep_root=False)
            _discard_tree(hiding, path, keep_root=False)
        for path in table.opaque:
            directories.discard_tree(path, keep_root=True)
            _discard_tree(hiding, path, keep_root=True)
        again = hiding.intersection([*table.directories, *table.implied])
        stale = sorted(path for path in again if again.isdisjoint(_ancestors(path)))
        for path in stale:
            _discard_tree(hiding, path, keep_root=False)
        result.append(tuple(stale))
        for path in table.replaced:
            if path in directories:
                hiding.add(path)
            directories.discard_tree(path, keep_root=False)
        directories.update(table.implied, table.directories)
    return result


def first_layer_whites_out(tables: Sequence[DirectoryTable]) -> bool:
    """Whether the first layer has whiteouts or opaque markers. merge applies those of an upper bootstrap only
    and keeps the lowest one's as files (`.wh.name` in the image, where layer application removes nothing
    and creates nothing); an empty patch merged first makes the first layer an upper one."""
    return bool(tables) and bool(tables[0].whiteouts or tables[0].opaque)


class _PathNode:
    __slots__ = ("children", "present")

    def __init__(self) -> None:
        self.present = False
        self.children: dict[str, _PathNode] = {}


class _PathTree:
    """A set of slash-separated paths, one level of dicts per path component, so that dropping a subtree
    costs its depth, not a scan of every path: a layer replaces thousands of files, each a possible former
    directory, and a scan per file was quadratic (0.3 s per merge on a Debian rootfs)."""

    def __init__(self) -> None:
        self._root = _PathNode()

    def _node(self, path: str) -> _PathNode | None:
        node: _PathNode | None = self._root
        for part in path.split("/"):
            node = node.children.get(part) if node is not None else None
        return node

    def __contains__(self, path: str) -> bool:
        node = self._node(path)
        return node is not None and node.present

    def update(self, *groups: Iterable[str]) -> None:
        for paths in groups:
            for path in paths:
                node = self._root
                for part in path.split("/"):
                    node = node.children.setdefault(part, _PathNode())
                node.present = True

    def discard_tree(self, path: str, *, keep_root: bool) -> None:
        """Drop every path below `path`, and `path` itself unless `keep_root`."""
        parent, _, name = path.rpartition("/")
        above = self._node(parent) if parent else self._root
        node = above.children.get(name) if above is not None else None
        if node is None:
            return
        if keep_root:
            node.children.clear()
        else:
            del above.children[name]  # type: ignore[union-attr]


def _discard_tree(paths: set[str], path: str, *, keep_root: bool) -> None:
    prefix = f"{path}/"
    paths.difference_update([p for p in paths if p.startswith(prefix)])
    if not keep_root:
        paths.discard(path)


def emptying_tar(paths: Sequence[str]) -> bytes:
    """The patch that empties `paths` in the merged view (see `stale_subtrees`): each as a directory holding
    an opaque marker. Its directories' attributes do not matter: the layer merged next carries every one of
    them (the paths and their parents) as a directory of its own, whose node replaces the patch's."""
    return patch_tar(dict.fromkeys(paths, BUILDER_DEFAULT), opaque=paths)


def patch_tar(entries: dict[str, DirectoryAttributes], opaque: Sequence[str] = ()) -> bytes:
    """A PAX tar of directory entries, parents first (sorted paths put a parent before its children), then an
    opaque marker in each `opaque` directory (which `entries` holds)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:  # fmt: skip
        for path, attrs in sorted(entries.items()):
            info = tarfile.TarInfo(f"{path}/")
            info.type = tarfile.DIRTYPE
            info.mode, info.uid, info.gid, info.mtime = attrs.mode, attrs.uid, attrs.gid, attrs.mtime
            info.pax_headers = {f"SCHILY.xattr.{name}": value for name, value in attrs.xattrs}
            if attrs.mtime_ns:
                info.pax_headers["mtime"] = f"{attrs.mtime}.{attrs.mtime_ns:09d}"
            tar.addfile(info)
        for path in sorted(opaque):
            # A regular empty file, as the layers' markers reach nydus-image (--whiteout-spec none); merge
            # reads the name.
            marker = tarfile.TarInfo(f"{path}/{OPAQUE_MARKER.decode()}")
            marker.mode = 0o644
            tar.addfile(marker)
    return buffer.getvalue()
