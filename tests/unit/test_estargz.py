"""eStargz driver: layout, TOC, footer, landmarks and metadata fidelity, checked against the raw blob."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import logging
import os
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Any

import pytest
from isal import isal_zlib
from zlib_ng import zlib_ng

from accel import constants as mt
from accel import trees
from accel.drivers import load_driver
from accel.drivers.base import ConvertedLayer, LayerInput
from accel.drivers.estargz import FOOTER_SIZE, EStargzDriver, EStargzOptions
from accel.drivers.reader import LayerReadError
from accel.errors import ConfigError, DigestMismatch, InvalidImage
from accel.model import SourceLayer
from accel.oci import Descriptor
from accel.store import ContentStore
from tests.harness import imagegen

MTIME = 1_700_000_000
SMALL_CHUNK = 4096
BIG_PAYLOAD = os.urandom(3 * SMALL_CHUNK) + b"tail" * 250  # 3 full chunks + a short one
LONG_NAME = "deep/" + "n" * 120 + "/ünïcødé-" + "x" * 40 + ".txt"
LANDMARKS = {mt.ESTARGZ_PREFETCH_LANDMARK, mt.ESTARGZ_NO_PREFETCH_LANDMARK}


# --- building sources ------------------------------------------------------------------------------


def _add(
    tar: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **fields: Any
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mtime = MTIME
    info.mode = 0o644
    for key, value in fields.items():
        setattr(info, key, value)
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def _all_kinds_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "etc", tarfile.DIRTYPE, mode=0o755)
        _add(tar, "etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n", uname="root", gname="root")
        _add(tar, "etc/hosts", data=b"127.0.0.1 localhost\n", uname="root", gname="root")
        _add(tar, "usr", tarfile.DIRTYPE, mode=0o755)
        _add(tar, "usr/bin", tarfile.DIRTYPE, mode=0o755)
        _add(tar, "usr/bin/su", data=b"\x7fELF-su", mode=0o4755, uid=0, gid=0)
        _add(
            tar, "usr/bin/big", data=BIG_PAYLOAD, mode=0o2755, uid=1000, gid=1001, uname="app", gname="staff"
        )
        _add(tar, "usr/bin/empty", data=b"")
        _add(tar, "usr/bin/hard", tarfile.LNKTYPE, linkname="usr/bin/su")
        _add(tar, "usr/bin/soft", tarfile.SYMTYPE, linkname="su", mode=0o777)
        _add(tar, "dev", tarfile.DIRTYPE, mode=0o755)
        _add(tar, "dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
        _add(tar, "dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o660)
        _add(tar, "dev/pipe", tarfile.FIFOTYPE, mode=0o600)
        _add(tar, "tmp", tarfile.DIRTYPE, mode=0o1777)
        _add(tar, LONG_NAME, data=b"long and non-ascii", uid=3_000_000, gid=4_000_000)
        _add(
            tar,
            "usr/bin/ping",
            data=b"ping",
            pax_headers={
                "SCHILY.xattr.security.capability": "\x01\x00\x00\x02",
                "SCHILY.xattr.user.comment": "héllo",
            },
        )
        _add(tar, "etc/.wh..wh..opq", data=b"")
        _add(tar, "etc/.wh.removed", data=b"")
    return buf.getvalue()


def _layer(store: ContentStore, tar_bytes: bytes, diff_id: str | None = None) -> LayerInput:
    blob = gzip.compress(tar_bytes, mtime=0)
    digest = store.put_bytes(blob)
    descriptor = Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=digest, size=len(blob))
    return LayerInput(descriptor, diff_id or "sha256:" + hashlib.sha256(tar_bytes).hexdigest(), store)


def _convert(store: ContentStore, tar_bytes: bytes, **options: Any) -> tuple[ConvertedLayer, bytes]:
    driver = EStargzDriver(EStargzOptions(**options))
    result = driver.convert_layer(_layer(store, tar_bytes))
    return result, store.path(result.descriptor.digest).read_bytes()


# --- reading blobs, independently of the driver ----------------------------------------------------


def _toc_offset(blob: bytes) -> int:
    """Parse the 51-byte footer exactly as docs/estargz.md lays it out."""
    footer = blob[-51:]
    assert footer[:4] == b"\x1f\x8b\x08\x04"  # gzip, deflate, FEXTRA only
    (xlen,) = struct.unpack_from("<H", footer, 10)
    assert xlen == 26
    extra = footer[12:38]
    assert extra[:2] == b"SG"
    assert struct.unpack_from("<H", extra, 2)[0] == 22
    assert extra[20:] == b"STARGZ"
    assert gzip.decompress(footer) == b""  # an empty but valid gzip member
    return int(extra[4:20], 16)


def _member_at(blob: bytes, offset: int) -> tuple[bytes, bytes]:
    """Inflate the single gzip member that starts at `offset`; also return what follows it."""
    inflater = zlib.decompressobj(wbits=31)
    data = inflater.decompress(blob[offset:])
    assert inflater.eof, f"no complete gzip member at {offset}"
    return data, inflater.unused_data


def _toc_json(blob: bytes) -> bytes:
    member, rest = _member_at(blob, _toc_offset(blob))
    assert rest == blob[-51:], "the TOC member must be followed directly by the footer"
    with tarfile.open(fileobj=io.BytesIO(member)) as tar:
        first = tar.next()
        assert first is not None and first.name == mt.ESTARGZ_TOC_TAR_NAME
        assert tar.next() is None, "the TOC must be the last tar entry"
        extracted = tar.extractfile(first)
        assert extracted is not None
        return extracted.read()


def _toc(blob: bytes) -> dict[str, Any]:
    return json.loads(_toc_json(blob))


def _snapshot(tar_bytes: bytes, skip: frozenset[str] | set[str] = frozenset()) -> list[dict[str, Any]]:
    """Every entry's observable metadata and content, in order."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for info in tar:
            if info.name in skip:
                continue
            content = None
            if info.isreg():
                extracted = tar.extractfile(info)
                assert extracted is not None
                content = extracted.read()
            out.append(
                {
                    "name": info.name,
                    "type": info.type,
                    "mode": info.mode,
                    "uid": info.uid,
                    "gid": info.gid,
                    "uname": info.uname,
                    "gname": info.gname,
                    "mtime": info.mtime,
                    "size": info.size,
                    "linkname": info.linkname,
                    "dev": (info.devmajor, info.devminor) if info.ischr() or info.isblk() else None,
                    "xattrs": {k: v for k, v in info.pax_headers.items() if k.startswith("SCHILY.xattr.")},
                    "content": content,
                }
            )
    return out


