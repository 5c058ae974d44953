"""Nydus images equal to their layers applied (issue 11), with the real nydus-image 2.2.0.

Each test converts raw layer tars, merges them and compares the merged bootstrap's tree (`check --verbose`
plus `inspect`, file data read back from the blobs) with the layers applied with OCI semantics.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import io
import json
import logging
import random
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from accel import constants as mt
from accel import digest as dg
from accel import tarstream
from accel.drivers import ConvertedLayer, LayerInput, PlatformDraft, load_driver, reader_for
from accel.drivers.nydus import NydusDriver
from accel.drivers.nydus import driver as nydus_driver
from accel.drivers.nydus.builder import run_builder
from accel.drivers.nydus.facts import facts_of
from accel.drivers.nydus.tar import builder_compatible_tar
from accel.drivers.reader import LayerReader
from accel.errors import DriverError, InvalidImage
from accel.model import SourceLayer
from accel.oci import Descriptor, ImageConfig
from accel.store import ContentStore
from accel.trees import apply_entries
from tests.harness import imagegen, trees
from tests.harness import nydus as nh
from tests.harness.imagegen import pax_size_layer

pytestmark = [
    nh.needs_builder,
    pytest.mark.nydus,
]

MTIME = 1_700_000_000


def tar_of(*entries: tuple[str, bytes | str | None, dict[str, Any]]) -> bytes:
    """A PAX tar written in exactly this order: (name, content or link target or None for a dir, attrs)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content, attrs in entries:
            info = tarfile.TarInfo(name)
            info.mtime = MTIME
            data = None
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif isinstance(content, str):
                info.type, info.linkname = attrs.pop("kind", tarfile.SYMTYPE), content
            else:
                info.size, data = len(content), io.BytesIO(content)
            for key, value in attrs.items():
                setattr(info, key, value)
            tar.addfile(info, data)
    return buffer.getvalue()


def file(name: str, content: bytes = b"data\n", **attrs: Any) -> tuple[str, bytes, dict[str, Any]]:
    return name, content, attrs


def directory(name: str, **attrs: Any) -> tuple[str, None, dict[str, Any]]:
    return name, None, attrs


def link(name: str, target: str, **attrs: Any) -> tuple[str, str, dict[str, Any]]:
    return name, target, attrs


def hardlink(name: str, target: str) -> tuple[str, str, dict[str, Any]]:
    return name, target, {"kind": tarfile.LNKTYPE}


def _inputs(store: ContentStore, tars: list[bytes], *, gzipped: bool = False) -> list[LayerInput]:
    layers = []
    for raw in tars:
        blob = gzip.compress(raw, mtime=0) if gzipped else raw
        digest = store.put_bytes(blob)
        media_type = mt.OCI_LAYER_GZIP if gzipped else mt.OCI_LAYER_TAR
        descriptor = Descriptor(media_type=media_type, digest=digest, size=len(blob))
        layers.append(LayerInput(descriptor=descriptor, diff_id=dg.of_bytes(raw), store=store))
    return layers


