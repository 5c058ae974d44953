"""The layer normaliser (accel.tarnormalize), the sparse expansion it relies on, and Nydus directory patches.

Outputs are read back with Python's tarfile, an independent reader, and compared with the input layer
applied with OCI semantics (tests/harness/trees.py).
"""

from __future__ import annotations

import io
import tarfile

import pytest

from accel import tarnormalize as tn
from accel import tarstream
from accel.drivers.nydus.directories import BUILDER_DEFAULT, patch_tar, patches
from accel.errors import InvalidImage
from tests.harness import imagegen, trees
from tests.harness.imagegen import tar_info, tar_members


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    """A whole PAX archive of these entries, in this order."""
    return tar_members(*members, closed=True)


def _file(name: str, data: bytes = b"x\n", **attrs: object) -> tuple[tarfile.TarInfo, bytes]:
    return tar_info(name, **attrs), data


def _dir(name: str, **attrs: object) -> tuple[tarfile.TarInfo, None]:
    return tar_info(name, tarfile.DIRTYPE, **{"mode": 0o755, **attrs}), None


def normalize(raw: bytes) -> tuple[bytes, tn.LayerPlan]:
    plan = tn.scan_layer(io.BytesIO(raw))
    out = tn.as_stream(tn.normalized_tar(io.BytesIO(raw), plan, chunk_size=4096)).read()
    return out, plan


def names(raw: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return [m.name for m in tar.getmembers()]


def test_an_ordinary_layer_passes_through_byte_for_byte() -> None:
    for builder in imagegen.standard_layers(big_file_size=300_000):
        for tar_format in ("pax", "gnu"):
            raw = builder.to_tar(tar_format)
            out, plan = normalize(raw)
            assert out == raw
            assert not plan.reorders
            assert plan.passes_through  # so the Nydus driver hands the builder the layer itself


def test_a_layer_passes_through_only_when_normalising_changes_nothing() -> None:
    ordinary = _tar(_dir("d"), _file("d/f"))
    assert normalize(ordinary)[1].passes_through
    unterminated = ordinary
    while unterminated.endswith(tarstream.ZERO_BLOCK):
        unterminated = unterminated[: -tarstream.BLOCK_SIZE]
    for changed in (
        _tar(_file("d/f"), _dir("d")),  # a directory after its child
        _tar(_file("f"), _file("f")),  # a repeated path
        _tar(_file("/abs")),  # a header to rewrite
        unterminated,  # no end-of-archive marker: normalising adds one
    ):
        out, plan = normalize(changed)
        assert out != changed
        assert not plan.passes_through


@pytest.mark.parametrize("form", imagegen.SPARSE_FORMS)
def test_sparse_files_are_expanded_into_plain_files(form: imagegen.SparseForm) -> None:
    regions = tuple((i * 70_000 + 11, bytes([65 + i % 26]) * (500 + 37 * i)) for i in range(27))
    sparse = imagegen.SparseFile("sp/file", 2_000_000, regions)
    raw = imagegen.sparse_tar(sparse, form, after={"sp/after": b"after\n"})
    out, _ = normalize(raw)
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["sp/file", "sp/after"]
        assert members[0].sparse is None and members[0].type == tarfile.REGTYPE
        assert not any(key.startswith("GNU.sparse") for key in members[0].pax_headers)
        assert tar.extractfile(members[0]).read() == sparse.content()  # type: ignore[union-attr]
    assert trees.compare(trees.apply_layers([raw]), trees.apply_layers([out])) == []


def test_a_sparse_map_beyond_the_file_size_is_refused() -> None:
    sparse = imagegen.SparseFile("f", 100, ((90, b"x" * 20),))
    with pytest.raises(tarstream.TarError, match="out-of-range"):
        normalize(imagegen.sparse_tar(sparse, "pax-0.1"))


def test_directories_move_before_their_first_child_and_the_last_entry_wins() -> None:
    raw = _tar(
        _file("late/file", b"1\n"),
        _dir("late", mode=0o750, uid=7),
        _file("a", b"first\n"),
        _file("deep/a/b", b"b\n"),
        _file("a", b"second\n", mode=0o600),
        _dir("deep/a", mode=0o701),
        _dir("deep", mode=0o711),
        _file("z"),
    )
    out, plan = normalize(raw)
    assert names(out) == ["late", "late/file", "deep", "deep/a", "deep/a/b", "a", "z"]
    assert trees.compare(trees.apply_layers([raw]), trees.apply_layers([out])) == []
    assert plan.table.directories.keys() == {"late", "deep", "deep/a"}
    assert plan.table.directories["late"] == tn.DirectoryAttributes(0o750, 7, 0, imagegen.DEFAULT_MTIME)


def test_directory_table_records_what_the_layer_does_to_directories() -> None:
    xattr = tar_info("etc", tarfile.DIRTYPE, mode=0o700, pax_headers={"SCHILY.xattr.user.k": "v"})
    raw = _tar(
        (xattr, None),
        _file("etc/apt/sources.list"),
        _file("usr/.wh.gone", b""),
        _file("var/lib/.wh..wh..opq", b""),
        (tar_info("bin", tarfile.SYMTYPE, linkname="usr/bin"), None),
    )
    table = tn.scan_layer(io.BytesIO(raw)).table
    assert table.directories == {
        "etc": tn.DirectoryAttributes(0o700, 0, 0, imagegen.DEFAULT_MTIME, 0, (("user.k", "v"),))
    }
    assert table.implied == ("etc/apt", "usr", "var", "var/lib")
    assert table.whiteouts == ("usr/gone",)
    assert table.opaque == ("var/lib",)
    assert set(table.replaced) == {"etc/apt/sources.list", "bin"}
    assert tn.DirectoryTable.from_json(table.to_json()) == table


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([_file("../x")], r"tar entry '\.\./x' escapes the root"),
        (
            [_file("a"), (tar_info("l", tarfile.LNKTYPE, linkname="../a"), None)],
            r"hardlink 'l' target '\.\./a' escapes the root",
        ),
        ([(tar_info("l", tarfile.LNKTYPE, linkname="nowhere"), None)], "not an earlier entry"),
        ([_dir("d"), (tar_info("l", tarfile.LNKTYPE, linkname="d"), None)], "hardlink to a directory"),
        ([(tar_info("s", tarfile.SYMTYPE, linkname="/"), None), _file("s/x")], "'s/x' lies below 's'"),
        ([_file("f"), _file("f/x")], "'f/x' lies below 'f'"),
    ],
    ids=["dotdot", "link-dotdot", "link-missing", "link-dir", "through-symlink", "through-file"],
)
def test_hostile_entries_are_refused_before_anything_is_written(
    members: list[tuple[tarfile.TarInfo, bytes | None]], message: str
) -> None:
    with pytest.raises(InvalidImage, match=message):
        tn.scan_layer(io.BytesIO(_tar(*members)))


