"""The Go conformance checker accepts reference blobs, sees their files as the source tar has them,
and rejects damaged ones (so a passing verdict on our own blobs means something)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import random
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard

from accel.drivers.zstdchunked.writer import Variant, write_zstd_chunked
from tests.harness import conformance

pytestmark = pytest.mark.conformance

MIB = 1 << 20
BIG_FILE = "usr/lib/big.bin"
LONG_DIR = "usr/share/" + "long-directory-name-" * 6  # > 100 bytes: needs a PAX path / GNU longname
NON_ASCII_FILE = "usr/share/doc/café/naïve-日本語.txt"
ESTARGZ_TOC_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
ESTARGZ_SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"
ZSTD_CHECKSUM_ANNOTATION = "io.github.containers.zstd-chunked.manifest-checksum"
ZSTD_POSITION_ANNOTATION = "io.github.containers.zstd-chunked.manifest-position"
BINARY_XATTR = b"\x00\x01\xfe\xff"


def _add(archive: tarfile.TarFile, name: str, kind: bytes, data: bytes = b"", **attributes: Any) -> None:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.mtime = 1_700_000_000
    member.size = len(data) if kind == tarfile.REGTYPE else 0
    for key, value in attributes.items():
        setattr(member, key, value)
    archive.addfile(member, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def write_layer_tar(path: Path, tar_format: int) -> None:
    """A layer with every entry kind and attribute the tree format distinguishes."""
    big = random.Random(7).randbytes(5 * MIB + 123)  # > 4 MiB: several chunks in both formats
    root_owner = {"uid": 0, "gid": 0, "uname": "root", "gname": "root"}
    with tarfile.open(path, "w", format=tar_format, encoding="utf-8") as archive:
        _add(archive, "./", tarfile.DIRTYPE, mode=0o755, **root_owner)
        for directory in ("etc", "usr", "usr/bin", "usr/lib", "usr/share", LONG_DIR, "usr/share/doc"):
            _add(archive, directory + "/", tarfile.DIRTYPE, mode=0o755, **root_owner)
        _add(archive, "usr/share/doc/café/", tarfile.DIRTYPE, mode=0o2775, uid=0, gid=50, gname="staff")
        _add(archive, "tmp/", tarfile.DIRTYPE, mode=0o1777, **root_owner)
        _add(archive, "etc/passwd", tarfile.REGTYPE, b"root:x:0:0::/root:/bin/sh\n", mode=0o644, **root_owner)
        _add(archive, "etc/empty", tarfile.REGTYPE, b"", mode=0o600, **root_owner)
        # uid 0 without names after named uid-0 entries: eStargz readers inherit "root".
        _add(archive, "etc/unnamed", tarfile.REGTYPE, b"no names\n", mode=0o644, uid=0, gid=0)
        _add(archive, "etc/localtime", tarfile.SYMTYPE, linkname="/usr/share/zoneinfo/UTC", mode=0o777)
        _add(archive, "usr/bin/su", tarfile.REGTYPE, b"#!/bin/sh\necho su\n", mode=0o4755, **root_owner)
        _add(archive, "usr/bin/su-again", tarfile.LNKTYPE, linkname="usr/bin/su", mode=0o4755, **root_owner)
        _add(
            archive,
            BIG_FILE,
            tarfile.REGTYPE,
            big,
            mode=0o640,
            uid=1000,
            gid=1001,
            uname="builder",
            gname="dev",
        )
        _add(archive, "usr/lib/zeros.img", tarfile.REGTYPE, bytes(9 * MIB), mode=0o644, **root_owner)
        _add(archive, LONG_DIR + "/file-with-a-long-path.txt", tarfile.REGTYPE, b"long\n", mode=0o644)
        _add(archive, "usr/lib/long-link", tarfile.SYMTYPE, linkname="../" + LONG_DIR * 2, mode=0o777)
        _add(archive, NON_ASCII_FILE, tarfile.REGTYPE, "grüße\n".encode(), mode=0o644, uid=1000, gid=1001)
        _add(archive, "dev/", tarfile.DIRTYPE, mode=0o755, **root_owner)
        _add(archive, "dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3, **root_owner)
        _add(
            archive,
            "dev/sda",
            tarfile.BLKTYPE,
            mode=0o660,
            devmajor=8,
            devminor=0,
            uid=0,
            gid=6,
            gname="disk",
        )
        _add(archive, "dev/initctl", tarfile.FIFOTYPE, mode=0o600, **root_owner)
        # No "var/" or "var/lib/" entries: readers must cope with parents that are not in the tar.
        _add(archive, "var/lib/state", tarfile.REGTYPE, b"state\n", mode=0o644, **root_owner)
        if tar_format == tarfile.PAX_FORMAT:
            xattrs = {
                "SCHILY.xattr.user.comment": "plain text",
                "SCHILY.xattr.user.binary": BINARY_XATTR.decode("utf-8", "surrogateescape"),
            }
            _add(
                archive,
                "usr/bin/ping",
                tarfile.REGTYPE,
                b"ping\n",
                mode=0o755,
                pax_headers=xattrs,
                **root_owner,
            )


@dataclass(frozen=True)
class Layer:
    tar: Path
    diff_id: str


@dataclass(frozen=True)
class ReferenceBlob:
    path: Path
    annotations: dict[str, str]


@pytest.fixture(scope="module")
def checker() -> Path:
    try:
        return conformance.checker_binary()
    except conformance.CheckerUnavailable as missing:
        pytest.skip(str(missing))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("conformance")


@pytest.fixture(scope="module")
def layer(workdir: Path) -> Layer:
    tar = workdir / "layer.tar"
    write_layer_tar(tar, tarfile.PAX_FORMAT)
    return Layer(tar, "sha256:" + hashlib.sha256(tar.read_bytes()).hexdigest())


@pytest.fixture(scope="module")
def estargz_blob(checker: Path, layer: Layer, workdir: Path) -> ReferenceBlob:
    path = workdir / "layer.estargz"
    return ReferenceBlob(path, conformance.gen_estargz(layer.tar, path))


@pytest.fixture(scope="module")
def zstd_chunked_blob(checker: Path, layer: Layer, workdir: Path) -> ReferenceBlob:
    path = workdir / "layer.zstdchunked"
    return ReferenceBlob(path, conformance.gen_zstd_chunked(layer.tar, path))


def damaged_copy(blob: Path, destination: Path, offset: int) -> Path:
    data = bytearray(blob.read_bytes())
    data[offset] ^= 0xFF
    destination.write_bytes(bytes(data))
    return destination


def estargz_toc_entries(blob: bytes) -> list[dict[str, Any]]:
    """Parse the TOC independently of the checker: footer -> TOC gzip member -> tar -> JSON."""
    footer = blob[-51:]
    toc_offset = int(footer[16:32], 16)
    toc_tar = gzip.decompress(blob[toc_offset:-51])
    with tarfile.open(fileobj=io.BytesIO(toc_tar)) as archive:
        member = archive.next()
        assert member is not None and member.name == "stargz.index.json"
        toc_file = archive.extractfile(member)
        assert toc_file is not None
        return json.load(toc_file)["entries"]


def zstd_toc_entries(blob: bytes, annotations: dict[str, str]) -> list[dict[str, Any]]:
    offset, length, uncompressed, _ = (int(part) for part in annotations[ZSTD_POSITION_ANNOTATION].split(":"))
    manifest = zstandard.ZstdDecompressor().decompress(
        blob[offset : offset + length], max_output_size=uncompressed
    )
    return json.loads(manifest)["entries"]


def middle_of_second_chunk(entries: list[dict[str, Any]], name: str, end_of: Callable[[int], int]) -> int:
    """Blob offset in the middle of the compressed bytes of the file's second chunk."""
    indices = [
        i
        for i, e in enumerate(entries)
        if conformance.clean_name(e["name"]) == name and e["type"] in ("reg", "chunk")
    ]
    assert len(indices) >= 2, f"{name} should be stored in several chunks"
    second = indices[1]
    start = entries[second]["offset"]
    return (start + end_of(second)) // 2