def _draft(store: ContentStore, layers: list[ConvertedLayer], diff_ids: list[str]) -> PlatformDraft:
    config = ImageConfig.parse(
        json.dumps(
            {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
        ).encode()
    )
    manifest = b'{"schemaVersion":2}'
    return PlatformDraft(
        source_manifest=Descriptor.of(mt.OCI_MANIFEST, manifest),
        source_reference="registry.local/fidelity:1",
        config=config,
        layers=tuple(layers),
    )


def convert_and_merge(
    store: ContentStore, tmp_path: Path, tars: list[bytes], *, per_layer: bool = True, **options: Any
) -> tuple[dict[str, dict[str, object]], dict[str, dict[str, object]]]:
    """(merged tree of the converted image, the layers applied): equal when the conversion is faithful.

    With `per_layer`, each layer's own bootstrap and blob must also unpack to that layer's tree.
    """
    driver = load_driver("nydus", options)
    inputs = _inputs(store, tars, gzipped=bool(options.get("oci_ref")))
    converted = [driver.convert_layer(layer) for layer in inputs]
    if options.get("oci_ref"):  # zran data lives in the gzip source blobs: `unpack` cannot read it
        per_layer = False
    for layer, result in zip(tars, converted, strict=True):
        if not per_layer or any(".wh." in path for path in trees.tar_entries(layer)):
            continue  # whiteouts act on lower layers: such a layer is only comparable merged
        unpacked = nh.unpack_layer(store, result.descriptor.digest, facts_of(result).bootstrap, tmp_path)
        assert nh.compare_layer(layer, unpacked) == []
    draft = driver.finish(_draft(store, converted, [i.diff_id for i in inputs]), store)
    merged = tmp_path / "merged.boot"
    merged.write_bytes(store.read_bytes(facts_of(draft.layers[-1]).bootstrap))
    nh.check(merged, nh.blob_dir(store), tmp_path)
    return nh.merged_tree(store, merged), nh.expected_merged_tree(tars)


# --- sparse files ----------------------------------------------------------------------------------


def _gnu_tar() -> str | None:
    tar = shutil.which("tar")
    if tar is None:
        return None
    version = subprocess.run([tar, "--version"], capture_output=True, text=True, check=False).stdout
    return tar if "GNU tar" in version else None


GNU_TAR = _gnu_tar()
SPARSE_SIZE = 16 << 20


def sparse_tar(tmp_path: Path, *format_args: str) -> bytes:
    """`sp/sparse16m` (16 MiB, two data regions) and `sp/after`, archived by GNU tar with `format_args`."""
    root = tmp_path / "sparse-src"
    (root / "sp").mkdir(parents=True, exist_ok=True)
    with (root / "sp" / "sparse16m").open("wb") as f:
        f.seek(1 << 20)
        f.write(b"hello sparse " * 700)
        f.seek(9 << 20)
        f.write(b"world " * 900)
        f.truncate(SPARSE_SIZE)
    (root / "sp" / "after").write_bytes(b"after the sparse file\n")
    archive = tmp_path / "sparse.tar"
    assert GNU_TAR is not None
    subprocess.run(
        [GNU_TAR, "--sparse", *format_args, "--mtime=@1700000000", "--owner=0", "--group=0",
         "-C", str(root), "-cf", str(archive), "sp"],
        check=True,
    )  # fmt: skip
    raw = archive.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        member = tar.getmember("sp/sparse16m")
        assert member.sparse, f"{format_args}: GNU tar did not store a sparse file (no holes on this fs?)"
    return raw


@pytest.mark.skipif(GNU_TAR is None, reason="GNU tar writes the sparse archives")
@pytest.mark.parametrize(
    "format_args",
    [
        ("--format=posix", "--sparse-version=1.0"),
        ("--format=posix", "--sparse-version=0.1"),
        ("--format=posix", "--sparse-version=0.0"),
        ("--format=gnu",),
    ],
    ids=["pax-1.0", "pax-0.1", "pax-0.0", "gnu-old"],
)
def test_sparse_files_are_expanded(format_args: tuple[str, ...], store: ContentStore, tmp_path: Path) -> None:
    base = tar_of(directory("sp", mode=0o750), file("sp/base", b"base\n"))
    actual, expected = convert_and_merge(store, tmp_path, [base, sparse_tar(tmp_path, *format_args)])
    assert actual["sp/sparse16m"]["size"] == SPARSE_SIZE
    assert not any("GNUSparseFile" in path for path in actual)
    assert actual == expected


@pytest.mark.parametrize("form", imagegen.SPARSE_FORMS)
def test_hand_written_sparse_forms_are_expanded(
    form: imagegen.SparseForm, store: ContentStore, tmp_path: Path
) -> None:
    # 30 regions: the old GNU form needs extension blocks, the PAX 1.0 map more than one line.
    regions = tuple((i * 300_000 + 5, bytes([97 + i % 26]) * (4096 + i)) for i in range(30))
    sparse = imagegen.SparseFile("sp/many", 9_500_000, regions)
    layer = imagegen.sparse_tar(sparse, form, after={"sp/after": b"after\n"})
    actual, expected = convert_and_merge(store, tmp_path, [tar_of(file("base")), layer])
    assert actual["sp/many"]["sha256"] == dg.of_bytes(sparse.content())
    assert actual == expected


# --- directories the upper layer does not carry -----------------------------------------------------


def test_implicit_parent_keeps_the_lower_directory(store: ContentStore, tmp_path: Path) -> None:
    lower = tar_of(
        directory("opt", mode=0o755),
        directory("opt/app", mode=0o750, uid=1001, gid=1001, mtime=1_600_000_000),
        file("opt/app/a"),
        directory("etc", mode=0o755, mtime=1_650_000_000),
        directory("etc/apt", mode=0o755, mtime=1_650_000_001),
    )
    upper = tar_of(file("opt/app/b"), file("etc/apt/sources.list"), file("new/dir/c"))
    actual, expected = convert_and_merge(store, tmp_path, [lower, upper])
    assert actual["opt/app"] == {
        "kind": "dir", "mode": 0o750, "uid": 1001, "gid": 1001, "mtime": 1_600_000_000,
    }  # fmt: skip
    assert actual["etc/apt"]["mtime"] == 1_650_000_001
    assert actual == expected


def test_implicit_parent_keeps_the_lower_directory_with_oci_ref(store: ContentStore, tmp_path: Path) -> None:
    lower = tar_of(directory("opt", mode=0o700, uid=5, mtime=1_600_000_000), file("opt/a"))
    upper = tar_of(file("opt/b"), file("opt/sub/c"))
    driver = load_driver("nydus", {"oci_ref": True})
    inputs = _inputs(store, [lower, upper], gzipped=True)
    converted = [driver.convert_layer(layer) for layer in inputs]
    draft = driver.finish(_draft(store, converted, [i.diff_id for i in inputs]), store)
    merged = tmp_path / "merged.boot"
    merged.write_bytes(store.read_bytes(facts_of(draft.layers[-1]).bootstrap))
    # zran chunks live inside the gzip streams (no per-chunk reads here): metadata and listing only.
    assert nh.check(merged, nh.blob_dir(store), tmp_path)["blobs"] == [
        dg.hex_of(i.descriptor.digest) for i in inputs
    ]
    assert set(nh.checked_inodes(merged, nh.blob_dir(store))) == {
        "opt",
        "opt/a",
        "opt/b",
        "opt/sub",
        "opt/sub/c",
    }
    (opt,) = nh.inspect_dir(merged, "", ["opt"])
    assert "Permissions:        40700" in opt and "UID:                5" in opt
    assert "Mtime:              1600000000" in opt


def test_oci_ref_refuses_layers_that_need_normalising(store: ContentStore) -> None:
    layer = _inputs(store, [tar_of(file("late/file"), directory("late"))], gzipped=True)[0]
    with pytest.raises(DriverError, match=r"1 directory entries moved .*convert without oci_ref"):
        load_driver("nydus", {"oci_ref": True}).convert_layer(layer)


def test_implicit_parent_after_whiteout_and_opaque_gets_defaults(store: ContentStore, tmp_path: Path) -> None:
    first = tar_of(
        directory("gone", mode=0o700, uid=7),
        file("gone/x"),
        directory("keep", mode=0o711, uid=8),
        directory("keep/sub", mode=0o750, uid=9),
        file("keep/sub/y"),
        directory("stays", mode=0o701, uid=10, mtime=1_500_000_000),
    )
    second = tar_of(file(".wh.gone", b""), file("keep/.wh..wh..opq", b""), file("stays/z"))
    third = tar_of(file("gone/again"), file("keep/sub/new"), file("stays/w"))
    actual, expected = convert_and_merge(store, tmp_path, [first, second, third])
    assert actual["gone"]["mode"] == 0o755 and actual["gone"]["uid"] == 0
    assert actual["keep"]["mode"] == 0o711 and actual["keep/sub"]["uid"] == 0
    assert actual["stays"]["mode"] == 0o701 and actual["stays"]["mtime"] == 1_500_000_000
    assert actual == expected


def test_whiteouts_in_the_first_layer_are_no_files(store: ContentStore, tmp_path: Path) -> None:
    first = tar_of(file(".wh.q", b""), directory("d", mode=0o700), file("d/.wh..wh..opq", b""), file("d/f"))
    actual, expected = convert_and_merge(store, tmp_path, [first, tar_of(file("g"))])
    assert sorted(actual) == ["d", "d/f", "g"]
    assert actual == expected


# --- a directory replaced by a non-directory, then a directory again (case H) --------------------------


def _replacement(kind: str) -> bytes:
    """A layer replacing `d` with a non-directory of `kind`."""
    entries = {
        "symlink": [link("d", "a")],
        "file": [file("d", b"a file now\n")],
        "hardlink": [file("t", b"linked\n"), hardlink("d", "t")],
        "char-device": [link("d", "", kind=tarfile.CHRTYPE, devmajor=1, devminor=3)],
        "fifo": [link("d", "", kind=tarfile.FIFOTYPE)],
    }
    return tar_of(*entries[kind])


@pytest.mark.parametrize("top", ["implied", "explicit"])
@pytest.mark.parametrize("kind", ["symlink", "file", "hardlink", "char-device", "fifo"])
def test_a_directory_back_over_a_replaced_one_starts_empty(
    kind: str, top: str, store: ContentStore, tmp_path: Path
) -> None:
    """merge keeps a replaced directory's children under the non-directory; the layer that makes the path a
    directory again must not bring them back (overlayfs and containerd show its own entries only)."""
    lower = tar_of(directory("d", mode=0o750), file("d/x", b"hidden\n"), directory("d/sub"), file("d/sub/y"))
    again = {
        "implied": tar_of(file("d/b/f", b"new\n")),
        "explicit": tar_of(directory("d", mode=0o700, uid=5), file("d/c", b"new\n")),
    }[top]
    actual, expected = convert_and_merge(store, tmp_path, [lower, _replacement(kind), again])
    assert not {"d/x", "d/sub", "d/sub/y"} & actual.keys()
    if top == "explicit":
        assert actual["d"] == {"kind": "dir", "mode": 0o700, "uid": 5, "gid": 0, "mtime": MTIME}
    assert actual == expected


def test_a_directory_back_over_a_replaced_one_starts_empty_with_oci_ref(
    store: ContentStore, tmp_path: Path
) -> None:
    tars = [
        tar_of(directory("p"), file("p/s", b"sibling\n"), directory("p/d"), file("p/d/x", b"hidden\n")),
        # A file too: 2.2.0's merge leaves a zran layer without file data out of its blob table.
        tar_of(link("p/d", "../a"), file("p/t", b"data\n")),
        tar_of(file("p/d/b", b"new\n")),
    ]
    driver = load_driver("nydus", {"oci_ref": True})
    inputs = _inputs(store, tars, gzipped=True)
    converted = [driver.convert_layer(layer) for layer in inputs]
    draft = driver.finish(_draft(store, converted, [i.diff_id for i in inputs]), store)
    merged = tmp_path / "merged.boot"
    merged.write_bytes(store.read_bytes(facts_of(draft.layers[-1]).bootstrap))
    # The emptying patch has no blob: the merged bootstrap still references the three gzip blobs only.
    assert nh.check(merged, nh.blob_dir(store), tmp_path)["blobs"] == [
        dg.hex_of(i.descriptor.digest) for i in inputs
    ]
    actual = nh.merged_tree(store, merged, contents=False)
    assert sorted(actual) == ["p", "p/d", "p/d/b", "p/s", "p/t"]
    assert actual == nh.expected_merged_tree(tars, contents=False)


# --- entry order that crashes nydus-image 2.2.0 -------------------------------------------------------


def test_directory_after_its_child(store: ContentStore, tmp_path: Path) -> None:
    base = tar_of(file("base"))
    layer = tar_of(
        file("late/file", b"late\n"),
        directory("late", mode=0o750, uid=3, mtime=1_400_000_000),
        file("z", b"z\n"),
        file("deep/a/b/c", b"c\n"),
        directory("deep/a", mode=0o701),
        directory("deep", mode=0o711),
    )
    actual, expected = convert_and_merge(store, tmp_path, [base, layer])
    assert actual["late"]["mode"] == 0o750 and actual["deep/a"]["mode"] == 0o701
    assert actual == expected


def test_repeated_path_last_entry_wins(store: ContentStore, tmp_path: Path) -> None:
    base = tar_of(file("base"))
    layer = tar_of(
        file("a", b"first\n"),
        file("a", b"second\n", mode=0o600),
        file("b", b"b\n"),
        directory("d", mode=0o700),
        file("d/x", b"x\n"),
        directory("d", mode=0o750),
        file("c", b"c\n"),
    )
    actual, expected = convert_and_merge(store, tmp_path, [base, layer])
    assert actual["a"]["mode"] == 0o600 and actual["d"]["mode"] == 0o750
    assert actual == expected


# --- hostile entries -------------------------------------------------------------------------------


def _convert_one(store: ContentStore, raw: bytes) -> ConvertedLayer:
    return load_driver("nydus").convert_layer(_inputs(store, [raw])[0])


@pytest.mark.parametrize(
    ("entries", "named"),
    [
        ([file("../escape")], "'../escape'"),
        ([file("a/../../escape")], "'a/../../escape'"),
        ([file("a"), hardlink("l", "../a")], "'l'"),
        ([file("a"), hardlink("l", "/../../a")], "'l'"),
        ([hardlink("l", "etc/passwd")], "'l'"),
        ([hardlink("l", "later"), file("later")], "'l'"),
        ([link("evil", "../../.."), file("evil/x")], "'evil/x'"),
        ([link("evil", "/"), file("evil/etc/x")], "'evil/etc/x'"),
    ],
    ids=[
        "dotdot",
        "dotdot-inside",
        "link-dotdot",
        "link-abs-dotdot",
        "link-missing",
        "link-forward",
        "symlink-escape",
        "symlink-root",
    ],
)
def test_hostile_entries_are_refused_naming_the_entry(
    entries: list[tuple[str, Any, dict[str, Any]]], named: str, store: ContentStore
) -> None:
    with pytest.raises(InvalidImage, match=named) as caught:
        _convert_one(store, tar_of(*entries))
    assert "nydus-image" not in str(caught.value)
    assert list((store.root / "ingest").iterdir()) == []


def test_absolute_and_dotdot_names_inside_the_root_are_normalised(
    store: ContentStore, tmp_path: Path
) -> None:
    layer = tar_of(
        directory("/abs", mode=0o750),
        file("/abs/file", b"abs\n"),
        file("abs/x/../y", b"y\n"),
        hardlink("abs/link", "/abs/file"),
    )
    # The harness applies names literally (no `..` resolution), so only the expectations below count.
    actual, _ = convert_and_merge(store, tmp_path, [tar_of(file("base")), layer], per_layer=False)
    assert sorted(actual) == ["abs", "abs/file", "abs/link", "abs/y", "base"]
    assert actual["abs"]["mode"] == 0o750
    assert actual["abs/y"]["sha256"] == dg.of_bytes(b"y\n")
    assert actual["abs/link"]["kind"] == "hardlink"
    assert actual["abs/link"]["sha256"] == dg.of_bytes(b"abs\n")


# --- builder failures ------------------------------------------------------------------------------

_PANIC = (
    "[2026-01-01 00:00:00] ERROR [lib.rs:130] thread 'main' panicked at "
    "'assertion failed: self.offset > self.mapping.info.meta_offset': /src/direct_v6.rs:848\n"
    "   0: log_panics::Config::install_panic_hook\n   1: std::panicking::panic_with_hook\n"
    "  15: main\n"
)


def _fake_builder(tmp_path: Path, behaviour: str) -> Path:
    script = tmp_path / "fake-nydus-image"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then echo "Version: 2.2.0"; exit 0; fi\n'
        f"cat <<'EOF'\n{_PANIC}EOF\n"
        f"{behaviour}\n"
    )
    script.chmod(0o755)
    return script