# --- tests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0, 9])
def test_round_trip_keeps_every_entry(store: ContentStore, level: int) -> None:
    source = _all_kinds_tar()
    _, blob = _convert(store, source, chunk_size=SMALL_CHUNK, compression_level=level)
    converted = _snapshot(gzip.decompress(blob), skip=LANDMARKS | {mt.ESTARGZ_TOC_TAR_NAME})
    assert converted == _snapshot(source)
    by_name = {e["name"]: e for e in converted}
    assert by_name[LONG_NAME]["content"] == b"long and non-ascii"
    assert by_name["usr/bin/su"]["mode"] == 0o4755
    assert by_name["usr/bin/ping"]["xattrs"]["SCHILY.xattr.security.capability"] == "\x01\x00\x00\x02"
    assert by_name["usr/bin/big"]["content"] == BIG_PAYLOAD


def test_descriptor_annotations_and_diff_id(store: ContentStore) -> None:
    result, blob = _convert(store, _all_kinds_tar(), chunk_size=SMALL_CHUNK)
    descriptor = result.descriptor
    assert descriptor.media_type == mt.OCI_LAYER_GZIP
    assert descriptor.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert descriptor.size == len(blob)
    uncompressed = gzip.decompress(blob)  # every member, TOC and footer included
    assert result.diff_id == "sha256:" + hashlib.sha256(uncompressed).hexdigest()
    assert descriptor.annotations is not None
    assert descriptor.annotations[mt.ESTARGZ_UNCOMPRESSED_SIZE] == str(len(uncompressed))
    assert (
        descriptor.annotations[mt.ESTARGZ_TOC_DIGEST]
        == "sha256:" + hashlib.sha256(_toc_json(blob)).hexdigest()
    )
    assert result.source.digest != descriptor.digest
    with tarfile.open(fileobj=io.BytesIO(uncompressed)) as tar:
        assert tar.getnames()[-1] == mt.ESTARGZ_TOC_TAR_NAME


