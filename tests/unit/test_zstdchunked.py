"""zstd:chunked driver: byte-exact output, the reference's chunking, TOC / tar-split / footer consistency."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import random
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard

from accel import constants as mt
from accel import digest as dg
from accel import trees
from accel.drivers import detect_format, load_driver, reader_for
from accel.drivers import zstdchunked as zc
from accel.drivers.base import LayerInput
from accel.drivers.reader import LayerReadError
from accel.errors import ConfigError, DigestMismatch, DriverError
from accel.model import SourceLayer
from accel.oci import Descriptor
from accel.store import ContentStore
from tests.harness.imagegen import tar_info as _info

# --- a literal port of the reference chunking (containers/storage compressor.go + rollsum.go) ----------


def reference_chunks(data: bytes, threshold: int = 1024) -> list[tuple[int, int, str]]:
    """(offset, size, chunkType) per chunk, byte by byte exactly as holesFinder + rollingChecksumReader."""
    pos, zeros, state = 0, 0, "read"

    def read_byte() -> tuple[int, int] | None:
        nonlocal pos, zeros, state
        while True:
            if state == "read":
                if zeros:
                    zeros -= 1
                    return 0, 0
                if pos >= len(data):
                    return None
                b = data[pos]
                pos += 1
                if b:
                    return 0, b
                zeros = 1
                state = "found" if zeros == threshold else "accumulate"
            elif state == "accumulate":
                if pos >= len(data):
                    state = "eof"
                    continue
                b = data[pos]
                pos += 1
                if b == 0:
                    zeros += 1
                    if zeros == threshold:
                        state = "found"
                else:
                    pos -= 1
                    state = "read"
            elif state == "found":
                if pos >= len(data):
                    state, hole, zeros = "eof", zeros, 0
                    return hole, 0
                b = data[pos]
                pos += 1
                if b:
                    pos -= 1
                    state, hole, zeros = "read", zeros, 0
                    return hole, 0
                zeros += 1
            else:
                if zeros:
                    zeros -= 1
                    return 0, 0
                return None

    s1, s2, window, wofs = 64 * 31, 64 * 63 * 31, [0] * 64, 0

    def roll(ch: int) -> None:
        nonlocal s1, s2, wofs
        drop = window[wofs]
        s1 = (s1 + ch - drop) & 0xFFFFFFFF
        s2 = (s2 + s1 - 64 * (drop + 31)) & 0xFFFFFFFF
        window[wofs] = ch
        wofs = (wofs + 1) & 63

    chunks, written, start = [], 0, 0
    while (item := read_byte()) is not None:
        hole, byte = item
        if hole:
            for _ in range(hole):
                roll(0)
            if written > start:
                chunks.append((start, written - start, ""))
            chunks.append((written, hole, "zeros"))
            written += hole
            start = written
            continue
        roll(byte)
        written += 1
        if s2 & 0xFFFF == 0xFFFF:
            chunks.append((start, written - start, ""))
            start = written
    if written > start:
        chunks.append((start, written - start, ""))
    return chunks


def fast_chunks(data: bytes, block: int) -> list[tuple[int, int, str]]:
    chunker = zc.FileChunker()
    events = [e for i in range(0, len(data), block) for e in chunker.feed(data[i : i + block])]
    events += list(chunker.finish())
    chunks: list[tuple[int, int, str]] = []
    offset, current = 0, None  # current: [start, size, kind]
    for event in events:
        kind = "zeros" if isinstance(event, zc.ZeroRun) else ""
        size = event.length if isinstance(event, zc.ZeroRun) else len(event.data)
        if current is not None and current[2] != kind:
            chunks.append(tuple(current))  # type: ignore[arg-type]
            current = None
        if current is None:
            current = [offset, 0, kind]
        current[1] += size
        offset += size
        if isinstance(event, zc.DataPiece) and event.cut_after:
            chunks.append(tuple(current))  # type: ignore[arg-type]
            current = None
    if current is not None:
        chunks.append(tuple(current))  # type: ignore[arg-type]
    return chunks


def _holey(rng: random.Random) -> bytes:
    parts = []
    for _ in range(12):
        parts.append(rng.randbytes(rng.choice([1, 63, 500, 9000, 70_000])))
        parts.append(bytes(rng.choice([1, 1023, 1024, 1025, 3000, 20_000])))
    return bytes(2000) + b"".join(parts) + bytes(1023)


@pytest.fixture(params=["native", "numpy"])
def rollsum_implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a chunking test with the C rolling sum (built by scripts/setup) and with the numpy fallback."""
    if request.param == "native":
        native = zc.rollsum._load_native()
        if native is None:
            pytest.skip(f"{zc.rollsum.NATIVE_LIBRARY.name} is not built (scripts/setup builds it)")
        monkeypatch.setattr(zc.rollsum, "_rollsum_cuts", native)
    else:
        monkeypatch.setattr(zc.rollsum, "_rollsum_cuts", zc.rollsum._rollsum_cuts_numpy)
    return str(request.param)