@pytest.mark.parametrize(("behaviour", "how"), [("exit 101", "exit code 101"), ("kill -ABRT $$", "aborted")])
def test_builder_panics_are_one_line_without_a_backtrace(
    behaviour: str, how: str, store: ContentStore, tmp_path: Path
) -> None:
    driver = NydusDriver(load_driver("nydus", {"builder": str(_fake_builder(tmp_path, behaviour))}).options)
    layer = _inputs(store, [tar_of(file("a"))])[0]
    with pytest.raises(DriverError) as caught:
        driver.convert_layer(layer)
    message = str(caught.value)
    assert "\n" not in message
    assert how in message and dg.short(layer.descriptor.digest) in message
    assert "assertion failed: self.offset > self.mapping.info.meta_offset" in message
    assert "panic_with_hook" not in message and "log_panics" not in message


# --- one read per layer unless it needs normalising ----------------------------------------------------


class _Conversions:
    """Converts one layer in one pass (the driver's default) or forced through two, counting layer reads
    and recording every chunk the one pass offered nydus-image."""

    def __init__(self, store: ContentStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.store = store
        self.reads = 0
        self.forwarded = bytearray()
        open_tar = LayerInput.open_tar

        @contextlib.contextmanager
        def counting_open_tar(layer: LayerInput, check_diff_id: bool = True) -> Iterator[BinaryIO]:
            self.reads += 1
            with open_tar(layer, check_diff_id) as stream:
                yield stream

        def recording_run_builder(*args: Any, chunks: Iterable[bytes] | None = None, **kwargs: Any) -> None:
            if chunks is not None:
                chunks = self._recorded(chunks)
            run_builder(*args, chunks=chunks, **kwargs)

        monkeypatch.setattr(LayerInput, "open_tar", counting_open_tar)
        monkeypatch.setattr(nydus_driver, "run_builder", recording_run_builder)

    def _recorded(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.forwarded += chunk  # taken from the feed: written to the builder's FIFO next
            yield chunk

    def convert(self, raw: bytes, *, single_pass: bool = True, **options: Any) -> ConvertedLayer:
        """`single_pass=False`: as the driver did before the single pass (every layer scanned, then built
        from a second read), the reference the one pass must equal."""
        self.reads = 0
        self.forwarded.clear()
        driver = load_driver("nydus", options)
        assert isinstance(driver, NydusDriver)
        if not single_pass:
            # As if the one pass had given up before feeding the builder anything.
            driver._build_in_one_pass = lambda *_: (None, False)  # type: ignore[method-assign]
        return driver.convert_layer(_inputs(self.store, [raw], gzipped=True)[0])

    def refusal(self, raw: bytes, *, single_pass: bool = True, **options: Any) -> str:
        with pytest.raises(InvalidImage) as caught:
            self.convert(raw, single_pass=single_pass, **options)
        assert list((self.store.root / "ingest").iterdir()) == []
        return str(caught.value)


@pytest.fixture
def conversions(store: ContentStore, monkeypatch: pytest.MonkeyPatch) -> _Conversions:
    return _Conversions(store, monkeypatch)


def _same_layer(one: ConvertedLayer, other: ConvertedLayer) -> None:
    assert one.descriptor == other.descriptor  # the blob (with the bootstrap inside)
    assert one.facts == other.facts  # bootstrap, TOC and directory table digests


def _normalised_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if "normalised for nydus-image" in r.getMessage()]
    caplog.clear()
    return lines


def test_a_layer_that_needs_no_normalising_is_read_once(
    conversions: _Conversions, caplog: pytest.LogCaptureFixture
) -> None:
    big = bytes(range(256)) * 9000  # a few feed chunks; the FIFO fix-up and PAX records on the way
    layer = tar_of(
        directory("etc", mode=0o750),
        file("etc/conf", b"conf\n", pax_headers={"SCHILY.xattr.user.note": "kept"}),
        file("etc/big", big),
        link("etc/link", "conf"),
        hardlink("etc/hard", "etc/conf"),
        file("deep/" + "long" * 40 + "/name", b"long name\n"),
        ("run/initctl", b"", {"type": tarfile.FIFOTYPE}),  # tarfile leaves its device numbers blank
    )
    caplog.set_level(logging.INFO, logger="accel.drivers.nydus")
    one_pass = conversions.convert(layer)
    assert conversions.reads == 1
    assert conversions.forwarded == b"".join(builder_compatible_tar(io.BytesIO(layer)))
    two_passes = conversions.convert(layer, single_pass=False)
    assert conversions.reads == 2
    _same_layer(one_pass, two_passes)
    assert _normalised_lines(caplog) == []


def _without_end_marker(raw: bytes) -> bytes:
    while raw.endswith(tarstream.ZERO_BLOCK):
        raw = raw[: -len(tarstream.ZERO_BLOCK)]
    return raw


_SPARSE = imagegen.SparseFile("sp/s", 3_000_000, tuple((i * 100_000 + 7, b"s" * 5000) for i in range(25)))


@pytest.mark.parametrize(
    ("layer", "change"),
    [
        (tar_of(file("a", b"first\n"), file("b"), file("a", b"second\n")), "1 repeated path(s) dropped"),
        (tar_of(file("d/x"), directory("d", mode=0o700)), "1 directory entries moved before their children"),
        (imagegen.sparse_tar(_SPARSE, "pax-1.0", after={"z": b"z\n"}), "headers rewritten for 'sp/s'"),
        (imagegen.sparse_tar(_SPARSE, "gnu-old", after={"z": b"z\n"}), "headers rewritten for 'sp/s'"),
        (_without_end_marker(tar_of(file("a"), directory("b"))), None),
    ],
    ids=["repeated-path", "directory-after-child", "sparse-pax-1.0", "sparse-gnu-old", "no-end-marker"],
)
def test_a_layer_that_needs_normalising_gives_the_two_pass_blob(
    layer: bytes, change: str | None, conversions: _Conversions, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="accel.drivers.nydus")
    one_pass = conversions.convert(layer)
    assert conversions.reads == 2  # the pass that found the change, then the normalised one
    one_pass_log = _normalised_lines(caplog)
    two_passes = conversions.convert(layer, single_pass=False)
    assert conversions.reads == 2
    _same_layer(one_pass, two_passes)
    assert one_pass_log == _normalised_lines(caplog)
    assert [change in line for line in one_pass_log] == ([True] if change else [])


def test_a_size_only_in_a_pax_record_goes_to_the_builder_as_before(conversions: _Conversions) -> None:
    layer = pax_size_layer()
    one_pass = conversions.convert(layer)
    assert conversions.reads == 2  # the one pass stops at `big` (its run is discarded), then as before
    _same_layer(one_pass, conversions.convert(layer, single_pass=False))


@pytest.mark.parametrize(
    "entries",
    [
        [file("../escape")],
        [file("a"), hardlink("l", "/../../a")],
        [hardlink("l", "etc/passwd")],
        [file("a"), hardlink("l", "later"), file("later")],
        [file("a"), hardlink("l", "a"), file("a")],  # the target is replaced after the link
        [directory("d"), hardlink("l", "d")],
        [link("evil", "/"), file("evil/etc/x")],
        [file("f"), file("f/x")],
        [file("d/x"), file("d")],  # an entry below what the layer later makes a file
    ],
    ids=[
        "dotdot",
        "link-dotdot",
        "link-missing",
        "link-forward",
        "link-replaced",
        "link-to-dir",
        "below-symlink",
        "below-file",
        "below-later-file",
    ],
)
def test_refusals_are_the_two_pass_refusals(
    entries: list[tuple[str, Any, dict[str, Any]]], conversions: _Conversions
) -> None:
    layer = tar_of(file("lead", b"\1" * 300_000), *entries)
    message = conversions.refusal(layer)
    assert message == conversions.refusal(layer, single_pass=False)
    assert "nydus-image" not in message


@pytest.mark.parametrize(
    ("offender", "entries"),
    [
        (b"escape-me", [file("x/../../escape-me")]),
        (b"not-yet", [hardlink("link", "not-yet"), file("not-yet")]),
        (b"nowhere", [hardlink("link", "nowhere")]),
    ],
    ids=["dotdot", "link-forward", "link-missing"],
)
def test_nydus_image_never_gets_the_header_of_a_refused_entry(
    offender: bytes, entries: list[tuple[str, Any, dict[str, Any]]], conversions: _Conversions
) -> None:
    layer = tar_of(file("lead", b"\1" * 300_000), *entries)
    message = conversions.refusal(layer)
    assert offender.decode() in message
    forwarded = bytes(conversions.forwarded)
    assert forwarded.startswith(layer[:512]) and len(forwarded) > 200_000  # the entry before it went on
    assert offender not in forwarded


def _failing_builder(tmp_path: Path, *, reads: bool) -> Path:
    """A builder that reads its whole input (or none of it), counts its runs and fails like 2.2.0 does."""
    script = tmp_path / "failing-nydus-image"
    consume = 'for last; do :; done; cat "$last" > /dev/null\n' if reads else ""
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then echo "Version: 2.2.0"; exit 0; fi\n'
        f"echo run >> {tmp_path / 'runs'}\n"
        f"{consume}"
        "echo 'Error: build failed'; echo 'Caused by:'; echo '    0: numeric field was not a number'\n"
        "exit 1\n"
    )
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("reads", [True, False], ids=["reads-its-input", "reads-nothing"])
def test_builder_failures_keep_their_message_and_a_refusal_goes_first(
    reads: bool, conversions: _Conversions, tmp_path: Path
) -> None:
    builder = str(_failing_builder(tmp_path, reads=reads))
    runs = tmp_path / "runs"
    plain = tar_of(file("a", b"a\n"), directory("d"))
    with pytest.raises(DriverError) as one_pass:
        conversions.convert(plain, builder=builder)
    with pytest.raises(DriverError) as two_passes:
        conversions.convert(plain, builder=builder, single_pass=False)
    assert str(one_pass.value) == str(two_passes.value)
    assert "failed with exit code 1:\nError: build failed" in str(one_pass.value)
    # The scan wins over the builder's failure: a refusal, or the normalised build (which fails again).
    hostile = tar_of(file("a"), link("evil", "/"), file("evil/x"))
    assert "'evil/x' lies below 'evil'" in conversions.refusal(hostile, builder=builder)
    runs.unlink()
    with pytest.raises(DriverError, match="failed with exit code 1"):
        conversions.convert(tar_of(file("d/x"), directory("d")), builder=builder)
    assert runs.read_text() == "run\nrun\n"


