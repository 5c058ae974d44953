"""`accel.verify` proves conversions of every driver and names the first difference of corrupted copies.

Conversions run through the transports (layout → layout), with engine calls only (tests/harness/
localconvert). Corrupted copies are made by a forger that keeps everything it does not corrupt coherent
(blob digests, sizes, manifest and config digests), so only the check under test can catch each one.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from accel import constants as mt
from accel import digest as dg
from accel.drivers.estargz import footer as estargz_footer
from accel.drivers.zstdchunked.footer import SKIPPABLE_FRAME_HEADER_SIZE, ZstdChunkedFooter, skippable_frame
from accel.oci import Descriptor, canonical_json
from accel.reference import Reference
from accel.store import ContentStore
from accel.transports import OCILayout
from accel.verify import Verdict, verify_image
from tests.harness import imagegen
from tests.harness import nydus as nh
from tests.harness.localconvert import convert
from tests.harness.pushing import as_built

DRIVERS = [
    pytest.param("estargz", id="estargz"),
    pytest.param("zstdchunked", id="zstdchunked"),
    pytest.param("nydus", id="nydus", marks=[nh.needs_builder, pytest.mark.nydus]),
]
LAYOUT_REF = Reference("oci", "image", tag="v1")


def source_layout(
    root: Path, store: ContentStore, layers: list[imagegen.TarBuilder] | None = None
) -> OCILayout:
    image = imagegen.generate_image(layers or imagegen.standard_layers(big_file_size=300 * 1024 + 7), store)
    layout = OCILayout(root)
    from accel import publish

    publish.push_image(layout, LAYOUT_REF, as_built(image), store)
    return layout


def converted(
    tmp_path: Path, driver: str, layers: list[imagegen.TarBuilder] | None = None, name: str = "t"
) -> OCILayout:
    store = ContentStore(tmp_path / f"store-{name}")
    source = source_layout(tmp_path / f"source-{name}", store, layers)
    target = OCILayout(tmp_path / f"target-{name}")
    convert(
        source,
        LAYOUT_REF,
        target,
        LAYOUT_REF,
        driver,
        store,
        {"chunk_size": 64 * 1024} if driver == "estargz" else None,
    )
    return target


def check(tmp_path: Path, source: OCILayout, target: OCILayout) -> Verdict:
    return verify_image(source, LAYOUT_REF, target, LAYOUT_REF, work_dir=tmp_path / "verify")


@pytest.mark.parametrize("driver", DRIVERS)
def test_every_driver_output_is_proven(driver: str, tmp_path: Path) -> None:
    target = converted(tmp_path, driver)
    verdict = check(tmp_path, OCILayout(tmp_path / "source-t"), target)
    assert verdict.ok, verdict.table()
    assert verdict.first_difference is None and "ok: target proven" in verdict.table()
    assert verdict.layers and all(row.ok for row in verdict.layers)
    checked = {c for row in verdict.layers for c in row.checks}
    expected = {
        "estargz": {"footer", "toc digest", "tree", "digest+size"},
        "zstdchunked": {"footer", "manifest checksum", "diff_id == source", "tree"},
        "nydus": {"nydus-image check", "merged view", "unpack", "tree"},
    }[driver]
    assert expected <= checked, verdict.table()


# --- the forger ------------------------------------------------------------------------------------


class Forger:
    """Rewrites the one-platform image tagged v1 in a layout, re-digesting whatever it changes."""

    def __init__(self, layout: OCILayout, work: Path) -> None:
        self.layout = layout
        self.store = ContentStore(work / "forger")
        _, raw = layout.fetch_manifest(LAYOUT_REF)
        self.manifest: dict[str, Any] = json.loads(raw)
        config = Descriptor.model_validate(self.manifest["config"])
        self.config: dict[str, Any] = json.loads(layout.fetch_blob_bytes(LAYOUT_REF, config))

    def layer(self, fmt_annotation: str) -> tuple[int, bytes]:
        """The first layer carrying `fmt_annotation` that holds a multi-chunk file, and its bytes."""
        for n, layer in enumerate(self.manifest["layers"]):
            if fmt_annotation in (layer.get("annotations") or {}):
                desc = Descriptor.model_validate(layer)
                path = self.layout.fetch_blob(LAYOUT_REF, desc, self.store)
                if desc.size > 200 * 1024:
                    return n, path.read_bytes()
        raise AssertionError("no such layer")

    def replace_layer(self, n: int, blob: bytes, **annotations: str) -> None:
        digest = self.store.put_bytes(blob)
        layer = self.manifest["layers"][n]
        layer.update(digest=digest, size=len(blob))
        layer["annotations"] = {**layer.get("annotations", {}), **annotations}

    def publish(self) -> None:
        config_raw = canonical_json(self.config)
        self.store.put_bytes(config_raw)
        self.manifest["config"].update(digest=dg.of_bytes(config_raw), size=len(config_raw))
        for desc in [self.manifest["config"], *self.manifest["layers"]]:
            d = Descriptor.model_validate(desc)
            if not self.layout.blob_exists(LAYOUT_REF, d.digest):
                self.layout.push_blob(LAYOUT_REF, d, self.store)
        raw = canonical_json(self.manifest)
        self.layout.push_manifest(LAYOUT_REF, raw, self.manifest["mediaType"])


def failing(tmp_path: Path, target: OCILayout) -> Verdict:
    verdict = check(tmp_path, OCILayout(tmp_path / "source-t"), target)
    assert not verdict.ok
    assert verdict.first_difference is not None and "first difference:" in verdict.table()
    return verdict


def estargz_parts(blob: bytes) -> tuple[int, dict[str, Any]]:
    toc_offset = estargz_footer.toc_offset(blob[-estargz_footer.FOOTER_SIZE :])
    toc_member = blob[toc_offset : -estargz_footer.FOOTER_SIZE]
    with tarfile.open(fileobj=io.BytesIO(zlib.decompressobj(31).decompress(toc_member))) as tar:
        member = tar.extractfile(mt.ESTARGZ_TOC_TAR_NAME)
        assert member is not None
        return toc_offset, json.loads(member.read())


def estargz_with_toc(blob: bytes, toc_offset: int, toc: dict[str, Any]) -> tuple[bytes, str]:
    toc_raw = json.dumps(toc).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(mt.ESTARGZ_TOC_TAR_NAME)
        info.size = len(toc_raw)
        tar.addfile(info, io.BytesIO(toc_raw))
    footer = estargz_footer.footer_bytes(toc_offset)
    return blob[:toc_offset] + gzip.compress(out.getvalue()) + footer, dg.of_bytes(toc_raw)


def chunks_of(toc: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in toc["entries"] if e.get("chunkDigest") and e.get("chunkSize")]


def test_flipped_byte_in_an_estargz_chunk_is_named(tmp_path: Path) -> None:
    forger = Forger(converted(tmp_path, "estargz"), tmp_path)
    n, blob = forger.layer(mt.ESTARGZ_TOC_DIGEST)
    toc_offset, toc = estargz_parts(blob)
    chunk = chunks_of(toc)[1]
    # Re-deflate the chunk's member with one byte of its content flipped; the TOC stays as it was.
    f = io.BytesIO(blob)
    f.seek(chunk["offset"])
    inflater = zlib.decompressobj(31)
    content = inflater.decompress(blob[chunk["offset"] : toc_offset])
    member_end = toc_offset - len(inflater.unused_data)
    corrupted = bytearray(content)
    corrupted[10] ^= 0x01
    new_member = gzip.compress(bytes(corrupted))
    assert len(new_member) == member_end - chunk["offset"] or True
    shift = len(new_member) - (member_end - chunk["offset"])
    for entry in toc["entries"]:
        if entry.get("offset", 0) > chunk["offset"]:
            entry["offset"] += shift
    body = blob[: chunk["offset"]] + new_member + blob[member_end:toc_offset]
    new_blob, toc_digest = estargz_with_toc(body, toc_offset + shift, toc)
    forger.replace_layer(n, new_blob, **{mt.ESTARGZ_TOC_DIGEST: toc_digest})
    forger.publish()

    verdict = failing(tmp_path, forger.layout)
    assert f"{chunk['name']}: eStargz chunk at file offset {chunk['chunkOffset']}" in verdict.first_difference
    assert [row.ok for row in verdict.layers].count(False) == 1


def test_wrong_toc_digest_is_named(tmp_path: Path) -> None:
    forger = Forger(converted(tmp_path, "estargz"), tmp_path)
    n, blob = forger.layer(mt.ESTARGZ_TOC_DIGEST)
    forger.replace_layer(n, blob, **{mt.ESTARGZ_TOC_DIGEST: dg.of_bytes(b"another toc")})
    forger.publish()
    verdict = failing(tmp_path, forger.layout)
    assert "eStargz TOC digest" in verdict.first_difference and f"layer {n}" in verdict.first_difference


def test_swapped_chunk_offsets_are_named(tmp_path: Path) -> None:
    forger = Forger(converted(tmp_path, "estargz"), tmp_path)
    n, blob = forger.layer(mt.ESTARGZ_TOC_DIGEST)
    toc_offset, toc = estargz_parts(blob)
    first, second = chunks_of(toc)[:2]
    first["offset"], second["offset"] = second["offset"], first["offset"]
    new_blob, toc_digest = estargz_with_toc(blob, toc_offset, toc)  # a coherent TOC, digest and all
    forger.replace_layer(n, new_blob, **{mt.ESTARGZ_TOC_DIGEST: toc_digest})
    forger.publish()
    verdict = failing(tmp_path, forger.layout)
    assert "does not match its chunkDigest" in verdict.first_difference
    assert first["name"] in verdict.first_difference


def test_wrong_zstd_chunked_manifest_checksum_and_diff_id(tmp_path: Path) -> None:
    forger = Forger(converted(tmp_path, "zstdchunked"), tmp_path)
    n, blob = forger.layer(mt.ZSTD_CHUNKED_MANIFEST_CHECKSUM)
    forger.replace_layer(n, blob, **{mt.ZSTD_CHUNKED_MANIFEST_CHECKSUM: dg.of_bytes(b"x")})
    forger.publish()
    assert "manifest checksum" in failing(tmp_path, forger.layout).first_difference

    forger = Forger(converted(tmp_path, "zstdchunked", name="d"), tmp_path / "d")
    forger.config["rootfs"]["diff_ids"][0] = dg.of_bytes(b"not the layer")
    forger.publish()
    verdict = failing(tmp_path, forger.layout)
    assert "layer 0" in verdict.first_difference and "digest mismatch" in verdict.first_difference


def test_wrong_diff_id_of_an_estargz_layer_is_named(tmp_path: Path) -> None:
    forger = Forger(converted(tmp_path, "estargz"), tmp_path)
    forger.config["rootfs"]["diff_ids"][1] = dg.of_bytes(b"not the layer")
    forger.publish()
    verdict = failing(tmp_path, forger.layout)
    assert "layer 1" in verdict.first_difference and "digest mismatch" in verdict.first_difference


def edited_layers(edit: Callable[[list[imagegen.TarBuilder]], None]) -> list[imagegen.TarBuilder]:
    layers = imagegen.standard_layers(big_file_size=300 * 1024 + 7)
    edit(layers)
    return layers


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_missing_file_and_a_changed_mode_are_named(driver: str, tmp_path: Path) -> None:
    """A well-formed conversion of a slightly different source: only the tree comparison can tell."""
    converted(tmp_path, driver)  # the real source, in source-t

    def drop_hosts(layers: list[imagegen.TarBuilder]) -> None:
        base = layers[0]
        base._entries = [e for e in base._entries if e.name != "etc/hosts"]

    def chmod_os_release(layers: list[imagegen.TarBuilder]) -> None:
        base = layers[0]
        base._entries = [
            dataclasses.replace(e, mode=0o600) if e.name == "etc/os-release" else e for e in base._entries
        ]

    for name, edit, expected in (
        ("missing", drop_hosts, "etc/hosts: only in source"),
        ("mode", chmod_os_release, "etc/os-release: mode 0o644 in source, 0o600 in target"),
    ):
        target = converted(tmp_path, driver, edited_layers(edit), name=name)
        verdict = check(tmp_path, OCILayout(tmp_path / "source-t"), target)
        assert not verdict.ok
        assert f"layer 0: {expected}" in verdict.first_difference, verdict.table()


# --- zstd:chunked forgeries ------------------------------------------------------------------------


def zstd_parts(blob: bytes) -> tuple[ZstdChunkedFooter, dict[str, Any], bytes]:
    footer = ZstdChunkedFooter.parse(blob)
    compressed = blob[footer.manifest_offset : footer.manifest_offset + footer.manifest_length]
    manifest = json.loads(
        zstandard.ZstdDecompressor().decompress(compressed, footer.manifest_uncompressed_length)
    )
    tarsplit = blob[footer.tarsplit_offset : footer.tarsplit_offset + footer.tarsplit_length]
    return footer, manifest, tarsplit


def zstd_with_manifest(
    data: bytes, footer: ZstdChunkedFooter, manifest: dict[str, Any], tarsplit: bytes
) -> tuple[bytes, dict[str, str]]:
    """`data` (the frames before the manifest) + a coherent manifest, tar-split, footer and annotations."""
    raw = json.dumps(manifest).encode()
    compressed = zstandard.ZstdCompressor().compress(raw)
    manifest_offset = len(data) + SKIPPABLE_FRAME_HEADER_SIZE
    out = data + skippable_frame(compressed)
    tarsplit_offset = len(out) + SKIPPABLE_FRAME_HEADER_SIZE
    out += skippable_frame(tarsplit)
    new_footer = ZstdChunkedFooter(
        manifest_offset, len(compressed), len(raw), footer.manifest_type,
        tarsplit_offset, len(tarsplit), footer.tarsplit_uncompressed_length,
    )  # fmt: skip
    out += skippable_frame(new_footer.to_bytes())
    manifest_position = f"{manifest_offset}:{len(compressed)}:{len(raw)}:{footer.manifest_type}"
    tarsplit_position = f"{tarsplit_offset}:{len(tarsplit)}:{footer.tarsplit_uncompressed_length}"
    annotations = {
        mt.ZSTD_CHUNKED_MANIFEST_CHECKSUM: dg.of_bytes(compressed),
        mt.ZSTD_CHUNKED_MANIFEST_POSITION: manifest_position,
        mt.ZSTD_CHUNKED_TARSPLIT_POSITION: tarsplit_position,
    }
    return out, annotations


def chunked_file(manifest: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """A file stored in several chunks: the index of its entry, the entry and its second chunk."""
    entries = manifest["entries"]
    for i, entry in enumerate(entries[:-1]):
        if (
            entry["type"] == "reg"
            and entries[i + 1]["type"] == "chunk"
            and entries[i + 1]["name"] == entry["name"]
        ):
            return i, entry, entries[i + 1]
    raise AssertionError("no file with several chunks")


def test_swapped_zstd_chunked_chunk_offsets_are_named(tmp_path: Path) -> None:
    forger = Forger(converted(tmp_path, "zstdchunked"), tmp_path)
    n, blob = forger.layer(mt.ZSTD_CHUNKED_MANIFEST_CHECKSUM)
    footer, manifest, tarsplit = zstd_parts(blob)
    _, entry, second = chunked_file(manifest)
    entry["offset"], second["offset"] = second["offset"], entry["offset"]
    new_blob, annotations = zstd_with_manifest(blob[: footer.manifest_offset - 8], footer, manifest, tarsplit)
    forger.replace_layer(n, new_blob, **annotations)
    forger.publish()
    verdict = failing(tmp_path, forger.layout)
    assert f"{entry['name']}: zstd:chunked chunk 0 is at a wrong place" in verdict.first_difference


def test_flipped_byte_in_a_zstd_chunked_chunk_is_named(tmp_path: Path) -> None:
    forger = Forger(converted(tmp_path, "zstdchunked"), tmp_path)
    n, blob = forger.layer(mt.ZSTD_CHUNKED_MANIFEST_CHECKSUM)
    footer, manifest, tarsplit = zstd_parts(blob)
    i, entry, second = chunked_file(manifest)
    # Re-encode the file's second chunk with one byte flipped; every later offset moves with it.
    start = second["offset"]
    following = manifest["entries"][i + 2]
    end = following["offset"] if following.get("name") == entry["name"] else entry["endOffset"]
    content = bytearray(zstandard.ZstdDecompressor().decompress(blob[start:end], second["chunkSize"]))
    content[len(content) // 2] ^= 0x01
    frame = zstandard.ZstdCompressor().compress(bytes(content))
    shift = len(frame) - (end - start)
    for other in manifest["entries"]:
        for key in ("offset", "endOffset"):
            if other.get(key, 0) > start:
                other[key] += shift
    data = blob[:start] + frame + blob[end : footer.manifest_offset - 8]
    new_blob, annotations = zstd_with_manifest(data, footer, manifest, tarsplit)
    forger.replace_layer(n, new_blob, **annotations)
    forger.publish()
    verdict = failing(tmp_path, forger.layout)
    assert f"{entry['name']}: zstd:chunked chunk 1 does not match its chunkDigest" in verdict.first_difference