def test_toc_entries_carry_the_reference_fields(store: ContentStore) -> None:
    _, blob = _convert(store, _all_kinds_tar(), chunk_size=SMALL_CHUNK)
    toc = _toc(blob)
    assert toc["version"] == 1
    by_name = {e["name"]: e for e in toc["entries"] if e["type"] != "chunk"}
    assert by_name["etc/"]["type"] == "dir"
    assert by_name["etc/"]["mode"] == 0o755
    assert by_name["etc/"]["modtime"] == "2023-11-14T22:13:20Z"
    assert by_name["usr/bin/hard"] == {
        "name": "usr/bin/hard",
        "type": "hardlink",
        "modtime": "2023-11-14T22:13:20Z",
        "linkName": "usr/bin/su",
        "mode": 0o644,
    }
    assert by_name["usr/bin/soft"]["type"] == "symlink" and by_name["usr/bin/soft"]["linkName"] == "su"
    assert (
        by_name["dev/null"]["type"],
        by_name["dev/null"]["devMajor"],
        by_name["dev/null"]["devMinor"],
    ) == (
        "char",
        1,
        3,
    )
    assert by_name["dev/sda"]["type"] == "block" and by_name["dev/sda"]["devMajor"] == 8
    assert "devMinor" not in by_name["dev/sda"]  # zero values are omitted, as Go's omitempty does
    assert by_name["dev/pipe"]["type"] == "fifo"
    big = by_name["usr/bin/big"]
    assert (big["uid"], big["gid"], big["userName"], big["groupName"]) == (1000, 1001, "app", "staff")
    assert big["size"] == len(BIG_PAYLOAD)
    assert big["digest"] == "sha256:" + hashlib.sha256(BIG_PAYLOAD).hexdigest()
    assert by_name[LONG_NAME]["uid"] == 3_000_000
    assert by_name["etc/hosts"].get("userName") is None  # unchanged owner names are written once
    xattrs = by_name["usr/bin/ping"]["xattrs"]
    assert base64.b64decode(xattrs["security.capability"]) == b"\x01\x00\x00\x02"
    assert base64.b64decode(xattrs["user.comment"]) == "héllo".encode()
    empty = by_name["usr/bin/empty"]
    assert "offset" not in empty and "size" not in empty
    assert empty["digest"] == "sha256:" + hashlib.sha256(b"").hexdigest()


def _reassemble_from_members(blob: bytes) -> dict[str, bytes]:
    """Rebuild every file from the members its TOC entries point at, checking each digest on the way."""
    entries = _toc(blob)["entries"]
    offsets = [e["offset"] for e in entries if "offset" in e]
    assert offsets == sorted(set(offsets)), "each chunk starts its own member, in order"
    assert offsets[-1] < _toc_offset(blob)
    files: dict[str, bytes] = {}
    sizes: dict[str, int] = {}
    current = ""
    for entry in entries:
        if entry["type"] == "reg":
            current = entry["name"]
            files[current], sizes[current] = b"", entry.get("size", 0)
        if "offset" not in entry:
            continue
        chunk_offset = entry.get("chunkOffset", 0)
        assert chunk_offset == len(files[current])
        chunk_size = entry.get("chunkSize", sizes[current] - chunk_offset)
        member, _ = _member_at(blob, entry["offset"])
        chunk = member[:chunk_size]
        assert entry["chunkDigest"] == "sha256:" + hashlib.sha256(chunk).hexdigest()
        files[current] += chunk
    for entry in entries:
        if entry["type"] == "reg":
            assert len(files[entry["name"]]) == entry.get("size", 0)
            assert entry["digest"] == "sha256:" + hashlib.sha256(files[entry["name"]]).hexdigest()
    return files


def test_every_digest_matches_the_member_at_its_offset(store: ContentStore) -> None:
    source = _all_kinds_tar()
    _, blob = _convert(store, source, chunk_size=SMALL_CHUNK)
    files = _reassemble_from_members(blob)
    assert files.pop(mt.ESTARGZ_NO_PREFETCH_LANDMARK) == b"\x0f"
    assert files == {e["name"]: e["content"] for e in _snapshot(source) if e["content"] is not None}