# --- legal layers past the plain ustar form (issue 20) ------------------------------------------------


def gnu_tar_layer(tmp_path: Path, *format_args: str) -> bytes:
    """`g/` and `g/f` owned by uid 4194304 / gid 3000000 (past ustar's 2^21), archived by GNU tar."""
    assert GNU_TAR is not None
    root = tmp_path / "gnu-src"
    (root / "g").mkdir(parents=True, exist_ok=True)
    (root / "g" / "f").write_bytes(b"written by GNU tar\n")
    archive = tmp_path / "gnu.tar"
    subprocess.run(
        [GNU_TAR, *format_args, "--owner=big:4194304", "--group=big:3000000",
         "-C", str(root), "-cf", str(archive), "g"],
        check=True,
    )  # fmt: skip
    return archive.read_bytes()


needs_gnu_tar = pytest.mark.skipif(GNU_TAR is None, reason="GNU tar writes these archives")


@pytest.mark.parametrize(
    ("writer", "expected"),
    [
        ("tarfile-ids", {"x": {"uid": 1 << 21, "gid": 3_000_000, "mtime": MTIME}}),
        ("tarfile-mtime", {"x": {"uid": 0, "gid": 0, "mtime": 1 << 33}}),
        ("gnu-tar-posix", {"g/f": {"uid": 4194304, "gid": 3_000_000, "mtime": 1 << 33}}),
        ("gnu-tar-gnu", {"g/f": {"uid": 4194304, "gid": 3_000_000, "mtime": 1 << 33}}),
    ],
)
def test_owner_and_mtime_past_ustar_ranges_are_kept(
    writer: str, expected: dict[str, dict[str, int]], store: ContentStore, tmp_path: Path
) -> None:
    """Case A: PAX `uid`/`gid` >= 2^21 and `mtime` >= 2^33 (header fields 0) used to become 0."""
    if writer.startswith("gnu-tar") and GNU_TAR is None:
        pytest.skip("GNU tar writes these archives")
    layer = {
        "tarfile-ids": lambda: tar_of(file("x", uid=1 << 21, gid=3_000_000)),
        "tarfile-mtime": lambda: tar_of(file("x", mtime=1 << 33)),
        "gnu-tar-posix": lambda: gnu_tar_layer(tmp_path, "--format=posix", "--mtime=@8589934592"),
        "gnu-tar-gnu": lambda: gnu_tar_layer(tmp_path, "--format=gnu", "--mtime=@8589934592"),
    }[writer]()
    actual, expected_tree = convert_and_merge(store, tmp_path, [tar_of(file("base")), layer])
    for path, values in expected.items():
        assert {key: actual[path][key] for key in values} == values
    assert actual == expected_tree