@pytest.mark.usefixtures("rollsum_implementation")
@pytest.mark.parametrize("block", [1000, 4096, 65_536, 1 << 20])
def test_chunking_matches_reference_byte_by_byte(block: int) -> None:
    rng = random.Random(block)
    random_data = rng.randbytes(200_000)
    assert fast_chunks(random_data, block) == reference_chunks(random_data)
    holey = _holey(rng)
    expected = reference_chunks(holey)
    assert any(kind == "zeros" for _, _, kind in expected) and len(expected) > 10
    assert fast_chunks(holey, block) == expected


@pytest.mark.usefixtures("rollsum_implementation")
def test_chunking_edge_cases() -> None:
    for data in (b"", bytes(10), bytes(1024), bytes(5000), b"\x01" + bytes(1024), bytes(1024) + b"\x01"):
        assert fast_chunks(data, 100) == reference_chunks(data), data[:8]


def whole_chunks(data: bytes) -> list[tuple[int, int, str]]:
    """rollsum.whole_file_chunks (a payload read in one piece) in reference_chunks' form."""
    chunks, start = [], 0
    for end, zeros in zc.rollsum.whole_file_chunks(data):
        chunks.append((start, end - start, "zeros" if zeros else ""))
        start = end
    return chunks


@pytest.mark.usefixtures("rollsum_implementation")
def test_whole_payload_chunks_match_reference() -> None:
    rng = random.Random(5)
    for data in (
        rng.randbytes(200_000),
        _holey(rng),
        rng.randbytes(5) + _holey(rng),  # starts with data, not a hole
        bytes(3000),
        bytes(1023),
        b"\x01" + bytes(1024),
        bytes(1024) + b"\x01",
        rng.randbytes(70) + bytes(1024) + rng.randbytes(70_000) + bytes(500),
        random.Random(0).randbytes(1000) * 300,  # a cut every 1000 bytes
    ):
        assert whole_chunks(data) == reference_chunks(data), len(data)


def test_native_and_numpy_rolling_sums_agree_across_history_and_blocks() -> None:
    native = zc.rollsum._load_native()
    if native is None:
        pytest.skip(f"{zc.rollsum.NATIVE_LIBRARY.name} is not built (scripts/setup builds it)")
    rng = random.Random(7)
    data = rng.randbytes(3 << 20)
    cuts = zc.rollsum._rollsum_cuts_numpy(bytes(63), data)
    assert len(cuts) > 10 and native(bytes(63), data) == cuts
    # A non-zero history and windows straddling it; sizes around where the C code splits a block into
    # 16 lanes of 16-byte steps (from 64 + 16 * 1024 bytes on) and leaves a tail to its scalar loop.
    for size in (0, 1, 63, 64, 65, 5000, 16_447, 16_448, 16_449, 16_448 + 255, 16_448 + 256, 300_001):
        history, piece = rng.randbytes(63), rng.randbytes(size)
        assert native(history, piece) == zc.rollsum._rollsum_cuts_numpy(history, piece)
    # This 1000-byte pattern has a cut in it: repeated, it cuts once per period, in every lane.
    periodic = random.Random(0).randbytes(1000) * 400
    cuts = zc.rollsum._rollsum_cuts_numpy(bytes(63), periodic)
    assert len(cuts) == 400 and native(bytes(63), periodic) == cuts