def test_large_file_is_split_into_chunk_entries(store: ContentStore) -> None:
    _, blob = _convert(store, _all_kinds_tar(), chunk_size=SMALL_CHUNK)
    entries = _toc(blob)["entries"]
    start = next(i for i, e in enumerate(entries) if e["name"] == "usr/bin/big")
    pieces = entries[start : start + 4]
    assert [e["type"] for e in pieces] == ["reg", "chunk", "chunk", "chunk"]
    assert entries[start + 4]["type"] != "chunk"
    assert [e.get("chunkOffset", 0) for e in pieces] == [0, SMALL_CHUNK, 2 * SMALL_CHUNK, 3 * SMALL_CHUNK]
    # Full chunks carry chunkSize; the short last one leaves it implicit, like the reference writer.
    assert [e.get("chunkSize") for e in pieces] == [SMALL_CHUNK, SMALL_CHUNK, SMALL_CHUNK, None]
    assert all(e["name"] == "usr/bin/big" for e in pieces)


def test_default_chunk_size_keeps_small_files_whole(store: ContentStore) -> None:
    _, blob = _convert(store, _all_kinds_tar())
    entries = _toc(blob)["entries"]
    assert not [e for e in entries if e["type"] == "chunk"]
    big = next(e for e in entries if e["name"] == "usr/bin/big")
    assert "chunkSize" not in big and big["chunkDigest"] == big["digest"]


def test_no_prefetch_landmark_comes_first(store: ContentStore) -> None:
    _, blob = _convert(store, _all_kinds_tar())
    entries = _toc(blob)["entries"]
    assert entries[0]["name"] == mt.ESTARGZ_NO_PREFETCH_LANDMARK
    assert entries[0]["size"] == 1
    assert not any(e["name"] == mt.ESTARGZ_PREFETCH_LANDMARK for e in entries)
    member, _ = _member_at(blob, entries[0]["offset"])
    assert member[:1] == b"\x0f"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        names = tar.getnames()
        landmark = tar.extractfile(names[0])
        assert landmark is not None and landmark.read() == b"\x0f"
    assert names[0] == mt.ESTARGZ_NO_PREFETCH_LANDMARK
    assert names[1:-1] == [e["name"] for e in _snapshot(_all_kinds_tar())]


def test_prioritized_files_come_first_with_parents_then_landmark(store: ContentStore) -> None:
    source = _all_kinds_tar()
    wanted = ["/usr/bin/hard", "etc/hosts", "not/in/this/layer", "./dev/null"]
    _, blob = _convert(store, source, prioritized_files=wanted)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        names = tar.getnames()
    front = ["usr", "usr/bin", "usr/bin/su", "usr/bin/hard", "etc", "etc/hosts", "dev", "dev/null"]
    assert names[: len(front)] == front  # a hardlink brings its target along
    assert names[len(front)] == mt.ESTARGZ_PREFETCH_LANDMARK
    rest = [e["name"] for e in _snapshot(source) if e["name"] not in front]
    assert names[len(front) + 1 : -1] == rest
    assert mt.ESTARGZ_NO_PREFETCH_LANDMARK not in names
    toc_names = [e["name"] for e in _toc(blob)["entries"] if e["type"] != "chunk"]
    assert toc_names[: len(front) + 1] == [
        *(n + "/" if n in ("usr", "usr/bin", "etc", "dev") else n for n in front),
        mt.ESTARGZ_PREFETCH_LANDMARK,
    ]
    # Nothing lost or changed by the reordering.
    converted = _snapshot(gzip.decompress(blob), skip=LANDMARKS | {mt.ESTARGZ_TOC_TAR_NAME})
    assert sorted(converted, key=lambda e: e["name"]) == sorted(_snapshot(source), key=lambda e: e["name"])
    # The uncompressed source was spooled to a scratch file, which is gone again.
    assert list((store.root / "ingest").iterdir()) == []


def test_prioritized_keeps_only_the_last_copy_of_a_duplicate(store: ContentStore) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "app.conf", data=b"old")
        _add(tar, "lib.so", data=b"old lib")
        _add(tar, "other", data=b"x")
        _add(tar, "app.conf", data=b"new")
        _add(tar, "lib.so", data=b"new lib")
    _, blob = _convert(store, buf.getvalue(), prioritized_files=["app.conf"])
    converted = _snapshot(gzip.decompress(blob), skip={mt.ESTARGZ_TOC_TAR_NAME})
    assert [(e["name"], e["content"]) for e in converted] == [
        ("app.conf", b"new"),
        (mt.ESTARGZ_PREFETCH_LANDMARK, b"\x0f"),
        ("other", b"x"),
        ("lib.so", b"new lib"),  # where its last copy was
    ]