@pytest.mark.parametrize(
    ("writer", "named", "reason"),
    [
        ("tarfile-pre-1970", "'x'", "mtime -86400 is before 1970"),
        ("gnu-tar-pre-1970", "'g/'", "mtime -86400 is before 1970"),
        ("tarfile-uid-33-bits", "'x'", "uid 4294967296 does not fit RAFS's 32-bit uid"),
    ],
)
def test_owner_and_mtime_rafs_cannot_hold_are_refused_naming_the_entry(
    writer: str, named: str, reason: str, store: ContentStore, tmp_path: Path
) -> None:
    """Case A: a pre-1970 mtime (RAFS keeps an unsigned one; nydus-image reads it back as 2^64 - n) and an
    owner past 32 bits are refused by name, in the PAX and in the GNU base-256 form."""
    if writer.startswith("gnu-tar") and GNU_TAR is None:
        pytest.skip("GNU tar writes these archives")
    layer = {
        "tarfile-pre-1970": lambda: tar_of(file("x", mtime=-86400)),
        "gnu-tar-pre-1970": lambda: gnu_tar_layer(tmp_path, "--format=gnu", "--mtime=@-86400"),
        "tarfile-uid-33-bits": lambda: tar_of(file("x", uid=1 << 32)),
    }[writer]()
    with pytest.raises(InvalidImage) as caught:
        _convert_one(store, layer)
    assert named in str(caught.value) and reason in str(caught.value)
    assert list((store.root / "ingest").iterdir()) == []