def test_without_the_native_library_the_numpy_fallback_writes_the_same_blob(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert zc.rollsum._load_native(tmp_path / "absent.lib") is None
    raw, _ = _make_tar()
    usual, _ = _convert(raw)
    monkeypatch.setattr(zc.rollsum, "_rollsum_cuts", zc.rollsum._rollsum_cuts_numpy)
    fallback, result = _convert(raw)
    assert fallback == usual and _decompress_all(fallback) == raw and result.toc_entries > 10


def test_crc64_iso_matches_go_check_value_and_chains() -> None:
    assert zc.crc64._crc64_iso_python(0, b"123456789") == 0xB90956C775A41001
    data = random.Random(1).randbytes(100_000)
    crc = zc.Crc64()
    crc.update(data[:777])
    crc.update(data[777:])
    assert crc.value == zc.crc64._crc64_update(0, data) == zc.crc64._crc64_iso_python(0, data)
    assert zc.crc64._crc64_iso_python(zc.crc64._crc64_iso_python(0, data[:5]), data[5:]) == crc.value


# --- building source layers ----------------------------------------------------------------------------


def _make_tar(fmt: int = tarfile.PAX_FORMAT) -> tuple[bytes, dict[str, bytes]]:
    rng = random.Random(fmt)
    files = {
        "etc/empty": b"",
        "etc/small": b"hello world\n",
        "bin/large": rng.randbytes(300_000),
        "var/zeros": bytes(200_000),
        "var/holey": rng.randbytes(5000) + bytes(4096) + rng.randbytes(3000),
        "bin/setuid": b"\x7fELF" + rng.randbytes(100),
        "usr/share/" + "ü" * 30 + "/" + "n" * 110: b"long non-ascii name",
    }
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_info("etc", tarfile.DIRTYPE, mode=0o755), None),
        (_info("bin", tarfile.DIRTYPE, mode=0o755), None),
        (_info("var", tarfile.DIRTYPE, mode=0o1777), None),
    ]
    for name, data in files.items():
        info = _info(name, mode=0o4755 if name == "bin/setuid" else 0o644, uid=1000, gid=100)
        info.uname, info.gname = "user", "users"
        if name == "etc/small" and fmt == tarfile.PAX_FORMAT:
            info.pax_headers = {"SCHILY.xattr.user.note": "n\x00te", "mtime": "1700000000.5"}
        members.append((info, data))
    members += [
        (_info("etc/link", tarfile.SYMTYPE, linkname="small"), None),
        (_info("etc/hard", tarfile.LNKTYPE, linkname="etc/small"), None),
        (_info("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666), None),
        (_info("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=1), None),
        (_info("run/fifo", tarfile.FIFOTYPE), None),
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue(), files


def _convert(raw: bytes, level: int = 3) -> tuple[bytes, zc.ZstdChunkedResult]:
    out = io.BytesIO()
    result = zc.write_zstd_chunked(io.BytesIO(raw), out, level)
    return out.getvalue(), result


def _decompress_all(blob: bytes) -> bytes:
    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True).read()


def _unzstd(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def _parts(blob: bytes, annotations: dict[str, str]) -> tuple[dict[str, Any], list[dict[str, Any]], bytes]:
    """TOC and tar-split located through the annotations, cross-checked against the footer."""
    footer = zc.ZstdChunkedFooter.parse(blob[-200:])
    m_off, m_len, m_raw, m_type = map(int, annotations[mt.ZSTD_CHUNKED_MANIFEST_POSITION].split(":"))
    t_off, t_len, t_raw = map(int, annotations[mt.ZSTD_CHUNKED_TARSPLIT_POSITION].split(":"))
    assert (m_off, m_len, m_raw, m_type) == (
        footer.manifest_offset,
        footer.manifest_length,
        footer.manifest_uncompressed_length,
        footer.manifest_type,
    )
    assert (t_off, t_len, t_raw) == (
        footer.tarsplit_offset,
        footer.tarsplit_length,
        footer.tarsplit_uncompressed_length,
    )
    assert m_type == 1
    # each metadata frame is a skippable frame whose payload is exactly the annotated range
    assert blob[m_off - 8 : m_off - 4] == zc.SKIPPABLE_FRAME_MAGIC
    assert int.from_bytes(blob[m_off - 4 : m_off], "little") == m_len
    assert blob[t_off - 8 : t_off - 4] == zc.SKIPPABLE_FRAME_MAGIC
    assert t_off == m_off + m_len + 8 and len(blob) == t_off + t_len + 8 + 64
    assert blob[-8:] == b"GNUlInUx"
    compressed_manifest = blob[m_off : m_off + m_len]
    assert annotations[mt.ZSTD_CHUNKED_MANIFEST_CHECKSUM] == dg.of_bytes(compressed_manifest)
    manifest = _unzstd(compressed_manifest)
    assert len(manifest) == m_raw
    toc = json.loads(manifest)
    compressed_tarsplit = blob[t_off : t_off + t_len]
    assert toc["tarSplitDigest"] == dg.of_bytes(compressed_tarsplit)
    tarsplit_raw = _unzstd(compressed_tarsplit)
    assert len(tarsplit_raw) == t_raw
    tarsplit = [json.loads(line) for line in tarsplit_raw.splitlines()]
    return toc, tarsplit, manifest


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_blob_decompresses_to_source_and_metadata_is_consistent(fmt: int) -> None:
    raw, files = _make_tar(fmt)
    blob, result = _convert(raw)
    assert _decompress_all(blob) == raw
    assert result.uncompressed_digest == dg.of_bytes(raw) and result.uncompressed_size == len(raw)
    toc, tarsplit, _ = _parts(blob, result.annotations)
    assert toc["version"] == 1

    # tar-split: segments + file payloads rebuild the tar; crc64 payloads match; positions count up
    rebuilt = []
    for position, entry in enumerate(tarsplit):
        assert entry["position"] == position
        if entry["type"] == zc.TARSPLIT_SEGMENT:
            rebuilt.append(base64.b64decode(entry["payload"]))
        else:
            content = files.get(entry["name"], b"")
            rebuilt.append(content)
            if entry.get("size", 0) > 0:
                crc = zc.Crc64()
                crc.update(content)
                assert base64.b64decode(entry["payload"]) == crc.digest()
            else:
                assert entry["payload"] is None
    assert b"".join(rebuilt) == raw

    # TOC: every regular file's digest, every chunk's digest and frame location
    by_name: dict[str, list[dict[str, Any]]] = {}
    for entry in toc["entries"]:
        by_name.setdefault(entry["name"], []).append(entry)
    for name, content in files.items():
        entries = by_name[name]
        main = entries[0]
        assert main["type"] == "reg" and main.get("size", 0) == len(content)
        if not content:
            assert "digest" not in main and "offset" not in main
            continue
        assert main["digest"] == dg.of_bytes(content)
        expected = reference_chunks(content)
        if len(expected) == 1:
            assert len(entries) == 1 and "chunkSize" not in main
            frames = [(main["offset"], main["endOffset"], 0, len(content))]
        else:
            assert [
                (e.get("chunkOffset", 0), e["chunkSize"], e.get("chunkType", "")) for e in entries
            ] == expected
            assert all(e["type"] == "chunk" for e in entries[1:])
            ends = [e["offset"] for e in entries[1:]] + [main["endOffset"]]
            frames = [
                (e["offset"], end, e.get("chunkOffset", 0), e["chunkSize"])
                for e, end in zip(entries, ends, strict=True)
            ]
            for e in entries:
                piece = content[e.get("chunkOffset", 0) : e.get("chunkOffset", 0) + e["chunkSize"]]
                assert e["chunkDigest"] == dg.of_bytes(piece)
        for start, end, offset, size in frames:
            assert zstandard.ZstdDecompressor().decompress(blob[start:end]) == content[offset : offset + size]
    zeros_entries = by_name["var/zeros"]
    assert zeros_entries[0].get("chunkType") is None  # one chunk: no chunk fields at all
    assert [e.get("chunkType", "") for e in by_name["var/holey"]] == ["", "zeros", ""]


def test_toc_entry_fields() -> None:
    raw, _ = _make_tar(tarfile.PAX_FORMAT)
    blob, result = _convert(raw)
    toc, _, manifest = _parts(blob, result.annotations)
    entries = {e["name"]: e for e in toc["entries"] if e["type"] != "chunk"}
    assert entries["etc/"] == {
        "type": "dir",
        "name": "etc/",
        "mode": 0o755,
        "modtime": "2023-11-14T22:13:20Z",
    }
    small = entries["etc/small"]
    assert small["xattrs"] == {"user.note": base64.b64encode(b"n\x00te").decode()}
    assert small["modtime"] == "2023-11-14T22:13:20.5Z"
    assert (small["uid"], small["gid"], small["mode"]) == (1000, 100, 0o644)
    assert entries["bin/setuid"]["mode"] == 0o4755
    assert entries["etc/link"]["linkName"] == "small" and entries["etc/link"]["type"] == "symlink"
    assert entries["etc/hard"]["linkName"] == "etc/small" and entries["etc/hard"]["type"] == "hardlink"
    assert (
        entries["dev/null"]["type"],
        entries["dev/null"]["devMajor"],
        entries["dev/null"]["devMinor"],
    ) == (
        "char",
        1,
        3,
    )
    assert entries["dev/sda"]["type"] == "block" and entries["run/fifo"]["type"] == "fifo"
    assert "usr/share/" + "ü" * 30 + "/" + "n" * 110 in entries
    # field order as the reference struct declares it
    assert list(small) == [
        "type",
        "name",
        "mode",
        "size",
        "uid",
        "gid",
        "modtime",
        "xattrs",
        "digest",
        "offset",
        "endOffset",
    ]
    assert manifest.startswith(b'{"version":1,"entries":[')


def test_annotation_formats() -> None:
    raw, _ = _make_tar()
    _, result = _convert(raw)
    a = result.annotations
    assert set(a) == {
        mt.ZSTD_CHUNKED_MANIFEST_CHECKSUM,
        mt.ZSTD_CHUNKED_MANIFEST_POSITION,
        mt.ZSTD_CHUNKED_TARSPLIT_POSITION,
    }
    assert dg.is_digest(a[mt.ZSTD_CHUNKED_MANIFEST_CHECKSUM])
    assert all(p.isdigit() for p in a[mt.ZSTD_CHUNKED_MANIFEST_POSITION].split(":"))
    assert len(a[mt.ZSTD_CHUNKED_MANIFEST_POSITION].split(":")) == 4
    assert len(a[mt.ZSTD_CHUNKED_TARSPLIT_POSITION].split(":")) == 3


def test_large_frames_stream_and_backpressure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zc.frames, "LARGE_FRAME", 50_000)
    monkeypatch.setattr(zc.frames, "MAX_PENDING_BYTES", 100_000)
    monkeypatch.setattr(zc.writer, "READ_SIZE", 30_000)
    monkeypatch.setattr(zc.writer, "_ZERO_BLOCK", bytes(30_000))
    monkeypatch.setattr(zc.writer, "FIRST_CHUNK_KEPT", 40_000)  # the file digest starts in the first chunk
    content = b"abcdefgh" * 40_000 + bytes(300_000) + random.Random(3).randbytes(400_000)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = _info("f")
        info.size = len(content)
        tf.addfile(info, io.BytesIO(content))
        for i in range(300):  # many header-only entries: a header frame larger than LARGE_FRAME
            tf.addfile(_info(f"d{i}", tarfile.DIRTYPE))
    raw = buf.getvalue()
    blob, result = _convert(raw, level=1)
    assert _decompress_all(blob) == raw
    toc, _, _ = _parts(blob, result.annotations)
    entries = [e for e in toc["entries"] if e["name"] == "f"]
    assert [(e.get("chunkOffset", 0), e["chunkSize"], e.get("chunkType", "")) for e in entries] == (
        reference_chunks(content)
    )
    assert entries[0]["digest"] == dg.of_bytes(content)
    ends = [e["offset"] for e in entries[1:]] + [entries[0]["endOffset"]]
    for entry, end in zip(entries, ends, strict=True):
        off = entry.get("chunkOffset", 0)
        assert _unzstd(blob[entry["offset"] : end]) == content[off : off + entry["chunkSize"]]
        assert entry["chunkDigest"] == dg.of_bytes(content[off : off + entry["chunkSize"]])


def test_whole_file_digests_resolved_after_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zc.writer, "MAX_PENDING_FILE_DIGESTS", 1)  # both the waiting and the deferred path
    rng = random.Random(11)
    files = {f"f{i}": rng.randbytes(300_000) for i in range(6)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, content in files.items():
            info = _info(name)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
    blob, result = _convert(buf.getvalue())
    toc, _, _ = _parts(blob, result.annotations)
    mains = {e["name"]: e for e in toc["entries"] if e["type"] == "reg"}
    assert all(len(reference_chunks(content)) > 1 for content in files.values())
    assert {name: e["digest"] for name, e in mains.items()} == {n: dg.of_bytes(c) for n, c in files.items()}


def test_empty_and_minimal_streams() -> None:
    for raw in (b"", bytes(1024), bytes(10240)):
        blob, result = _convert(raw)
        assert _decompress_all(blob) == raw
        toc, tarsplit, _ = _parts(blob, result.annotations)
        assert toc["entries"] == []
        assert b"".join(base64.b64decode(e["payload"]) for e in tarsplit) == raw


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (lambda: _info("bad\udcff", tarfile.DIRTYPE), "UTF-8"),
        (lambda: _info("cont", tarfile.CONTTYPE), "cannot represent"),
    ],
)
def test_unrepresentable_entries_are_refused(member: Any, message: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape"
    ) as tf:
        info = member()
        info.size = 0
        tf.addfile(info)
    with pytest.raises(DriverError, match=message):
        _convert(buf.getvalue())


def test_duplicate_paths_and_global_headers_are_refused() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.addfile(_info("a", tarfile.DIRTYPE))
        tf.addfile(_info("a/", tarfile.DIRTYPE))
    with pytest.raises(DriverError, match="twice"):
        _convert(buf.getvalue())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "x"}) as tf:
        tf.addfile(_info("a", tarfile.DIRTYPE))
    with pytest.raises(DriverError, match="cannot represent"):
        _convert(buf.getvalue())


