"""The layer normaliser (accel.tarnormalize), the sparse expansion it relies on, and Nydus directory patches.

Outputs are read back with Python's tarfile, an independent reader, and compared with the input layer
applied with OCI semantics (tests/harness/trees.py).
"""

from __future__ import annotations

import collections
import io
import random
import re
import tarfile

import pytest

from accel import tarnormalize as tn
from accel import tarstream
from accel.drivers.nydus import tar as nydus_tar
from accel.drivers.nydus.directories import (
    BUILDER_DEFAULT,
    emptying_tar,
    first_layer_whites_out,
    patch_tar,
    patches,
    stale_subtrees,
)
from accel.drivers.nydus.tar import NotPassedThrough, ScanningFeed, builder_compatible_tar
from accel.errors import InvalidImage
from tests.harness import imagegen, trees
from tests.harness.imagegen import pax_size_layer, tar_info, tar_members, unusual_layer


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    """A whole PAX archive of these entries, in this order."""
    return tar_members(*members, closed=True)


def _file(name: str, data: bytes = b"x\n", **attrs: object) -> tuple[tarfile.TarInfo, bytes]:
    return tar_info(name, **attrs), data


def _dir(name: str, **attrs: object) -> tuple[tarfile.TarInfo, None]:
    return tar_info(name, tarfile.DIRTYPE, **{"mode": 0o755, **attrs}), None


def normalize(raw: bytes) -> tuple[bytes, tn.Normalisation]:
    """The layer normalised as the Nydus driver does it (its refusals included), and the plan."""
    plan = tn.scan_layer(io.BytesIO(raw), check=nydus_tar.refuse_what_nydus_cannot_hold)
    out = tn.as_stream(tn.normalized_tar(io.BytesIO(raw), plan, chunk_size=4096)).read()
    return out, plan


def names(raw: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return [m.name for m in tar.getmembers()]


def through_end_blocks(raw: bytes) -> bytes:
    """The archive up to and with its end-of-archive blocks (what readers take of it)."""
    scanner = tarstream.TarScanner(io.BytesIO(raw))
    for _ in scanner:
        pass
    return raw[: scanner.offset]


def test_an_ordinary_layer_passes_through_byte_for_byte() -> None:
    for builder in imagegen.standard_layers(big_file_size=300_000):
        for tar_format in ("pax", "gnu"):
            raw = builder.to_tar(tar_format)
            out, plan = normalize(raw)
            assert out == through_end_blocks(raw)  # the zero padding after the end blocks is left out
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


def test_stale_subtrees_name_replaced_directories_that_come_back() -> None:
    lower = tn.DirectoryTable(
        {"d": _attrs(0o755), "p": _attrs(0o755), "p/q": _attrs(0o700)}, replaced=("d/x",)
    )
    replace = tn.DirectoryTable({}, implied=("p",), replaced=("d", "p/q", "f"))
    again = tn.DirectoryTable({"d": _attrs(0o700)}, implied=("p", "p/q"), replaced=("d/b", "p/q/y", "f/z"))
    # `f` was never a directory: nothing kept below it. `d` and `p/q` were: the third layer empties them.
    assert stale_subtrees([lower, replace, again]) == [(), (), ("d", "p/q")]
    # Once emptied, a path comes back clean: a second return needs a second replacement.
    assert stale_subtrees([lower, replace, again, again]) == [(), (), ("d", "p/q"), ()]
    assert stale_subtrees([lower, replace, again, replace, again]) == [(), (), ("d", "p/q"), (), ("d", "p/q")]


def test_stale_subtrees_name_the_outermost_path_only() -> None:
    lower = tn.DirectoryTable({"d": _attrs(0o755), "d/e": _attrs(0o755)}, replaced=("d/e/x",))
    inner = tn.DirectoryTable({}, implied=("d",), replaced=("d/e",))
    outer = tn.DirectoryTable({}, replaced=("d",))
    again = tn.DirectoryTable({}, implied=("d", "d/e"), replaced=("d/e/y",))
    assert stale_subtrees([lower, inner, outer, again]) == [(), (), (), ("d",)]


def test_stale_subtrees_skip_paths_whiteouts_and_opaque_markers_removed() -> None:
    lower = tn.DirectoryTable({"d": _attrs(0o755), "p": _attrs(0o755), "p/q": _attrs(0o755)})
    replace = tn.DirectoryTable({}, implied=("p",), replaced=("d", "p/q"))
    gone = tn.DirectoryTable({}, whiteouts=("d",), opaque=("p",))
    again = tn.DirectoryTable({}, implied=("d", "p", "p/q"), replaced=("d/b", "p/q/b"))
    assert stale_subtrees([lower, replace, gone, again]) == [()] * 4
    # A whiteout in the returning layer itself acts before its directory: nothing left to empty.
    in_layer = tn.DirectoryTable({"d": _attrs(0o755)}, whiteouts=("d",), replaced=("d/b",))
    assert stale_subtrees([lower, replace, in_layer]) == [(), (), ()]
    # An opaque marker in the returning directory is no whiteout of it: the patch empties it first.
    opaque = tn.DirectoryTable({"d": _attrs(0o755)}, opaque=("d",), replaced=("d/b",))
    assert stale_subtrees([lower, replace, opaque]) == [(), (), ("d",)]


def test_only_whiteouts_in_the_first_layer_need_an_empty_base() -> None:
    plain = tn.DirectoryTable({"d": _attrs(0o755)})
    assert not first_layer_whites_out([]) and not first_layer_whites_out([plain, plain])
    assert not first_layer_whites_out([plain, tn.DirectoryTable({}, whiteouts=("d",))])
    assert first_layer_whites_out([tn.DirectoryTable({}, whiteouts=("q",)), plain])
    assert first_layer_whites_out([tn.DirectoryTable({}, implied=("d",), opaque=("d",))])


def test_emptying_tar_holds_each_directory_with_an_opaque_marker() -> None:
    raw = emptying_tar(["p/q", "d-\udcff"])
    with tarfile.open(fileobj=io.BytesIO(raw), encoding="utf-8", errors="surrogateescape") as tar:
        members = [(m.name, m.isdir()) for m in tar.getmembers()]
    assert members == [
        ("d-\udcff", True),
        ("p/q", True),
        ("d-\udcff/.wh..wh..opq", False),
        ("p/q/.wh..wh..opq", False),
    ]


# --- one pass: the Nydus builder's feed scans the layer as it forwards it -----------------------------

_NAMES = ["a", "a/b", "a/b/c", "d", "d/e", "./f", "/abs", "a/../g", "../esc", "h", "l" * 120 + "/x"]
_KINDS = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE]