def test_subsecond_mtimes_are_a_loss_the_log_names(
    store: ContentStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Case A: nydus-image 2.2.0 writes i_mtime_nsec 0 whatever the layer says: the seconds are kept, and
    the run's log names the layer and the entries whose nanoseconds are lost."""
    caplog.set_level(logging.WARNING, logger="accel.drivers.nydus")
    layer = tar_of(file("whole"), file("frac", mtime=MTIME + 0.25), directory("d", mtime=MTIME + 0.5))
    actual, expected = convert_and_merge(store, tmp_path, [tar_of(file("base")), layer])
    assert actual["frac"]["mtime"] == MTIME and actual["d"]["mtime"] == MTIME
    assert actual == expected
    (warning,) = [r.getMessage() for r in caplog.records if "sub-second" in r.getMessage()]
    assert dg.of_bytes(layer) in warning  # the layer's digest (an uncompressed layer's is its diff_id)
    assert "2 sub-second mtime(s) truncated to seconds ('frac', 'd/')" in warning


def test_whiteout_of_a_non_utf8_name_is_refused_naming_the_entry(store: ContentStore) -> None:
    """Case B: nydus-image 2.2.0 only applies whiteouts whose name is UTF-8; it kept both entries."""
    layer = tar_of(file("d/.wh.raw-\udcff\udcfe", b""))
    with pytest.raises(InvalidImage, match=r"'d/\.wh\.raw-\\xff\\xfe' is a whiteout of a name that is not"):
        _convert_one(store, layer)
    # A non-UTF-8 directory above an ordinary whiteout is fine: nydus-image reads the whiteout's own name.
    lower = tar_of(directory("dir-\udc80"), file("dir-\udc80/gone"), file("dir-\udc80/kept"))
    _convert_one(store, lower)
    _convert_one(store, tar_of(file("dir-\udc80/.wh.gone", b"")))


def test_hardlink_chain_links_every_name_to_the_first_entry(store: ContentStore, tmp_path: Path) -> None:
    """Case C: `c` -> `b` -> `a` (each naming the previous link) failed in nydus-image ('unknown target')."""
    layer = tar_of(
        directory("h"),
        file("h/a", b"shared\n", mode=0o640),
        hardlink("h/b", "h/a"),
        hardlink("h/c", "h/b"),
        hardlink("h/d", "./h/c"),
    )
    actual, expected = convert_and_merge(store, tmp_path, [tar_of(file("base")), layer])
    assert {actual[f"h/{name}"]["kind"] for name in "abcd"} == {"hardlink"}
    assert {actual[f"h/{name}"]["sha256"] for name in "abcd"} == {dg.of_bytes(b"shared\n")}
    assert actual == expected


@pytest.mark.parametrize(
    ("pax_headers", "key"),
    [
        ({"SCHILY.xattr.user.note": "two\nlines"}, "SCHILY.xattr.user.note"),
        ({"SCHILY.xattr.user.a\nb": "v"}, "SCHILY.xattr.user.a\nb"),
        ({"comment": "a\n"}, "comment"),
    ],
    ids=["xattr-value", "xattr-name", "other-record"],
)
def test_a_pax_record_with_a_newline_is_refused_naming_the_entry(
    pax_headers: dict[str, str], key: str, store: ContentStore
) -> None:
    """Case D: legal in PAX, but nydus-image 2.2.0 splits records at newlines ('malformed pax extension')."""
    layer = tar_of(file("ok"), file("x", b"x\n", pax_headers=pax_headers))
    with pytest.raises(InvalidImage) as caught:
        _convert_one(store, layer)
    message = str(caught.value)
    assert "tar entry 'x'" in message and f"PAX record {key!r} holds a newline" in message
    assert "nydus-image" in message and "malformed" not in message


def _appended_by_gnu_tar(tmp_path: Path) -> bytes:
    """Two archives GNU tar wrote, one after the other (`cat a.tar b.tar`)."""
    assert GNU_TAR is not None
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}-file").write_bytes(name.encode())
        subprocess.run([GNU_TAR, "-C", str(tmp_path / name), "-cf", str(tmp_path / f"{name}.tar"), "."],
                       check=True)  # fmt: skip
    return (tmp_path / "first.tar").read_bytes() + (tmp_path / "second.tar").read_bytes()