# --- the driver ----------------------------------------------------------------------------------------


def _layer(tmp_path: Path, raw: bytes, diff_id: str | None = None) -> LayerInput:
    store = ContentStore(tmp_path / "store")
    compressed = gzip.compress(raw, mtime=0)
    digest = store.put_bytes(compressed)
    descriptor = Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=digest, size=len(compressed))
    return LayerInput(descriptor=descriptor, diff_id=diff_id or dg.of_bytes(raw), store=store)


def test_driver_converts_layer_into_store(tmp_path: Path) -> None:
    raw, _ = _make_tar()
    layer = _layer(tmp_path, raw)
    driver = load_driver("zstdchunked", {"level": 5})
    converted = driver.convert_layer(layer)
    d = converted.descriptor
    assert d.media_type == mt.OCI_LAYER_ZSTD
    assert converted.diff_id == layer.diff_id and converted.source == layer.descriptor
    blob = layer.store.path(d.digest).read_bytes()
    assert dg.of_bytes(blob) == d.digest and len(blob) == d.size
    assert _decompress_all(blob) == raw
    assert d.annotations is not None
    _parts(blob, d.annotations)
    assert driver.is_converted([d, d]) and not driver.is_converted([d, layer.descriptor])
    assert not driver.is_converted([])


def test_driver_checks_the_diff_id(tmp_path: Path) -> None:
    raw, _ = _make_tar()
    layer = _layer(tmp_path, raw, diff_id="sha256:" + "0" * 64)
    with pytest.raises(DigestMismatch):
        load_driver("zstdchunked").convert_layer(layer)
    assert len(list((tmp_path / "store" / "blobs" / "sha256").iterdir())) == 1  # only the source blob