def _random_layer(rng: random.Random) -> bytes:
    """A few entries drawn from a small pool of names and kinds: repeats, links to anywhere, odd names."""
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for _ in range(rng.randint(1, 7)):
        name, kind = rng.choice(_NAMES), rng.choice(_KINDS)
        info = tar_info(name, kind, mode=0o755 if kind == tarfile.DIRTYPE else 0o644)
        if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
            info.linkname = rng.choice(_NAMES)
        if rng.random() < 0.2:
            info.pax_headers = {"SCHILY.xattr.user.k": "v"}
        data = b"z" * rng.choice([0, 1, 700]) if kind == tarfile.REGTYPE else None
        members.append((info, data))
    raw = tar_members(*members, closed=rng.random() < 0.9)
    return raw + (b"trailing" if rng.random() < 0.1 else b"")


def _nydus_image_view(raw: bytes) -> dict[bytes, tuple[bytes, tuple[int, int, int, int], bytes]]:
    """Each entry as nydus-image 2.2.0 reads it: its header block's own numbers (PAX records only for names),
    and its link target."""
    view = {}
    for member in tarstream.TarScanner(io.BytesIO(raw)):
        block = tarstream.parse_header_block(member.header_bytes[-tarstream.BLOCK_SIZE :])[0]
        numbers = (block.mode & 0o7777, block.uid, block.gid, block.mtime.seconds)
        view[tn.clean_path(member.header.name)] = (member.header.typeflag, numbers, member.header.linkname)
    return view