@pytest.mark.parametrize("after", ["not-a-tar", "tarfile-archive", "gnu-tar-archive"])
def test_nothing_after_the_end_of_archive_blocks_is_read(
    after: str, conversions: _Conversions, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Cases E and F: bytes after the end blocks failed in nydus-image (E: 'numeric field did not have utf-8
    text'), an appended archive was read into the image (F). Readers stop at the end blocks; so does the
    feed, in one read, and the log says what was ignored."""
    if after == "gnu-tar-archive":
        if GNU_TAR is None:
            pytest.skip("GNU tar writes these archives")
        layer = _appended_by_gnu_tar(tmp_path)
        first = trees.tar_entries((tmp_path / "first.tar").read_bytes())
    else:
        first_tar = tar_of(file("x", b"x\n"))
        first = trees.tar_entries(first_tar)
        layer = first_tar + (b"not a tar at all " * 100 if after == "not-a-tar" else tar_of(file("appended")))
    caplog.set_level(logging.WARNING, logger="accel.drivers.nydus")
    result = conversions.convert(layer)
    assert conversions.reads == 1
    assert b"appended" not in conversions.forwarded and b"not a tar" not in conversions.forwarded
    assert b"second-file" not in conversions.forwarded
    (warning,) = [r.getMessage() for r in caplog.records if "end-of-archive" in r.getMessage()]
    assert (
        "bytes after the end-of-archive blocks, not all zeros (another archive appended, or no tar), ignored"
        in warning
    )
    unpacked = nh.unpack_layer(
        conversions.store, result.descriptor.digest, facts_of(result).bootstrap, tmp_path
    )
    assert set(trees.tar_entries(unpacked)) == set(first)
    assert nh.compare_layer(layer, unpacked) == []


def test_oci_ref_refuses_bytes_after_the_end_of_archive_blocks(store: ContentStore) -> None:
    """zran indexes the original gzip bytes: nydus-image would read what follows the end blocks."""
    layer = _inputs(store, [tar_of(file("x")) + tar_of(file("appended"))], gzipped=True)[0]
    with pytest.raises(DriverError, match=r"bytes after its end-of-archive blocks.*convert without oci_ref"):
        load_driver("nydus", {"oci_ref": True}).convert_layer(layer)
    plain = _inputs(store, [tar_of(file("x"))], gzipped=True)[0]  # tarfile's zero padding is no such thing
    load_driver("nydus", {"oci_ref": True}).convert_layer(plain)


# --- the same cases through eStargz and zstd:chunked ---------------------------------------------------

_CASES: dict[str, Callable[[Path], bytes]] = {
    "A-pax-ids": lambda _: tar_of(file("x", uid=1 << 21, gid=3_000_000)),
    "A-pax-mtime": lambda _: tar_of(file("x", mtime=1 << 33)),
    "A-pre-1970": lambda _: tar_of(file("x", mtime=-86400)),
    "A-uid-33-bits": lambda _: tar_of(file("x", uid=1 << 32, gid=1 << 33)),
    "A-subsecond": lambda _: tar_of(file("x", mtime=MTIME + 0.75)),
    "A-gnu-tar-posix": lambda tmp: gnu_tar_layer(tmp, "--format=posix", "--mtime=@8589934592"),
    "A-gnu-tar-gnu": lambda tmp: gnu_tar_layer(tmp, "--format=gnu", "--mtime=@-86400"),
    "B": lambda _: tar_of(directory("d"), file("d/.wh.raw-\udcff\udcfe", b"")),
    "C": lambda _: tar_of(file("h/a", mode=0o600), hardlink("h/b", "h/a"), hardlink("h/c", "h/b")),
    "D": lambda _: tar_of(file("x", pax_headers={"SCHILY.xattr.user.nl": "a\nb"})),
    "E": lambda _: tar_of(file("x")) + b"not a tar " * 100,
    "F": lambda _: tar_of(file("x")) + tar_of(file("appended")),
}
# What each does with a case it does not convert: a refusal naming the entry.
_REFUSED = {("zstdchunked", "B"): "'d/.wh.raw-\\xff\\xfe' is not valid UTF-8"}


@pytest.mark.parametrize("case", sorted(_CASES))
@pytest.mark.parametrize("driver", ["estargz", "zstdchunked"])
def test_the_other_formats_convert_each_case_or_refuse_it_by_name(
    driver: str, case: str, store: ContentStore, tmp_path: Path
) -> None:
    if "gnu-tar" in case and GNU_TAR is None:
        pytest.skip("GNU tar writes these archives")
    raw = _CASES[case](tmp_path)
    layer = _inputs(store, [raw], gzipped=True)[0]
    refusal = _REFUSED.get((driver, case))
    if refusal is not None:
        with pytest.raises((InvalidImage, DriverError), match=re.escape(refusal)):
            load_driver(driver).convert_layer(layer)
        return
    result = load_driver(driver).convert_layer(layer)
    reader = reader_for(result.descriptor)
    assert isinstance(reader, LayerReader)
    checks: list[str] = []
    read = reader.read(
        store.path(result.descriptor.digest),
        SourceLayer(descriptor=result.descriptor, diff_id=result.diff_id),
        checks,
    )
    assert "diff_id" in checks  # the stream read back is the one the target's diff_id names
    if driver == "zstdchunked":  # the source tar byte for byte, what follows the end blocks included
        assert result.diff_id == layer.diff_id
    source = apply_entries([reader.comparable_source(list(trees.iter_tar(raw)))])
    assert trees.compare(source, apply_entries([read])) == []
    assert "appended" not in {entry.path for entry in read}


def test_random_unusual_layers_convert_to_their_tree_or_are_refused_naming_the_entry(
    store: ContentStore, tmp_path: Path
) -> None:
    """A sample of `imagegen.unusual_layer` (every case above mixed, over a lower layer) through the real
    nydus-image: the merged bootstrap equals the layers applied, or a refusal names the entry."""
    rng = random.Random(2026_12_07)
    lower = tar_of(directory("a", mode=0o750), file("a/lower"), directory("d"), file("d/a"), file("f"))
    outcomes: collections.Counter[str] = collections.Counter()
    for attempt in range(60):
        upper = imagegen.unusual_layer(rng)
        work = tmp_path / str(attempt)
        work.mkdir()
        try:
            actual, expected = convert_and_merge(store, work, [lower, upper])
        except InvalidImage as exc:
            assert "tar entry '" in str(exc), exc
            outcomes["refused"] += 1
            continue
        assert actual == expected, attempt
        outcomes["converted"] += 1
    assert min(outcomes.values()) >= 5 and len(outcomes) == 2, outcomes


def test_a_zran_layer_without_file_data_is_left_out_like_any_other(
    store: ContentStore, tmp_path: Path
) -> None:
    """2.2.0's merge leaves a zran layer that holds no file data (only directories and links) out of its
    blob table; the manifest lists what the bootstrap references, as without oci_ref."""
    tars = [
        tar_of(directory("p"), file("p/s", b"sibling\n")),
        tar_of(directory("q"), link("p/l", "s")),
        tar_of(file("p/t", b"data\n")),
    ]
    driver = load_driver("nydus", {"oci_ref": True})
    inputs = _inputs(store, tars, gzipped=True)
    converted = [driver.convert_layer(layer) for layer in inputs]
    draft = driver.finish(_draft(store, converted, [i.diff_id for i in inputs]), store)
    assert [layer.descriptor.digest for layer in draft.layers[:-1]] == [
        converted[0].descriptor.digest,
        converted[2].descriptor.digest,
    ]
    merged = tmp_path / "merged.boot"
    merged.write_bytes(store.read_bytes(facts_of(draft.layers[-1]).bootstrap))
    nh.check(merged, nh.blob_dir(store), tmp_path)
    actual = nh.merged_tree(store, merged, contents=False)
    assert actual == nh.expected_merged_tree(tars, contents=False)