@pytest.mark.parametrize("config", [{"level": 0}, {"level": 23}, {"level": "fast"}, {"chunk": 1}])
def test_bad_options_rejected(config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        load_driver("zstdchunked", config)


def test_options_defaults_and_cache_key() -> None:
    driver = load_driver("zstdchunked")
    assert isinstance(driver.options, zc.ZstdChunkedOptions)
    assert driver.options.level == 3 and driver.options.docker2oci is True
    assert driver.cache_key() != load_driver("zstdchunked", {"level": 4}).cache_key()


def test_output_is_deterministic() -> None:
    raw, _ = _make_tar()
    assert _convert(raw)[0] == _convert(raw)[0]
    assert (
        hashlib.sha256(_convert(raw, level=1)[0]).digest()
        != hashlib.sha256(_convert(raw, level=9)[0]).digest()
    )


# --- the reader (accel.verify's view of a blob) ----------------------------------------------------


def test_the_reader_proves_the_written_blob_and_names_a_forged_manifest_checksum(tmp_path: Path) -> None:
    raw, _ = _make_tar()
    blob, result = _convert(raw)
    path = tmp_path / "blob"
    path.write_bytes(blob)
    desc = Descriptor(
        media_type=mt.OCI_LAYER_ZSTD, digest=dg.of_bytes(blob), size=len(blob), annotations=result.annotations
    )
    layer = SourceLayer(descriptor=desc, diff_id=result.uncompressed_digest)
    reader = zc.ZstdChunkedDriver.reader
    assert reader.claims(desc) and reader.label(desc) == "zstd:chunked" and reader.keeps_source_tar
    checks: list[str] = []
    entries = reader.read(path, layer, checks)
    assert checks[:2] == ["footer", "manifest checksum"]
    assert checks[-3:] == ["diff_id", "toc == tar", "tar-split == tar"]
    assert [e.path for e in entries] == [e.path for e in trees.iter_tar(io.BytesIO(raw))]

    forged = desc.model_copy(
        update={"annotations": {**result.annotations, mt.ZSTD_CHUNKED_MANIFEST_CHECKSUM: dg.of_bytes(b"x")}}
    )
    with pytest.raises(LayerReadError, match="zstd:chunked manifest checksum"):
        reader.check(path, forged)
    path.write_bytes(blob[:-1])
    with pytest.raises(LayerReadError, match="zstd:chunked footer"):
        reader.check(path, desc)


# --- the stargz variant (what stargz-snapshotter and containers/storage <= 1.44 read) ------------------


def test_stargz_variant_differs_from_the_current_one_only_in_footer_chunk_digests_and_annotations() -> None:
    raw, files = _make_tar()
    current, current_result = _convert(raw)
    out = io.BytesIO()
    result = zc.write_zstd_chunked(io.BytesIO(raw), out, 3, variant="stargz")
    blob = out.getvalue()
    assert _decompress_all(blob) == raw and result.uncompressed_digest == dg.of_bytes(raw)

    # 40-byte footer frame ending in "GnUlInUx", locating the TOC only
    footer = zc.footer.LegacyZstdChunkedFooter.parse(blob)
    assert blob[-48:-40] == zc.SKIPPABLE_FRAME_MAGIC + (40).to_bytes(4, "little") and blob[-8:] == b"GnUlInUx"
    assert zc.footer.parse_any_footer(blob) == footer == result.footer
    position = f"{footer.manifest_offset}:{footer.manifest_length}:{footer.manifest_uncompressed_length}:1"
    compressed_manifest = blob[footer.manifest_offset : footer.manifest_offset + footer.manifest_length]
    manifest = _unzstd(compressed_manifest)
    assert result.annotations == {
        mt.ZSTD_CHUNKED_LEGACY_MANIFEST_CHECKSUM: dg.of_bytes(compressed_manifest),
        mt.ZSTD_CHUNKED_LEGACY_MANIFEST_POSITION: position,
        mt.ESTARGZ_TOC_DIGEST: dg.of_bytes(manifest),  # of the TOC JSON, as estargz computes it
        mt.ESTARGZ_UNCOMPRESSED_SIZE: str(len(raw)),
    }

    # the same frames, TOC (but every data entry has a chunkDigest) and tar-split as the current variant
    current_toc, _, _ = _parts(current, current_result.annotations)
    toc = json.loads(manifest)
    for entry in toc["entries"]:
        if entry.get("size") and entry["type"] == "reg":
            single = entry.get("chunkDigest") == entry["digest"]
            assert entry.get("chunkDigest") and (single or "chunkSize" in entry)
    stripped = [
        {k: v for k, v in e.items() if not (k == "chunkDigest" and "chunkSize" not in e)}
        for e in toc["entries"]
    ]
    assert stripped == current_toc["entries"] and toc["tarSplitDigest"] == current_toc["tarSplitDigest"]
    t_off = footer.manifest_offset + footer.manifest_length + 8
    assert blob[t_off - 8 : t_off - 4] == zc.SKIPPABLE_FRAME_MAGIC
    t_pos = current_result.annotations[mt.ZSTD_CHUNKED_TARSPLIT_POSITION].split(":")
    assert blob[t_off:-48] == current[int(t_pos[0]) : int(t_pos[0]) + int(t_pos[1])]
    assert blob[: footer.manifest_offset - 8] == current[: footer.manifest_offset - 8]  # the data frames
    assert all(e["digest"] == dg.of_bytes(files[e["name"]]) for e in toc["entries"] if e.get("digest"))


def test_driver_variant_option_reaches_the_blob_and_the_cache_key(tmp_path: Path) -> None:
    raw, _ = _make_tar()
    driver = load_driver("zstdchunked", {"variant": "stargz"})
    assert driver.options.output_options()["variant"] == "stargz"
    # the default keeps the cache key from before the option existed
    assert load_driver("zstdchunked").options.output_options() == {"level": 3}
    assert driver.cache_key() != load_driver("zstdchunked").cache_key()
    layer = _layer(tmp_path, raw)
    d = driver.convert_layer(layer).descriptor
    assert layer.store.path(d.digest).read_bytes()[-8:] == b"GnUlInUx"
    assert d.annotations is not None and mt.ESTARGZ_TOC_DIGEST in d.annotations
    # an image of these layers is zstd:chunked (not eStargz, despite the stargz TOC digest)
    assert detect_format([d, d]) == "zstdchunked" and reader_for(d) is zc.ZstdChunkedDriver.reader
    with pytest.raises(ConfigError):
        load_driver("zstdchunked", {"variant": "estargz"})


def test_the_reader_reads_the_stargz_variant_and_names_a_forged_toc_digest(tmp_path: Path) -> None:
    raw, _ = _make_tar()
    out = io.BytesIO()
    result = zc.write_zstd_chunked(io.BytesIO(raw), out, 3, variant="stargz")
    blob = out.getvalue()
    path = tmp_path / "blob"
    path.write_bytes(blob)
    desc = Descriptor(
        media_type=mt.OCI_LAYER_ZSTD, digest=dg.of_bytes(blob), size=len(blob), annotations=result.annotations
    )
    reader = zc.ZstdChunkedDriver.reader
    assert reader.claims(desc)
    checks: list[str] = []
    entries = reader.read(path, SourceLayer(descriptor=desc, diff_id=dg.of_bytes(raw)), checks)
    assert checks[:2] == ["footer", "manifest checksum"]
    assert checks[-3:] == ["diff_id", "toc == tar", "tar-split == tar"]  # found between manifest and footer
    assert [e.path for e in entries] == [e.path for e in trees.iter_tar(io.BytesIO(raw))]
    for key, message in [
        (mt.ESTARGZ_TOC_DIGEST, "TOC JSON digest"),
        (mt.ZSTD_CHUNKED_LEGACY_MANIFEST_CHECKSUM, "manifest checksum"),
        (mt.ZSTD_CHUNKED_LEGACY_MANIFEST_POSITION, "manifest position"),
    ]:
        forged = desc.model_copy(update={"annotations": {**result.annotations, key: dg.of_bytes(b"x")}})
        with pytest.raises(LayerReadError, match=message):
            reader.check(path, forged)