def test_unusual_legal_layers_normalise_to_the_same_tree_as_nydus_image_reads_it_or_are_refused_by_name() -> (
    None
):
    rng = random.Random(20261207)
    outcomes: collections.Counter[str] = collections.Counter()
    for _ in range(400):
        raw = unusual_layer(rng)
        try:
            out, plan = normalize(raw)
        except InvalidImage as exc:
            assert "tar entry '" in str(exc), exc  # every refusal names the entry
            outcomes["refused"] += 1
            continue
        outcomes["passed through" if plan.passes_through else "normalised"] += 1
        assert trees.apply_layers([out]) == trees.apply_layers([raw])  # Python's reading: the same tree
        assert out == through_end_blocks(out)  # nothing after the end blocks
        view = _nydus_image_view(out)
        expected = {path: entry for path, entry in trees.tar_entries(out).items()}
        for path, (kind, numbers, linkname) in view.items():
            entry = expected[path.decode("utf-8", "surrogateescape")]
            if kind == tarstream.TYPE_LINK:  # to the chain's first entry, which has the link's attributes
                first = view[tn.clean_path(linkname)]
                assert first[0] != tarstream.TYPE_LINK and first[1] == numbers
                entry = expected[tn.clean_path(linkname).decode("utf-8", "surrogateescape")]
            assert numbers == (entry.mode, entry.uid, entry.gid, entry.mtime)  # in the header block
    assert min(outcomes.values()) >= 20 and len(outcomes) == 3, outcomes


def _one_pass(raw: bytes) -> tuple[bytes, str | None, tn.Normalisation | str]:
    """(bytes forwarded to the builder, why the feed stopped early, the plan or the refusal).

    The feed stops, or refuses while feeding, before the end of the layer whenever there is a refusal.
    """
    feed = ScanningFeed(io.BytesIO(raw))
    forwarded = bytearray()
    stopped = None
    try:
        for chunk in feed.chunks():
            forwarded += chunk
    except NotPassedThrough as exc:
        stopped = str(exc)
    except InvalidImage as exc:
        return bytes(forwarded), "refused while feeding", str(exc)
    try:
        return bytes(forwarded), stopped, feed.normalisation()
    except InvalidImage as exc:
        assert stopped is not None, f"{exc} was only found after the whole layer was fed"
        return bytes(forwarded), stopped, str(exc)


def _scan_layer(raw: bytes) -> tn.Normalisation | str:
    try:
        return tn.scan_layer(io.BytesIO(raw), check=nydus_tar.refuse_what_nydus_cannot_hold)
    except InvalidImage as exc:
        return str(exc)