def test_oversized_members_are_compressed_inline(
    store: ContentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import accel.drivers.estargz as estargz

    monkeypatch.setattr(estargz.members, "MEMBER_BUFFER_LIMIT", 1000)
    source = _all_kinds_tar()
    reference, _ = _convert(ContentStore(store.root.parent / "reference"), source, chunk_size=SMALL_CHUNK)
    result, blob = _convert(store, source, chunk_size=SMALL_CHUNK)
    assert result.diff_id == reference.diff_id  # same tar, only the member compression path differs
    assert _snapshot(gzip.decompress(blob), skip=LANDMARKS | {mt.ESTARGZ_TOC_TAR_NAME}) == _snapshot(source)
    files = _reassemble_from_members(blob)
    assert files["usr/bin/big"] == BIG_PAYLOAD


def test_member_batching_does_not_change_the_blob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import accel.drivers.estargz as estargz

    source = _all_kinds_tar()
    default, default_blob = _convert(ContentStore(tmp_path / "a"), source, chunk_size=SMALL_CHUNK)
    monkeypatch.setattr(estargz.members, "BATCH_MEMBERS", 2)  # many batches, and waits on the pool
    monkeypatch.setattr(estargz.members, "BATCH_BYTES", 100)
    batched, batched_blob = _convert(ContentStore(tmp_path / "b"), source, chunk_size=SMALL_CHUNK)
    assert batched == default and batched_blob == default_blob


def test_output_is_deterministic(tmp_path: Path) -> None:
    source = _all_kinds_tar()
    first, _ = _convert(ContentStore(tmp_path / "a"), source, chunk_size=SMALL_CHUNK)
    second, _ = _convert(ContentStore(tmp_path / "b"), source, chunk_size=SMALL_CHUNK)
    assert first == second


def _gzip_with(module: Any, level: int, data: bytes) -> bytes:
    compressor = module.compressobj(level, module.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


def _members(blob: bytes) -> list[tuple[bytes, bytes]]:
    """Every gzip member before the footer, as (its compressed bytes, its content)."""
    members, rest = [], blob[:-FOOTER_SIZE]
    while rest:
        inflater = zlib.decompressobj(wbits=31)
        content = inflater.decompress(rest)
        assert inflater.eof
        members.append((rest[: len(rest) - len(inflater.unused_data)], content))
        rest = inflater.unused_data
    return members


@pytest.mark.parametrize("level", [1, 6, 9])
def test_compressible_members_are_zlib_ng_at_the_level_and_the_rest_take_the_fast_path(
    store: ContentStore, level: int
) -> None:
    from accel.drivers.estargz.members import FAST_LEVEL, FAST_PATH_SAVING

    _, blob = _convert(store, _all_kinds_tar(), chunk_size=SMALL_CHUNK, compression_level=level)
    fast_members = []
    for compressed, content in _members(blob):
        fast = _gzip_with(isal_zlib, FAST_LEVEL, content)
        if len(fast) > len(content) * (1 - FAST_PATH_SAVING):
            assert compressed == fast
            fast_members.append(content)
        else:
            assert compressed == _gzip_with(zlib_ng, level, content)
    # The three full chunks of random bytes; the short last chunk shares its member with text.
    assert fast_members == [BIG_PAYLOAD[i : i + SMALL_CHUNK] for i in range(0, 3 * SMALL_CHUNK, SMALL_CHUNK)]


def test_level_0_stores_every_member(store: ContentStore) -> None:
    _, blob = _convert(store, _all_kinds_tar(), chunk_size=SMALL_CHUNK, compression_level=0)
    for compressed, content in _members(blob):
        assert compressed == _gzip_with(zlib_ng, 0, content)


def test_a_member_with_a_compressible_start_goes_to_zlib_ng_without_a_trial_of_the_whole() -> None:
    from accel.drivers.estargz.members import SAMPLE_BYTES, compress_member

    random_bytes = os.urandom(256 << 10)
    assert compress_member([random_bytes], 6) == _gzip_with(isal_zlib, 1, random_bytes)
    text_then_random = b"text " * (SAMPLE_BYTES // 5 + 1) + random_bytes
    assert compress_member([text_then_random], 6) == _gzip_with(zlib_ng, 6, text_then_random)


def test_the_fast_path_keeps_random_data_within_a_tenth_of_a_percent_of_level_9() -> None:
    from accel.drivers.estargz.members import compress_member

    data = os.urandom(1 << 20)
    assert len(compress_member([data], 9)) < len(_gzip_with(zlib_ng, 9, data)) * 1.001


def test_a_broken_or_foreign_tar_is_refused_by_layer(store: ContentStore) -> None:
    source = _all_kinds_tar()
    with pytest.raises(InvalidImage, match="broken tar"):
        _convert(store, source[: 1024 + 100])  # cut inside a header
    with pytest.raises(InvalidImage, match="not a readable tar"):
        _convert(store, b"not a tar at all" * 200)


def test_the_forward_reader_skips_forward_and_refuses_to_seek_back() -> None:
    from accel.drivers.estargz.entries import ForwardReader

    reader = ForwardReader(io.BytesIO(bytes(range(100))))
    assert reader.read(10) == bytes(range(10)) and reader.tell() == 10
    assert reader.seek(10) == 10 and reader.seek(5, io.SEEK_CUR) == 15
    assert reader.read(2) == bytes([15, 16])
    with pytest.raises(tarfile.StreamError):
        reader.seek(3)
    assert reader.seek(500) == 100 and reader.read(1) == b""


@pytest.mark.parametrize("form", imagegen.SPARSE_FORMS)
def test_sparse_files_are_written_expanded(store: ContentStore, form: imagegen.SparseForm) -> None:
    sparse = imagegen.SparseFile(
        "sp/holes", 3 * SMALL_CHUNK + 100, ((10, b"head" * 300), (2 * SMALL_CHUNK + 7, b"tail" * 40))
    )
    source = imagegen.sparse_tar(sparse, form, after={"sp/after": b"after the sparse file"})
    _, blob = _convert(store, source, chunk_size=SMALL_CHUNK)
    files = _reassemble_from_members(blob)  # every chunk and file digest checked against its member
    assert files["sp/holes"] == sparse.content()
    assert files["sp/after"] == b"after the sparse file"


def test_reconverting_an_estargz_layer_drops_its_old_toc_and_landmark(store: ContentStore) -> None:
    _, blob = _convert(store, _all_kinds_tar(), chunk_size=SMALL_CHUNK)
    _, blob_again = _convert(store, gzip.decompress(blob), chunk_size=SMALL_CHUNK)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob_again))) as tar:
        names = tar.getnames()
    assert names.count(mt.ESTARGZ_TOC_TAR_NAME) == 1
    assert names.count(mt.ESTARGZ_NO_PREFETCH_LANDMARK) == 1
    assert _toc(blob_again) == _toc(blob)


