"""The synthetic image builder and the tree helpers every conversion test leans on."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from accel import constants as mt
from accel import digest as dg
from accel.compression import open_uncompressed
from accel.oci import ImageConfig, Index, Manifest
from accel.store import ContentStore
from tests.harness.imagegen import (
    CAPABILITY_XATTR,
    LONG_FILE,
    UNICODE_FILE,
    MiB,
    TarBuilder,
    big_image,
    generate_image,
    generated_bytes,
    standard_image,
    standard_index,
    standard_layers,
)
from tests.harness.trees import DISK_IGNORE, Entry, apply_layers, compare, dir_entries, tar_entries

SMALL_BIG_FILE = 4 * MiB + 4097  # still above the 4 MiB chunk size, a little cheaper than the default


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- TarBuilder ------------------------------------------------------------------------------------


def test_generated_content_is_seeded_and_independent_of_read_size() -> None:
    whole = b"".join(generated_bytes(3 * MiB + 5, seed=7))
    assert len(whole) == 3 * MiB + 5
    assert whole == b"".join(generated_bytes(3 * MiB + 5, seed=7))
    assert whole != b"".join(generated_bytes(3 * MiB + 5, seed=8))
    assert b"".join(generated_bytes(MiB + 3, seed=7)) == whole[: MiB + 3]
    # Through tarfile's own copy loop (different read sizes) the content is the same bytes.
    layer = TarBuilder().file_from_generator("f", 3 * MiB + 5, seed=7)
    assert tar_entries(layer.to_tar())["f"].sha256 == _sha256(whole)
    text = b"".join(generated_bytes(MiB, seed=1, pattern="text"))
    assert set(text) <= set(b"etaoinshrdlu \n.,")
    assert b"".join(generated_bytes(10, seed=1, pattern="zeros")) == bytes(10)


def test_auto_parents_precede_children_and_explicit_dir_replaces_in_place() -> None:
    layer = TarBuilder(auto_parents=True)
    layer.file("a/b/c.txt", b"x")
    layer.dir("a", mode=0o700, uid=5, uname="five")
    layer.file("a/d.txt", b"y")
    assert [(e.name, e.kind) for e in layer.entries] == [
        ("a", "dir"),
        ("a/b", "dir"),
        ("a/b/c.txt", "reg"),
        ("a/d.txt", "reg"),
    ]
    entries = tar_entries(layer.to_tar())
    assert entries["a"].mode == 0o700 and entries["a"].uid == 5 and entries["a"].uname == "five"
    assert entries["a/b"].mode == 0o755


def test_to_tar_file_streams_the_same_bytes(tmp_path: Path) -> None:
    layer = standard_layers(SMALL_BIG_FILE)[0]
    written = layer.to_tar_file(tmp_path / "layer.tar")
    assert written.read_bytes() == layer.to_tar()


def test_standard_base_layer_covers_the_hard_cases() -> None:
    base = standard_layers(SMALL_BIG_FILE)[0]
    raw = base.to_tar()
    entries = tar_entries(raw)
    assert {e.type for e in entries.values()} == {
        "reg",
        "dir",
        "symlink",
        "hardlink",
        "char",
        "block",
        "fifo",
    }

    assert entries["etc/empty"].size == 0 and entries["etc/empty"].sha256 == _sha256(b"")
    big = entries["usr/lib/big.bin"]
    assert big.size == SMALL_BIG_FILE > 4 * MiB
    assert big.sha256 == _sha256(b"".join(generated_bytes(SMALL_BIG_FILE, seed=1)))
    assert entries["var/lib/zeros.img"].sha256 == _sha256(bytes(MiB))

    assert entries["tmp"].mode == 0o1777 and entries["root"].mode == 0o700
    assert entries["usr/bin/su-like"].mode == 0o4755
    assert entries["usr/bin/wall-like"].mode == 0o2755 and entries["usr/bin/wall-like"].gname == "tty"
    home = entries["home/app/.profile"]
    assert (home.uid, home.gid, home.uname, home.gname) == (1000, 1000, "app", "app")

    assert entries["usr/bin/tool-link"].linkname == "tool"
    assert entries["etc/localtime"].linkname == "/usr/share/zoneinfo/UTC"
    assert entries["etc/dangling"].linkname == "../nowhere/at/all"
    assert entries["usr/bin/tool-hard"] == Entry(
        path="usr/bin/tool-hard",
        type="hardlink",
        mode=0o755,  # the header repeats the target's metadata
        uname="root",
        gname="root",
        linkname="usr/bin/tool",
        mtime=entries["usr/bin/tool-hard"].mtime,
    )
    assert (entries["dev/null"].type, entries["dev/null"].devmajor, entries["dev/null"].devminor) == (
        "char",
        1,
        3,
    )
    assert (entries["dev/loop0"].type, entries["dev/loop0"].devmajor) == ("block", 7)
    assert entries["run/initctl"].type == "fifo"

    ping = entries["usr/bin/ping-like"]
    assert ping.xattrs == {"security.capability": CAPABILITY_XATTR, "user.note": "ünïcode".encode()}
    with pytest.raises(UnicodeDecodeError):
        CAPABILITY_XATTR.decode()  # the binary case is really not UTF-8
    assert entries["etc/hosts"].xattrs == {"user.origin": b"imagegen"}

    assert len(LONG_FILE) > 100 and entries[LONG_FILE].type == "reg"
    assert entries["usr/share/doc/latest"].linkname == "/" + LONG_FILE
    assert entries["usr/share/doc/long-hardlink"].linkname == LONG_FILE
    assert entries[UNICODE_FILE].sha256 == _sha256("こんにちは\n".encode())
    # The name is stored as UTF-8 in the archive itself.
    assert UNICODE_FILE.encode() in raw

    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        assert {m.mtime for m in tar} == {1_700_000_000}


def test_gnu_format_keeps_names_and_drops_only_xattrs() -> None:
    base = standard_layers(SMALL_BIG_FILE)[0]
    pax, gnu = base.to_tar("pax"), base.to_tar("gnu")
    assert pax != gnu
    assert b"././@LongLink" in gnu and b"././@LongLink" not in pax
    pax_entries, gnu_entries = tar_entries(pax), tar_entries(gnu)
    assert compare(pax_entries, gnu_entries, ignore={"xattrs"}) == []
    assert all(not e.xattrs for e in gnu_entries.values())


# --- images ----------------------------------------------------------------------------------------


def test_same_inputs_give_the_same_digests(tmp_path: Path) -> None:
    first = standard_image(ContentStore(tmp_path / "one"), big_file_size=SMALL_BIG_FILE)
    second = standard_image(ContentStore(tmp_path / "two"), big_file_size=SMALL_BIG_FILE)
    assert first.manifest == second.manifest
    assert first.blobs == second.blobs
    assert first.manifest_raw == second.manifest_raw
    other = standard_image(ContentStore(tmp_path / "three"), big_file_size=SMALL_BIG_FILE, compression="zstd")
    assert other.diff_ids == first.diff_ids and other.digest != first.digest


@pytest.mark.parametrize(
    ("media", "compression", "layer_type"),
    [
        ("oci", "gzip", mt.OCI_LAYER_GZIP),
        ("oci", "zstd", mt.OCI_LAYER_ZSTD),
        ("oci", "none", mt.OCI_LAYER_TAR),
        ("docker", "gzip", mt.DOCKER_LAYER_GZIP),
    ],
)
def test_diff_ids_are_the_uncompressed_layers(
    store: ContentStore, media: str, compression: str, layer_type: str
) -> None:
    layers = standard_layers(SMALL_BIG_FILE)
    image = generate_image(layers, store, media=media, compression=compression)  # type: ignore[arg-type]
    config = ImageConfig.parse(store.read_bytes(image.config.digest))
    assert config.diff_ids == image.diff_ids == [_sha256(layer.to_tar()) for layer in layers]
    for descriptor, diff_id, layer in zip(image.layers, image.diff_ids, layers, strict=True):
        assert descriptor.media_type == layer_type
        assert store.size(descriptor.digest) == descriptor.size
        with open_uncompressed(store.path(descriptor.digest), descriptor.media_type, diff_id) as tar_stream:
            assert tar_stream.read() == layer.to_tar()
    if compression == "none":
        assert image.layers[0].digest == image.diff_ids[0]
    else:
        assert image.layers[0].digest != image.diff_ids[0]


@pytest.mark.parametrize("media", ["oci", "docker"])
def test_manifest_and_config_are_valid_documents(store: ContentStore, media: str) -> None:
    image = generate_image(
        standard_layers(SMALL_BIG_FILE), store, platform=("linux", "arm64", "v8"), media=media
    )  # type: ignore[arg-type]
    expected_manifest = mt.OCI_MANIFEST if media == "oci" else mt.DOCKER_MANIFEST
    expected_config = mt.OCI_CONFIG if media == "oci" else mt.DOCKER_CONFIG

    raw = store.read_bytes(image.manifest.digest)
    assert raw == image.manifest_raw
    manifest = Manifest.parse(raw)
    assert manifest.media_type == image.manifest_media_type == expected_manifest
    assert json.loads(raw)["schemaVersion"] == 2
    assert manifest.config == image.config and manifest.config.media_type == expected_config
    assert manifest.layers == image.layers
    assert image.blobs == [image.config.digest, *(d.digest for d in image.layers), image.manifest.digest]
    assert all(store.exists(d) for d in image.blobs)

    config_doc = json.loads(store.read_bytes(image.config.digest))
    assert (config_doc["os"], config_doc["architecture"], config_doc["variant"]) == ("linux", "arm64", "v8")
    assert config_doc["rootfs"] == {"type": "layers", "diff_ids": image.diff_ids}
    assert "LANG=C.UTF-8" in config_doc["config"]["Env"]
    assert config_doc["created"].endswith("Z")
    history = config_doc["history"]
    assert len(history) == len(image.layers) + 1
    assert [bool(h.get("empty_layer")) for h in history] == [False, True, False, False]


@pytest.mark.parametrize(
    ("media", "index_type"), [("oci", mt.OCI_INDEX), ("docker", mt.DOCKER_MANIFEST_LIST)]
)
def test_two_platform_index_shares_base_layers(store: ContentStore, media: str, index_type: str) -> None:
    index = standard_index(store, media=media, big_file_size=SMALL_BIG_FILE)  # type: ignore[arg-type]
    parsed = Index.parse(store.read_bytes(index.digest))
    assert parsed.media_type == index.media_type == index_type
    assert [str(d.platform) for d in parsed.manifests] == ["linux/amd64", "linux/arm64"]
    assert [d.digest for d in parsed.manifests] == [image.digest for image in index.images]
    amd64, arm64 = index.images
    assert amd64.layers[:2] == arm64.layers[:2]
    assert amd64.layers[2] != arm64.layers[2]
    assert amd64.diff_ids[2] != arm64.diff_ids[2]
    assert (
        len(index.blobs) == len(set(index.blobs)) == 2 + 2 + 2 + 2 + 1
    )  # configs, shared, own, manifests, index
    assert index.blobs[-1] == index.digest


def test_docker_refuses_layer_types_it_does_not_have(store: ContentStore) -> None:
    with pytest.raises(ValueError, match="gzip only"):
        generate_image([TarBuilder().file("a", b"a")], store, media="docker", compression="zstd")


def test_big_image_is_streamed_deterministic_and_about_the_requested_size(tmp_path: Path) -> None:
    total = 12 * MiB
    image = big_image(ContentStore(tmp_path / "one"), total_bytes=total, seed=3)
    again = big_image(ContentStore(tmp_path / "two"), total_bytes=total, seed=3)
    other_seed = big_image(ContentStore(tmp_path / "three"), total_bytes=total, seed=4)
    assert image.digest == again.digest != other_seed.digest
    assert len(image.layers) == 4

    store = ContentStore(tmp_path / "one")
    content = 0
    small_files = 0
    for descriptor, diff_id in zip(image.layers, image.diff_ids, strict=True):
        with open_uncompressed(store.path(descriptor.digest), descriptor.media_type, diff_id) as tar_stream:
            entries = tar_entries(tar_stream)
        regular = [e for e in entries.values() if e.type == "reg"]
        content += sum(e.size for e in regular)
        small_files += sum(1 for e in regular if e.size <= 64 * 1024)
    assert total - 64 <= content <= total
    assert small_files > 50
    # Text-like small files make the image compressible, random large ones keep it honest.
    assert 0.6 * total < sum(d.size for d in image.layers) < total


# --- trees -----------------------------------------------------------------------------------------


def test_apply_layers_on_the_standard_image() -> None:
    tree = apply_layers([layer.to_tar() for layer in standard_layers(SMALL_BIG_FILE)])

    def under(prefix: str) -> set[str]:
        return {p for p in tree if p == prefix or p.startswith(prefix + "/")}

    assert under("opt") == {
        "opt",
        "opt/app",
        "opt/app/config.yml",
        "opt/app/new.txt",
        "opt/thing",
        "opt/thing/inner.txt",
    }
    assert tree["opt/app/config.yml"].sha256 == _sha256(b"version: 2\n")
    assert tree["opt/thing"].type == "dir"
    assert under("var") == {"var", "var/cache", "var/lib", "var/lib/zeros.img"}
    assert under("etc") == {
        "etc",
        "etc/dangling",
        "etc/empty",
        "etc/hosts",
        "etc/localtime",
        "etc/os-release",
        "etc/shadow",
    }
    assert tree["etc/os-release"].sha256 == _sha256(b'NAME="imagegen"\nVERSION_ID="2"\n')
    assert under("usr/local") == {"usr/local", "usr/local/bin", "usr/local/bin/a", "usr/local/bin/b"}
    assert (
        tree["usr/local/bin/b"].type == "hardlink" and tree["usr/local/bin/b"].linkname == "usr/local/bin/a"
    )
    assert tree["usr/local/bin/b"].sha256 == tree["usr/local/bin/a"].sha256
    assert not any(".wh." in p for p in tree)
    assert not any(e.implicit for e in tree.values())
    assert tree["app/arch.txt"].sha256 == _sha256(b"built for amd64\n")


def test_apply_layers_whiteout_semantics_exactly() -> None:
    lower = TarBuilder()
    lower.dir("d").file("d/keep", b"k").file("d/gone", b"g").dir("d/sub").file("d/sub/deep", b"x")
    lower.dir("o").file("o/old", b"o").dir("o/olddir").file("o/olddir/f", b"f")
    lower.file("f2d", b"file").dir("d2f").file("d2f/child", b"c")
    lower.file("linked", b"L").hardlink("link2", "linked")
    lower.file("top-gone", b"t")

    upper = TarBuilder()
    upper.file("o/same-layer-before-marker", b"s")  # same-layer entries survive their opaque marker
    upper.opaque("o")
    upper.dir("o", mode=0o711)
    upper.file("o/new", b"n")
    upper.whiteout("d/gone")
    upper.whiteout("d/sub")
    upper.file("d/sub", b"now a file")  # whiteout plus re-creation in one layer
    upper.dir("f2d").file("f2d/inside", b"i")
    upper.file("d2f", b"was a dir")
    upper.whiteout("linked")  # the other name of the inode survives
    upper.whiteout("top-gone")
    upper.whiteout("never-existed")
    upper.file("implicit/parent/file", b"p")

    tree = apply_layers([lower.to_tar(), upper.to_tar()])
    assert sorted(tree) == [
        "d",
        "d/keep",
        "d/sub",
        "d2f",
        "f2d",
        "f2d/inside",
        "implicit",
        "implicit/parent",
        "implicit/parent/file",
        "link2",
        "o",
        "o/new",
        "o/same-layer-before-marker",
    ]
    assert tree["d/sub"].type == "reg" and tree["d/sub"].sha256 == _sha256(b"now a file")
    assert tree["d2f"].type == "reg" and tree["f2d"].type == "dir"
    assert tree["o"].mode == 0o711
    assert tree["link2"].type == "reg" and tree["link2"].sha256 == _sha256(b"L")
    assert tree["implicit"].implicit and tree["implicit/parent"].implicit
    assert not tree["implicit/parent/file"].implicit

    # An opaque marker at the layer root empties everything below it.
    root_opaque = TarBuilder().file(".wh..wh..opq").file("only", b"o")
    assert sorted(apply_layers([lower.to_tar(), root_opaque.to_tar()])) == ["only"]


def test_apply_layers_rejects_a_hardlink_to_nothing() -> None:
    with pytest.raises(ValueError, match="hardlink"):
        apply_layers([TarBuilder().hardlink("a", "missing").to_tar()])


def _extract(raw: bytes, destination: Path) -> Path:
    destination.mkdir()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        tar.extractall(destination, numeric_owner=True, filter="fully_trusted")
    return destination


def _simple_layer() -> TarBuilder:
    layer = TarBuilder()
    layer.dir("etc").file("etc/hosts", b"127.0.0.1 localhost\n", xattrs={"user.k": b"v\xff"})
    layer.dir("bin").file("bin/su", b"\x7fELF", mode=0o4755).file("bin/wall", b"w", mode=0o2711, gid=5)
    layer.dir("tmp", mode=0o1777).dir("home").dir("home/app", mode=0o700, uid=1000, gid=1000)
    layer.file("home/app/data", b"x" * 70_000, mode=0o600, uid=1000, gid=1000)
    layer.dir("héllo").file(UNICODE_FILE, "日本".encode())
    layer.file("empty")
    return layer


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mknod and chown need root")


@needs_root
def test_dir_entries_equal_tar_entries_for_a_simple_layer(tmp_path: Path) -> None:
    layer = _simple_layer()
    raw = layer.to_tar()
    root = _extract(raw, tmp_path / "root")
    # tarfile does not restore xattrs; put it back the way a real unpacker would.
    os.setxattr(root / "etc/hosts", "user.k", b"v\xff")

    on_disk = dir_entries(root)
    from_tar = tar_entries(raw)
    assert compare(from_tar, on_disk, ignore={"uname", "gname"}) == []
    assert on_disk["etc/hosts"].xattrs == {"user.k": b"v\xff"}
    assert on_disk["bin/su"].mode == 0o4755 and on_disk["tmp"].mode == 0o1777
    # The defaults catch what was not restored: drop the xattr and it is a difference.
    os.removexattr(root / "etc/hosts", "user.k")
    assert compare(from_tar, dir_entries(root), ignore={"uname", "gname"}) == [
        "etc/hosts: xattrs {'user.k': b'v\\xff'} in a, {} in b"
    ]


@needs_root
def test_dir_entries_match_apply_layers_with_links_and_devices(tmp_path: Path) -> None:
    layer = _simple_layer()
    layer.file("bin/tool", b"tool", mode=0o755).hardlink("bin/tool-hard", "bin/tool").hardlink(
        "bin/a-first", "bin/tool"
    )
    layer.symlink("bin/tool-link", "tool").symlink("bin/abs", "/etc/hosts").symlink("bin/dangling", "../nope")
    layer.dir("dev").char_device("dev/null", 1, 3).block_device("dev/loop0", 7, 0).fifo(
        "dev/pipe", mode=0o600
    )
    layer.file(LONG_FILE, b"long")
    raw = layer.to_tar()
    root = _extract(raw, tmp_path / "root")
    os.setxattr(root / "etc/hosts", "user.k", b"v\xff")

    expected = apply_layers([raw])
    on_disk = dir_entries(root)
    assert compare(expected, on_disk, ignore=DISK_IGNORE, labels=("tar", "disk")) == []
    # Both sides name the sorted-first path of the inode as the file, the rest as links to it.
    assert on_disk["bin/a-first"].type == "reg"
    assert on_disk["bin/tool"] == dataclasses.replace(
        on_disk["bin/a-first"], path="bin/tool", type="hardlink", linkname="bin/a-first"
    )
    assert expected["bin/tool-hard"].linkname == "bin/a-first"
    assert (on_disk["dev/loop0"].type, on_disk["dev/loop0"].devmajor, on_disk["dev/loop0"].devminor) == (
        "block",
        7,
        0,
    )
    assert [p for p in expected if expected[p].implicit] == ["usr", "usr/share", "usr/share/doc"] + [
        LONG_FILE.rsplit("/", i)[0] for i in range(4, 0, -1)
    ]


@needs_root
def test_compare_reports_a_changed_byte(tmp_path: Path) -> None:
    raw = _simple_layer().to_tar()
    root = _extract(raw, tmp_path / "root")
    os.setxattr(root / "etc/hosts", "user.k", b"v\xff")
    data = root / "home/app/data"
    content = bytearray(data.read_bytes())
    content[50_000] ^= 1
    data.write_bytes(bytes(content))
    os.utime(data, (1_700_000_000, 1_700_000_000))

    differences = compare(tar_entries(raw), dir_entries(root), ignore=DISK_IGNORE, labels=("tar", "disk"))
    assert differences == [
        f"home/app/data: sha256 {_sha256(b'x' * 70_000)!r} in tar, {dg.of_bytes(bytes(content))!r} in disk"
    ]


def test_compare_between_archives_reports_each_difference() -> None:
    a = TarBuilder().file("f", b"abc").dir("d").file("only-a", b"")
    b = TarBuilder().file("f", b"abd", mode=0o600).file("d", b"").file("only-b", b"")
    differences = compare(tar_entries(a.to_tar()), tar_entries(b.to_tar()))
    assert differences == [
        "d: type dir in a, reg in b",
        "f: mode 0o644 in a, 0o600 in b",
        f"f: sha256 {_sha256(b'abc')!r} in a, {_sha256(b'abd')!r} in b",
        "only-a: only in a (reg)",
        "only-b: only in b (reg)",
    ]
    assert compare(tar_entries(a.to_tar()), tar_entries(a.to_tar())) == []
    with pytest.raises(ValueError, match="unknown fields"):
        compare({}, {}, ignore={"colour"})