# --- tar_tree: the Python reading of a tar equals Go's archive/tar reading of it ---------------


@pytest.mark.parametrize("tar_format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
@pytest.mark.parametrize("estargz_owner_names", [False, True], ids=["plain-names", "estargz-names"])
def test_tar_tree_equals_go_reading(
    checker: Path, workdir: Path, tar_format: int, estargz_owner_names: bool
) -> None:
    tar = workdir / f"cross-{tar_format}.tar"
    if not tar.exists():
        write_layer_tar(tar, tar_format)
    python_tree = conformance.tar_tree(tar, estargz_owner_names=estargz_owner_names)
    go_tree = conformance.go_tar_tree(tar, estargz_owner_names=estargz_owner_names)
    assert python_tree == go_tree
    assert {e["name"] for e in python_tree} >= {LONG_DIR + "/file-with-a-long-path.txt", NON_ASCII_FILE}


def test_tar_tree_normalises_entries(layer: Layer) -> None:
    tree = conformance.tar_tree(layer.tar)
    by_name = {e["name"]: e for e in tree}
    assert [e["name"] for e in tree] == sorted(by_name, key=lambda n: n.encode())
    assert by_name["."]["type"] == "dir"
    assert by_name["usr/bin/su"]["mode"] == 0o4755
    assert by_name["usr/share/doc/café"]["mode"] == 0o2775
    assert by_name["tmp"]["mode"] == 0o1777
    assert by_name["usr/bin/su-again"] == {
        "name": "usr/bin/su-again",
        "type": "hardlink",
        "linkname": "usr/bin/su",
    }
    assert by_name["etc/localtime"]["linkname"] == "/usr/share/zoneinfo/UTC"
    assert by_name["dev/sda"] | {"xattrs": None} == {
        "name": "dev/sda", "type": "block", "mode": 0o660, "uid": 0, "gid": 6, "uname": "", "gname": "disk",
        "devmajor": 8, "devminor": 0, "xattrs": None,
    }  # fmt: skip
    assert by_name["dev/initctl"]["type"] == "fifo"
    assert by_name["etc/empty"]["size"] == 0
    assert by_name["etc/empty"]["sha256"] == hashlib.sha256(b"").hexdigest()
    assert by_name[BIG_FILE]["size"] == 5 * MIB + 123
    assert (by_name[BIG_FILE]["uname"], by_name[BIG_FILE]["gid"]) == ("builder", 1001)
    assert by_name["usr/bin/ping"]["xattrs"] == {
        "user.comment": base64.b64encode(b"plain text").decode(),
        "user.binary": base64.b64encode(BINARY_XATTR).decode(),
    }
    assert "var/lib" not in by_name and "var/lib/state" in by_name
    assert by_name["etc/unnamed"]["uname"] == ""
    inherited = {e["name"]: e for e in conformance.tar_tree(layer.tar, estargz_owner_names=True)}
    assert inherited["etc/unnamed"]["uname"] == "root"


# --- eStargz ------------------------------------------------------------------------------------


def test_reference_estargz_is_accepted_with_the_source_tree(
    layer: Layer, estargz_blob: ReferenceBlob
) -> None:
    size = int(estargz_blob.annotations[ESTARGZ_SIZE_ANNOTATION])
    verdict = conformance.check_estargz(
        estargz_blob.path, estargz_blob.annotations[ESTARGZ_TOC_ANNOTATION], size
    )
    assert verdict.ok, verdict.error
    assert verdict.error == ""
    assert verdict.tree == conformance.tar_tree(layer.tar, estargz_owner_names=True)
    assert verdict.raw["implicit_dirs"] == ["var", "var/lib"]
    assert verdict.raw["uncompressed_size"] == size
    # 5 MiB in 4 MiB chunks + 9 MiB of zeros in 4 MiB chunks + one chunk per other non-empty file.
    assert verdict.raw["chunks_verified"] >= 2 + 3 + 5


def test_estargz_rejects_a_wrong_toc_digest(estargz_blob: ReferenceBlob) -> None:
    verdict = conformance.check_estargz(estargz_blob.path, "sha256:" + "0" * 64, None)
    assert not verdict.ok
    assert "VerifyTOC" in verdict.error


def test_estargz_rejects_a_wrong_uncompressed_size(estargz_blob: ReferenceBlob) -> None:
    size = int(estargz_blob.annotations[ESTARGZ_SIZE_ANNOTATION])
    verdict = conformance.check_estargz(
        estargz_blob.path, estargz_blob.annotations[ESTARGZ_TOC_ANNOTATION], size + 1
    )
    assert not verdict.ok
    assert "uncompressed size" in verdict.error


def test_estargz_rejects_a_flipped_byte_in_a_file_chunk(estargz_blob: ReferenceBlob, workdir: Path) -> None:
    blob = estargz_blob.path.read_bytes()
    entries = estargz_toc_entries(blob)
    data_offsets = sorted({e["offset"] for e in entries if e["type"] in ("reg", "chunk") and e.get("offset")})

    def next_data_offset(index: int) -> int:
        return next(o for o in data_offsets if o > entries[index]["offset"])

    offset = middle_of_second_chunk(entries, BIG_FILE, next_data_offset)
    damaged = damaged_copy(estargz_blob.path, workdir / "damaged.estargz", offset)
    verdict = conformance.check_estargz(damaged, estargz_blob.annotations[ESTARGZ_TOC_ANNOTATION], None)
    assert not verdict.ok
    assert BIG_FILE in verdict.error


# --- zstd:chunked -------------------------------------------------------------------------------


def test_reference_zstd_chunked_is_accepted_with_the_source_tree(
    layer: Layer, zstd_chunked_blob: ReferenceBlob
) -> None:
    verdict = conformance.check_zstd_chunked(
        zstd_chunked_blob.path, zstd_chunked_blob.annotations, layer.diff_id
    )
    assert verdict.ok, verdict.error
    assert verdict.tree == conformance.tar_tree(layer.tar)
    assert verdict.raw["diff_id"] == layer.diff_id
    assert verdict.raw["toc_digest"] == zstd_chunked_blob.annotations[ZSTD_CHECKSUM_ANNOTATION]
    assert verdict.raw["chunks_verified"] > verdict.raw["files_verified"]  # big files are split


def test_zstd_chunked_rejects_a_wrong_manifest_checksum(zstd_chunked_blob: ReferenceBlob) -> None:
    annotations = {**zstd_chunked_blob.annotations, ZSTD_CHECKSUM_ANNOTATION: "sha256:" + "0" * 64}
    verdict = conformance.check_zstd_chunked(zstd_chunked_blob.path, annotations, None)
    assert not verdict.ok
    assert "checksum" in verdict.error


def test_zstd_chunked_rejects_a_wrong_diff_id(zstd_chunked_blob: ReferenceBlob) -> None:
    verdict = conformance.check_zstd_chunked(
        zstd_chunked_blob.path, zstd_chunked_blob.annotations, "sha256:" + "1" * 64
    )
    assert not verdict.ok
    assert "--diff-id" in verdict.error


def test_zstd_chunked_rejects_a_flipped_byte_in_a_file_chunk(
    layer: Layer, zstd_chunked_blob: ReferenceBlob, workdir: Path
) -> None:
    entries = zstd_toc_entries(zstd_chunked_blob.path.read_bytes(), zstd_chunked_blob.annotations)

    def chunk_end(index: int) -> int:
        following = entries[index + 1] if index + 1 < len(entries) else None
        if following is not None and following["type"] == "chunk":
            return following["offset"]
        file_entry = next(e for e in reversed(entries[: index + 1]) if e["type"] == "reg")
        return file_entry["endOffset"]  # a file's last chunk ends where the file's data ends

    offset = middle_of_second_chunk(entries, BIG_FILE, chunk_end)
    damaged = damaged_copy(zstd_chunked_blob.path, workdir / "damaged.zstdchunked", offset)
    verdict = conformance.check_zstd_chunked(damaged, zstd_chunked_blob.annotations, layer.diff_id)
    assert not verdict.ok
    assert verdict.error


# --- accel's zstd:chunked, read in part the way runtimes read it -----------------------------------------


def write_accel_zstd_chunked(layer: Layer, workdir: Path, variant: Variant) -> ReferenceBlob:

    path = workdir / f"accel-{variant}.zstdchunked"
    if not path.exists():
        with layer.tar.open("rb") as source, path.open("wb") as out:
            result = write_zstd_chunked(source, out, 3, variant=variant)
        path.with_suffix(".json").write_text(json.dumps(result.annotations))
    return ReferenceBlob(path, json.loads(path.with_suffix(".json").read_text()))


@pytest.fixture(scope="module", params=["containers-storage", "stargz"])
def accel_zstd_chunked(request: pytest.FixtureRequest, layer: Layer, workdir: Path) -> ReferenceBlob:
    return write_accel_zstd_chunked(layer, workdir, request.param)


def test_accel_zstd_chunked_is_read_in_part_by_the_runtimes_readers(
    layer: Layer, accel_zstd_chunked: ReferenceBlob
) -> None:
    verdict = conformance.check_zstd_chunked(
        accel_zstd_chunked.path, accel_zstd_chunked.annotations, layer.diff_id, lazy_file="etc/passwd"
    )
    assert verdict.ok, verdict.error
    assert verdict.tree == conformance.tar_tree(layer.tar)
    variant = verdict.raw["variant"]
    reads = {read["reader"]: read for read in verdict.raw["lazy_reads"]}
    blob_bytes = accel_zstd_chunked.path.stat().st_size
    # containers/storage's differ reaches the TOC (and tar-split) with a few KiB, then fetches files by range
    storage_read = reads["go.podman.io/storage/pkg/chunked"]
    assert storage_read["blob_bytes"] == blob_bytes and storage_read["toc_bytes"] * 50 < blob_bytes
    toc_bytes = storage_read["toc_bytes"]
    print(f"\n{variant}: containers/storage fetched {toc_bytes} of {blob_bytes} bytes for the TOC")
    stargz_read = reads.get("github.com/containerd/stargz-snapshotter/estargz/zstdchunked")
    if ESTARGZ_TOC_ANNOTATION in accel_zstd_chunked.annotations:
        assert variant == "stargz" and stargz_read is not None
        assert stargz_read["file"] == "etc/passwd"
        fetched = stargz_read["toc_bytes"] + stargz_read["file_bytes"]
        assert fetched * 50 < blob_bytes, stargz_read
        print(f"stargz-snapshotter's reader fetched {fetched} of {blob_bytes} bytes to read etc/passwd")
        # today's containers/storage falls back to a whole-layer pull on the stargz annotations
        assert any("estargz layers don't support partial pulls" in w for w in verdict.raw["warnings"])
    else:
        assert variant == "containers-storage" and stargz_read is None
        # stargz-snapshotter's reader cannot open the current footer
        assert any("stargz-snapshotter's reader" in w for w in verdict.raw["warnings"])


def test_stargz_variant_is_rejected_with_a_wrong_stargz_toc_digest(
    checker: Path, layer: Layer, workdir: Path
) -> None:
    blob = write_accel_zstd_chunked(layer, workdir, "stargz")
    annotations = {**blob.annotations, ESTARGZ_TOC_ANNOTATION: "sha256:" + "0" * 64}
    verdict = conformance.check_zstd_chunked(blob.path, annotations, None)
    assert not verdict.ok
    assert "VerifyTOC" in verdict.error


def test_usage_errors_raise(checker: Path) -> None:
    with pytest.raises(conformance.CheckerError, match="unknown subcommand"):
        conformance.run_checker(["no-such-subcommand"])


# --- a hardlink to a file of a lower layer (issue 20) ---------------------------------------------


def test_estargz_hardlink_to_a_lower_layer_the_reference_reader_refuses_so_do_we(
    checker: Path, workdir: Path
) -> None:
    """The reference writer writes it, the reference reader cannot open it: our reader fails it with the
    reference's words (so `check` agrees) and our driver refuses to write it, naming the entry."""
    from accel import digest as dg
    from accel.drivers.base import LayerInput
    from accel.drivers.estargz import EStargzDriver, EStargzOptions
    from accel.drivers.reader import LayerReadError
    from accel.errors import DriverError
    from accel.model import SourceLayer
    from accel.oci import Descriptor
    from accel.store import ContentStore

    tar_path = workdir / "lower-hardlink.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as archive:
        _add(archive, "x/", tarfile.DIRTYPE, mode=0o755)
        _add(archive, "x/link", tarfile.LNKTYPE, linkname="x/base", mode=0o644)
    reference = workdir / "lower-hardlink.estargz"
    annotations = conformance.gen_estargz(tar_path, reference)
    verdict = conformance.check_estargz(reference, annotations[ESTARGZ_TOC_ANNOTATION], None)
    assert not verdict.ok and "isn't found" in verdict.error

    store = ContentStore(workdir / "lower-hardlink-store")
    raw = tar_path.read_bytes()
    blob_digest = store.put_bytes(reference.read_bytes())
    desc = Descriptor(
        media_type="application/vnd.oci.image.layer.v1.tar+gzip",
        digest=blob_digest,
        size=reference.stat().st_size,
        annotations=annotations,
    )
    reader = EStargzDriver.reader
    with pytest.raises(LayerReadError, match="is a hardlink but the linkname 'x/base' isn't found"):
        reader.read(store.path(blob_digest), SourceLayer(descriptor=desc, diff_id=dg.of_bytes(raw)), [])

    gzipped = store.put_bytes(gzip.compress(raw))
    source = Descriptor(media_type=desc.media_type, digest=gzipped, size=store.size(gzipped))
    with pytest.raises(DriverError, match="'x/link' is a hardlink to 'x/base', which is not in this layer"):
        EStargzDriver(EStargzOptions()).convert_layer(LayerInput(source, dg.of_bytes(raw), store))


def test_zstd_chunked_hardlink_to_a_lower_layer_the_reference_reader_refuses_so_do_we(
    checker: Path, workdir: Path
) -> None:
    """containers/storage cannot apply a zstd:chunked layer with a hardlink to a file of a lower layer: our
    reader fails it too, and our driver refuses to write it, naming the entry."""
    from accel import digest as dg
    from accel.drivers import load_driver
    from accel.drivers.base import LayerInput
    from accel.drivers.reader import LayerReadError
    from accel.drivers.zstdchunked import ZstdChunkedDriver
    from accel.errors import DriverError
    from accel.model import SourceLayer
    from accel.oci import Descriptor
    from accel.store import ContentStore

    tar_path = workdir / "lower-hardlink-zstd.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as archive:
        _add(archive, "x/", tarfile.DIRTYPE, mode=0o755)
        _add(archive, "x/link", tarfile.LNKTYPE, linkname="x/base", mode=0o644)
    raw = tar_path.read_bytes()
    reference = workdir / "lower-hardlink.zstd"
    annotations = conformance.gen_zstd_chunked(tar_path, reference)
    verdict = conformance.check_zstd_chunked(reference, annotations, dg.of_bytes(raw))
    assert not verdict.ok and "x/base" in verdict.error

    store = ContentStore(workdir / "lower-hardlink-zstd-store")
    blob_digest = store.put_bytes(reference.read_bytes())
    desc = Descriptor(
        media_type="application/vnd.oci.image.layer.v1.tar+zstd",
        digest=blob_digest,
        size=reference.stat().st_size,
        annotations=annotations,
    )
    with pytest.raises(LayerReadError, match="is a hardlink but the linkname 'x/base' isn't found"):
        ZstdChunkedDriver.reader.read(
            store.path(blob_digest), SourceLayer(descriptor=desc, diff_id=dg.of_bytes(raw)), []
        )

    gzipped = store.put_bytes(gzip.compress(raw))
    source = Descriptor(
        media_type="application/vnd.oci.image.layer.v1.tar+gzip", digest=gzipped, size=store.size(gzipped)
    )
    with pytest.raises(DriverError, match="'x/link' is a hardlink to 'x/base', which is not in this layer"):
        load_driver("zstdchunked").convert_layer(LayerInput(source, dg.of_bytes(raw), store))


@pytest.mark.parametrize("tar_format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_our_readers_accept_what_the_reference_writers_write(
    checker: Path, workdir: Path, tar_format: int
) -> None:
    """No false reject of `check`: blobs written by the reference writers (every entry kind and attribute)
    pass our readers, TOC against tar and tar-split included."""
    from accel import digest as dg
    from accel.drivers.estargz import EStargzDriver
    from accel.drivers.zstdchunked import ZstdChunkedDriver
    from accel.model import SourceLayer
    from accel.oci import Descriptor
    from accel.store import ContentStore

    tar = workdir / f"reference-readback-{tar_format}.tar"
    write_layer_tar(tar, tar_format)
    store = ContentStore(workdir / f"reference-readback-store-{tar_format}")
    for generate, reader, media_type in (
        (
            conformance.gen_zstd_chunked,
            ZstdChunkedDriver.reader,
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
        (conformance.gen_estargz, EStargzDriver.reader, "application/vnd.oci.image.layer.v1.tar+gzip"),
    ):
        out = workdir / f"reference-readback-{tar_format}.{media_type.rsplit('+', 1)[1]}"
        annotations = generate(tar, out)
        digest = store.put_bytes(out.read_bytes())
        desc = Descriptor(
            media_type=media_type, digest=digest, size=out.stat().st_size, annotations=annotations
        )
        stream = gzip.decompress(out.read_bytes()) if media_type.endswith("gzip") else tar.read_bytes()
        checks: list[str] = []
        reader.read(store.path(digest), SourceLayer(descriptor=desc, diff_id=dg.of_bytes(stream)), checks)
        assert "toc == tar" in checks, checks