def test_empty_layer(store: ContentStore) -> None:
    for source in (b"", b"\0" * 1024):
        result, blob = _convert(store, source)
        names = [e["name"] for e in _toc(blob)["entries"]]
        assert names == [mt.ESTARGZ_NO_PREFETCH_LANDMARK]
        assert result.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest()


@pytest.mark.parametrize("prioritized", [[], ["etc/passwd"]])
def test_wrong_diff_id_raises_and_commits_nothing(store: ContentStore, prioritized: list[str]) -> None:
    layer = _layer(store, _all_kinds_tar(), diff_id="sha256:" + "0" * 64)
    before = set((store.root / "blobs" / "sha256").iterdir())
    driver = EStargzDriver(EStargzOptions(prioritized_files=prioritized))
    with pytest.raises(DigestMismatch, match="digest mismatch"):
        driver.convert_layer(layer)
    assert set((store.root / "blobs" / "sha256").iterdir()) == before
    assert list((store.root / "ingest").iterdir()) == []


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"compression_level": 10}, "compression_level must be a gzip level from 0 to 9, got 10"),
        ({"compression_level": -1}, "compression_level must be a gzip level from 0 to 9, got -1"),
        ({"chunk_size": 0}, "chunk_size must be a positive number of bytes, got 0"),
        ({"chunk_size": -4096}, "chunk_size must be a positive number of bytes, got -4096"),
        ({"prioritized_files": ["/"]}, "prioritized_files entries must name a file"),
        ({"chunk_size": "big"}, "chunk_size"),
        ({"chunksize": 1}, "chunksize: unknown key (not an option of the estargz driver)"),
    ],
)
def test_options_validation(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=r"converter\.driver\.config for estargz") as excinfo:
        load_driver("estargz", config)
    assert message in str(excinfo.value)


