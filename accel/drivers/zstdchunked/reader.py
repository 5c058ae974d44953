"""Reading a zstd:chunked blob back: footer (and its position annotation) → manifest checksum → every chunk
and every file digest; then the layer's file entries from the whole decompressed stream, which is the
source tar byte for byte (so its DiffID is the source's). Both variants (writer.Variant) are read: the
64-byte footer with the io.github.containers.* keys, and the 40-byte one with the io.containers.* keys and
the stargz TOC digest."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from accel import constants as mt
from accel import digest as dg
from accel import trees
from accel.compression import open_uncompressed
from accel.drivers.reader import LayerReader, LayerReadError
from accel.drivers.toctypes import TOC_TYPE_CHUNK, TOC_TYPE_REG
from accel.drivers.zstdchunked.footer import FOOTER_SIZE, SKIPPABLE_FRAME_HEADER_SIZE, parse_any_footer
from accel.model import SourceLayer
from accel.oci import Descriptor


def _read_at(f: BinaryIO, offset: int, length: int) -> bytes:
    f.seek(offset)
    return f.read(length)


def _keys(desc: Descriptor) -> tuple[str, str]:
    """The (checksum, position) annotation keys this layer uses: the current ones, else the older ones."""
    if desc.annotation(mt.ZSTD_CHUNKED_MANIFEST_CHECKSUM) is not None:
        return mt.ZSTD_CHUNKED_MANIFEST_CHECKSUM, mt.ZSTD_CHUNKED_MANIFEST_POSITION
    return mt.ZSTD_CHUNKED_LEGACY_MANIFEST_CHECKSUM, mt.ZSTD_CHUNKED_LEGACY_MANIFEST_POSITION


def check_blob(path: Path, desc: Descriptor) -> list[str]:
    """Footer, manifest position and checksum, every chunk digest and every file digest."""
    size = path.stat().st_size
    checksum_key, position_key = _keys(desc)
    with path.open("rb") as f:
        try:  # the longer footer's frame covers the shorter one's
            footer = parse_any_footer(
                _read_at(f, max(size - SKIPPABLE_FRAME_HEADER_SIZE - FOOTER_SIZE, 0), size)
            )
        except ValueError as exc:
            raise LayerReadError(f"zstd:chunked footer: {exc}") from exc
        position = (
            f"{footer.manifest_offset}:{footer.manifest_length}:"
            f"{footer.manifest_uncompressed_length}:{footer.manifest_type}"
        )
        annotated = desc.annotation(position_key)
        if annotated is not None and annotated != position:
            raise LayerReadError(
                f"zstd:chunked manifest position {annotated} differs from the footer's {position}"
            )
        compressed = _read_at(f, footer.manifest_offset, footer.manifest_length)
        checksum = dg.of_bytes(compressed)
        if checksum != desc.annotation(checksum_key):
            raise LayerReadError(
                f"zstd:chunked manifest checksum {checksum} differs from the annotation "
                f"{desc.annotation(checksum_key)}"
            )
        try:
            manifest = zstandard.ZstdDecompressor().decompress(
                compressed, max_output_size=footer.manifest_uncompressed_length
            )
        except zstandard.ZstdError as exc:
            raise LayerReadError(f"zstd:chunked manifest: {exc}") from exc
        toc_digest = desc.annotation(mt.ESTARGZ_TOC_DIGEST)
        if toc_digest is not None and toc_digest != dg.of_bytes(manifest):
            raise LayerReadError(
                f"zstd:chunked TOC JSON digest {dg.of_bytes(manifest)} differs from the stargz annotation "
                f"{toc_digest}"
            )
        entries: list[dict[str, Any]] = json.loads(manifest).get("entries") or []
        chunks = 0
        for i, entry in enumerate(entries):
            if entry.get("type") != TOC_TYPE_REG or not entry.get("size"):
                continue
            name = entry["name"]
            pieces = [entry]
            for following in entries[i + 1 :]:
                if following.get("type") != TOC_TYPE_CHUNK or following.get("name") != name:
                    break
                pieces.append(following)
            hasher = hashlib.sha256()
            position_in_file = 0
            for n, piece in enumerate(pieces):
                start = piece.get("offset", 0)
                end = pieces[n + 1].get("offset", 0) if n + 1 < len(pieces) else entry.get("endOffset", 0)
                expected_size = piece.get("chunkSize") or entry["size"]
                if piece.get("chunkOffset", 0) != position_in_file or not 0 < start < end <= size:
                    raise LayerReadError(
                        f"{name}: zstd:chunked chunk {n} is at a wrong place ({start}..{end})"
                    )
                try:
                    reader = zstandard.ZstdDecompressor().stream_reader(
                        io.BytesIO(_read_at(f, start, end - start)), read_across_frames=True
                    )
                    data = reader.read(expected_size + 1)
                except zstandard.ZstdError as exc:
                    raise LayerReadError(
                        f"{name}: zstd:chunked chunk {n} does not decompress: {exc}"
                    ) from exc
                digest = piece.get("chunkDigest") or entry.get("digest")
                if len(data) != expected_size or dg.of_bytes(data) != digest:
                    raise LayerReadError(f"{name}: zstd:chunked chunk {n} does not match its chunkDigest")
                hasher.update(data)
                position_in_file += len(data)
                chunks += 1
            if position_in_file != entry["size"] or "sha256:" + hasher.hexdigest() != entry.get("digest"):
                raise LayerReadError(f"{name}: zstd:chunked chunks do not add up to the file's digest")
    return ["footer", "manifest checksum", f"{chunks} chunks"]


class ZstdChunkedReader(LayerReader):
    keeps_source_tar = True  # the format promises the source tar byte for byte

    @staticmethod
    def is_zstd_chunked(desc: Descriptor) -> bool:
        """Either variant's manifest checksum (the older one also carries the stargz TOC digest)."""
        return bool(
            desc.annotation(mt.ZSTD_CHUNKED_MANIFEST_CHECKSUM)
            or desc.annotation(mt.ZSTD_CHUNKED_LEGACY_MANIFEST_CHECKSUM)
        )

    def claims(self, desc: Descriptor) -> bool:
        return self.is_zstd_chunked(desc)

    def label(self, desc: Descriptor) -> str:
        return "zstd:chunked"

    def check(self, blob: Path, desc: Descriptor) -> list[str]:
        return check_blob(blob, desc)

    def entries(self, blob: Path, layer: SourceLayer) -> list[trees.Entry]:
        # A zstd stream whatever the descriptor's media type says.
        with open_uncompressed(blob, mt.OCI_LAYER_ZSTD, layer.diff_id) as stream:
            return list(trees.iter_tar(stream))