def _layers_for_the_one_pass() -> list[bytes]:
    rng = random.Random(20261129)
    layers = [_random_layer(rng) for _ in range(600)]
    layers += [unusual_layer(rng) for _ in range(200)]
    layers += [builder.to_tar(f) for builder in imagegen.standard_layers(200_000) for f in ("pax", "gnu")]
    sparse = imagegen.SparseFile("sp/s", 50_000, ((5, b"a" * 600), (40_000, b"b" * 10)))
    layers += [imagegen.sparse_tar(sparse, form, after={"sp/after": b"x"}) for form in imagegen.SPARSE_FORMS]
    layers.append(_tar((tar_info("dev/fifo", tarfile.FIFOTYPE), None), _file("big", b"q" * 300_000)))
    layers.append(pax_size_layer())
    with_global_header = io.BytesIO()
    with tarfile.open(fileobj=with_global_header, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": "a PAX global header first"}) as tar:  # fmt: skip
        tar.addfile(tar_info("g/file", size=3), io.BytesIO(b"abc"))
    layers.append(with_global_header.getvalue())
    return layers


def test_the_one_pass_feed_decides_as_scan_layer_and_forwards_what_the_builder_got_before() -> None:
    outcomes: collections.Counter[str] = collections.Counter()
    for raw in _layers_for_the_one_pass():
        forwarded, stopped, plan = _one_pass(raw)
        assert plan == _scan_layer(raw)  # the same plan, or the same refusal
        if isinstance(plan, str):
            outcomes["refused"] += 1
        elif plan.passes_through and stopped is not None:
            # The builder gets it as before, from `builder_compatible_tar`, in a second pass.
            assert "payload size" in stopped
            assert raw == pax_size_layer()
            outcomes["passed through in a second pass"] += 1
        elif plan.passes_through:
            # Byte for byte what `builder_compatible_tar` gave the builder when the scan ran first.
            assert forwarded == b"".join(builder_compatible_tar(io.BytesIO(raw)))
            outcomes["passed through"] += 1
        elif plan.ends_cleanly:
            assert stopped is not None  # every change is seen before the builder gets the entry
            outcomes["stopped early"] += 1
        else:
            outcomes["no end marker"] += 1
    assert outcomes.pop("passed through in a second pass") == 1
    assert min(outcomes.values()) >= 10 and len(outcomes) == 4, outcomes


def test_the_one_pass_feed_stops_before_the_entry_that_shows_a_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(nydus_tar, "GATHER_SIZE", 1)  # each piece goes on its own: the boundary shows
    first = _file("first", b"1" * 1000)
    for later, reason in [
        (_file("first", b"again"), "repeats a path"),
        (_file("/abs"), "is rewritten"),
        (_dir("x/../y"), "is rewritten"),
        (_file("first/below"), "lies below a non-directory"),
    ]:
        raw = _tar(first, later)
        forwarded, stopped, plan = _one_pass(raw)
        assert stopped is not None and reason in stopped
        assert isinstance(plan, str) or not plan.passes_through
        assert forwarded == raw[: len(forwarded)] and len(forwarded) == 1536  # `first` and nothing more
    raw = _tar(_file("d/f"), _dir("d"))
    forwarded, stopped, _ = _one_pass(raw)
    assert stopped == "'d/' comes after an entry below it" and len(forwarded) == 1024


# --- legal layers past the plain ustar form (issue 20) ------------------------------------------------


def _main_block_of(raw: bytes, name: bytes) -> tarstream.TarHeader:
    """The named entry's header block as nydus-image reads it: its own fields, PAX records not applied."""
    for member in tarstream.TarScanner(io.BytesIO(raw)):
        if member.header.name == name:
            return tarstream.parse_header_block(member.header_bytes[-tarstream.BLOCK_SIZE :])[0]
    raise AssertionError(f"no entry {name!r}")


def test_owner_and_mtime_only_in_pax_records_are_written_into_the_header_block() -> None:
    raw = _tar(_file("plain"), _file("ids", uid=1 << 21, gid=3_000_000), _file("late", mtime=1 << 33))
    assert _main_block_of(raw, b"ids").uid == 0  # tarfile leaves the field 0, the value in a PAX record
    out, plan = normalize(raw)
    assert not plan.passes_through and plan.changes() == ["headers rewritten for 'ids', 'late'"]
    ids, late = _main_block_of(out, b"ids"), _main_block_of(out, b"late")
    assert (ids.uid, ids.gid, late.mtime.seconds) == (1 << 21, 3_000_000, 1 << 33)
    # GNU base-256 (the high bit set) where octal does not fit, as nydus-image's tar reader reads it.
    ids_block = out[out.index(b"ids\0") :][:512]
    assert ids_block[108] & 0x80 and ids_block[116] & 0x80
    assert trees.tar_entries(out) == trees.tar_entries(raw)  # readers of the PAX records see no change
    assert _scan_layer(_tar(_file("fits", uid=70_000, mtime=1 << 32))).passes_through  # octal holds it
    # A directory moved before its first child keeps them too.
    out, plan = normalize(_tar(_file("d/x"), _dir("d", uid=1 << 22, mtime=1 << 34)))
    moved = _main_block_of(out, b"d/")
    assert plan.moved_before and (moved.uid, moved.mtime.seconds) == (1 << 22, 1 << 34)


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_file("old", mtime=-1), "'old': mtime -1 is before 1970"),
        (_file("wide", gid=1 << 32), "'wide': gid 4294967296 does not fit RAFS's 32-bit gid"),
        (_file("d/.wh.\udcff", b""), "'d/.wh.\\xff' is a whiteout of a name that is not UTF-8"),
        (_file("x", pax_headers={"SCHILY.xattr.user.k": "a\nb"}), "PAX record 'SCHILY.xattr.user.k' holds a"),
    ],
    ids=["pre-1970", "gid-33-bits", "non-utf8-whiteout", "newline-in-pax"],
)
def test_what_nydus_image_cannot_hold_is_refused_naming_the_entry(
    member: tuple[tarfile.TarInfo, bytes], reason: str
) -> None:
    with pytest.raises(tn.UnsupportedEntry, match=re.escape(reason)):
        tn.scan_layer(io.BytesIO(_tar(_file("first"), member)), check=nydus_tar.refuse_what_nydus_cannot_hold)
    _, stopped, refusal = _one_pass(_tar(_file("first"), member))
    assert stopped == "refused while feeding" and isinstance(refusal, str) and reason.split(":")[0] in refusal