def test_defaults_and_lookup() -> None:
    driver = load_driver("estargz")
    assert isinstance(driver, EStargzDriver)
    assert driver.options == EStargzOptions(
        compression_level=9, chunk_size=4 << 20, prioritized_files=[], docker2oci=True
    )
    assert driver.name == "estargz" and driver.version == EStargzDriver.implementation_version


def test_is_converted() -> None:
    def layer(annotations: dict[str, str] | None) -> Descriptor:
        return Descriptor(
            media_type=mt.OCI_LAYER_GZIP, digest="sha256:" + "a" * 64, size=1, annotations=annotations
        )

    toc = {mt.ESTARGZ_TOC_DIGEST: "sha256:" + "b" * 64}
    assert EStargzDriver.is_converted([layer(toc), layer(toc)])
    assert not EStargzDriver.is_converted([layer(toc), layer(None)])
    assert not EStargzDriver.is_converted([layer({"other": "x"})])
    assert not EStargzDriver.is_converted([])
    assert load_driver("estargz").is_converted([layer(toc)])


def test_a_non_utf8_name_is_kept_in_the_tar_and_logged_as_replaced_in_the_toc(
    store: ContentStore, caplog: pytest.LogCaptureFixture
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:  # fmt: skip
        info = tarfile.TarInfo(b"caf\xe9.txt".decode("utf-8", "surrogateescape"))
        info.size = 2
        tar.addfile(info, io.BytesIO(b"x\n"))
        tar.addfile(tarfile.TarInfo("plain.txt"), io.BytesIO(b""))
    with caplog.at_level(logging.WARNING, logger="accel.drivers.estargz.builder"):
        _, blob = _convert(store, buffer.getvalue())
    assert [e["name"] for e in _toc(blob)["entries"]][1:] == ["caf\ufffd.txt", "plain.txt"]
    with tarfile.open(
        fileobj=io.BytesIO(gzip.decompress(blob)), encoding="utf-8", errors="surrogateescape"
    ) as t:
        assert b"caf\xe9.txt" in [m.name.encode("utf-8", "surrogateescape") for m in t.getmembers()]
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "b'caf\\xe9.txt'" in warning and "caf\ufffd.txt" in warning


# --- the reader (accel.verify's view of a blob) ----------------------------------------------------


def test_the_reader_proves_the_written_blob_and_lists_the_source_entries(store: ContentStore) -> None:
    source = _all_kinds_tar()
    result, _ = _convert(store, source, chunk_size=SMALL_CHUNK)
    reader = EStargzDriver.reader
    assert reader.claims(result.descriptor) and reader.label(result.descriptor) == "estargz"
    checks: list[str] = []
    layer = SourceLayer(descriptor=result.descriptor, diff_id=result.diff_id)
    entries = reader.read(store.path(result.descriptor.digest), layer, checks)
    chunks = sum(
        1 for e in _toc(store.path(result.descriptor.digest).read_bytes())["entries"] if e.get("chunkDigest")
    )
    assert checks == ["footer", "toc digest", f"{chunks} chunks", "diff_id", "toc == tar"]
    # The TOC and the landmark are the format's own, not the layer's: the reader drops them.
    source_entries = reader.comparable_source(list(trees.iter_tar(io.BytesIO(source))))
    assert trees.compare({e.path: e for e in source_entries}, {e.path: e for e in entries}) == []


def test_the_reader_names_a_missing_footer_and_a_forged_toc_digest(
    store: ContentStore, tmp_path: Path
) -> None:
    result, blob = _convert(store, _all_kinds_tar(), chunk_size=SMALL_CHUNK)
    layer = SourceLayer(descriptor=result.descriptor, diff_id=result.diff_id)
    damaged = tmp_path / "damaged"
    for forged, expected in (
        (blob[:-FOOTER_SIZE] + bytes(FOOTER_SIZE), "eStargz footer: not a gzip header with an extra field"),
        (blob[: FOOTER_SIZE - 1], f"eStargz footer: a blob of {FOOTER_SIZE - 1} bytes holds no"),
    ):
        damaged.write_bytes(forged)
        with pytest.raises(LayerReadError, match=expected):
            EStargzDriver.reader.read(damaged, layer, [])
    forged_toc = result.descriptor.model_copy(
        update={"annotations": {mt.ESTARGZ_TOC_DIGEST: "sha256:" + "0" * 64}}
    )
    with pytest.raises(LayerReadError, match=r"eStargz TOC digest .* differs from the annotation"):
        EStargzDriver.reader.check(store.path(result.descriptor.digest), forged_toc)