def test_absolute_and_dotdot_names_are_made_relative_to_the_root() -> None:
    raw = _tar(
        _dir("/abs"),
        _file("/abs/f", b"f\n"),
        _file("abs/x/../y", b"y\n"),
        (tar_info("abs/l", tarfile.LNKTYPE, linkname="/abs/f"), None),
    )
    out, _ = normalize(raw)
    assert names(out) == ["abs", "abs/f", "abs/y", "abs/l"]
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        assert tar.getmember("abs/l").linkname == "abs/f"


# --- Nydus directory patches -----------------------------------------------------------------------


def _attrs(mode: int, uid: int = 0) -> tn.DirectoryAttributes:
    return tn.DirectoryAttributes(mode, uid, uid, 1_600_000_000)


def test_patches_restore_lower_attributes_of_implied_directories_only() -> None:
    lower = tn.DirectoryTable({"opt": _attrs(0o755), "opt/app": _attrs(0o750, 1001)}, replaced=("opt/app/a",))
    upper = tn.DirectoryTable({}, implied=("new", "opt", "opt/app"), replaced=("opt/app/b", "new/c"))
    explicit = tn.DirectoryTable({"opt": _attrs(0o700)}, implied=("opt/app",), replaced=("opt/app/d",))
    assert patches([lower, upper, explicit]) == [
        {},
        {"opt": _attrs(0o755), "opt/app": _attrs(0o750, 1001)},
        {"opt": _attrs(0o700), "opt/app": _attrs(0o750, 1001)},
    ]


def test_patches_respect_whiteouts_opaque_dirs_and_replacement() -> None:
    first = tn.DirectoryTable(
        {"a": _attrs(0o700), "b": _attrs(0o711), "b/c": _attrs(0o701), "d": _attrs(0o750)}
    )
    second = tn.DirectoryTable({}, implied=("b",), whiteouts=("a",), opaque=("b",), replaced=("d",))
    third = tn.DirectoryTable({}, implied=("a", "b", "b/c", "d"))
    result = patches([first, second, third])
    # In the second layer `b` is implied (by its opaque marker) and keeps its own attributes.
    assert result[1] == {"b": _attrs(0o711)}
    # `a` was whited out, `b/c` emptied away by the opaque marker, `d` replaced by a file: nothing to restore.
    assert result[2] == {"b": _attrs(0o711)}


def test_patch_tar_holds_directories_parents_first_with_xattrs() -> None:
    attrs = tn.DirectoryAttributes(0o750, 5, 6, 1_600_000_000, 123, (("user.k", "v\udcff"),))
    raw = patch_tar({"a/b": attrs, "a": BUILDER_DEFAULT})
    with tarfile.open(fileobj=io.BytesIO(raw), encoding="utf-8", errors="surrogateescape") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["a", "a/b"]
        assert all(m.isdir() for m in members)
        assert (members[1].mode, members[1].uid, members[1].gid) == (0o750, 5, 6)
        assert members[1].mtime == pytest.approx(1_600_000_000.000000123)
    entries = trees.tar_entries(raw)
    assert entries["a/b"].xattrs == {"user.k": b"v\xff"}