def test_subsecond_mtimes_are_counted_as_a_loss() -> None:
    plan = _scan_layer(_tar(_file("a", mtime=1.25), _file("b"), _file("c", mtime=2.125)))
    assert isinstance(plan, tn.Normalisation) and plan.passes_through  # seconds are in the header block
    assert (plan.subsecond_mtimes, plan.subsecond_examples) == (2, ["'a'", "'c'"])
    (loss,) = nydus_tar.losses(plan)
    assert loss.startswith("2 sub-second mtime(s) truncated to seconds ('a', 'c'): nydus-image 2.2.0")
    # Python's tarfile rounds the header block's seconds (the PAX record keeps 3.75): the block is rewritten.
    rounded = _tar(_file("up", mtime=3.75))
    assert _main_block_of(rounded, b"up").mtime.seconds == 4
    out, plan = normalize(rounded)
    assert plan.carried == {0} and _main_block_of(out, b"up").mtime.seconds == 3


def test_hardlinks_go_to_the_chains_first_entry_with_its_attributes() -> None:
    first = _file("h/a", b"shared\n", mode=0o640, uid=7, mtime=1_600_000_000)
    raw = _tar(
        first,
        (tar_info("h/b", tarfile.LNKTYPE, linkname="h/a", mode=0o640, uid=7, mtime=1_600_000_000), None),
        (tar_info("h/c", tarfile.LNKTYPE, linkname="h/b", mode=0o640, uid=7, mtime=1_600_000_000), None),
        (tar_info("h/own", tarfile.LNKTYPE, linkname="./h/a", mode=0o777, uid=9), None),
    )
    out, plan = normalize(raw)
    assert plan.changes() == ["headers rewritten for 'h/c', 'h/own'"]
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        links = {m.name: (m.linkname, m.mode, m.uid, m.mtime) for m in tar if m.islnk()}
    assert links == {name: ("h/a", 0o640, 7, 1_600_000_000) for name in ("h/b", "h/c", "h/own")}
    assert trees.apply_layers([out]) == trees.apply_layers([raw])
    _, stopped, _ = _one_pass(raw)
    assert stopped == "'h/c' is a hardlink to a hardlink"


@pytest.mark.parametrize(
    ("after", "data"),
    [(b"", False), (bytes(10_000), False), (b"not a tar " * 300, True), (_tar(_file("appended")), True)],
    ids=["nothing", "zero-padding", "not-a-tar", "appended-archive"],
)
def test_nothing_after_the_end_of_archive_blocks_reaches_the_builder(after: bytes, data: bool) -> None:
    archive = _tar(_dir("d"), _file("d/f"))
    raw = archive + after
    end = through_end_blocks(raw)
    assert end == through_end_blocks(archive) and raw.startswith(end)
    assert b"".join(builder_compatible_tar(io.BytesIO(raw))) == end
    forwarded, stopped, plan = _one_pass(raw)
    assert stopped is None and forwarded == end
    assert isinstance(plan, tn.Normalisation) and plan.passes_through  # the builder had all it needs
    assert (plan.trailing_size, plan.trailing_data) == (len(raw) - len(end), data)
    assert bool(nydus_tar.losses(plan)) == data


def test_a_path_made_a_directory_again_after_a_non_directory_is_refused_naming_it() -> None:
    """Found by the property test above: `a/b` then file `a` then directory `a` leaves `a` empty when applied
    in order (lower layers' `a/...` too), which the last entry alone, merged by nydus-image, does not say."""
    layer = _tar(_file("a/b"), _file("a"), _dir("a"))
    with pytest.raises(tn.UnsupportedEntry, match="'a' is a non-directory that a later entry of the layer"):
        tn.scan_layer(io.BytesIO(layer))
    tn.scan_layer(io.BytesIO(_tar(_dir("a"), _file("a/b"), _dir("a", mode=0o700))))  # dir over dir: fine


def test_entry_labels_escape_each_byte_once() -> None:
    """A name that is not UTF-8 reads as the bytes it has (one backslash), a control character escaped."""
    assert tn.entry_label(b"dir/n\xff") == "'dir/n\\xff'"
    assert tn.entry_label(b"a\nb") == "'a\\nb'"
    assert tn.entry_label("é".encode()) == "'é'"
