"""Reading a zstd:chunked blob back: footer (and its position annotation) → manifest checksum → every chunk
and every file digest; then the layer's file entries from the whole decompressed stream, which is the
source tar byte for byte (so its DiffID is the source's). Both variants (writer.Variant) are read: the
64-byte footer with the io.github.containers.* keys, and the 40-byte one with the io.containers.* keys and
the stargz TOC digest."""

from __future__ import annotations

import base64
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
from accel.drivers.reader import DECODE_ERRORS, LayerReader, LayerReadError, decode_problem
from accel.drivers.toctypes import (
    TOC_TYPE_CHUNK,
    TOC_TYPE_REG,
    missing_hardlink_targets,
    toc_difference,
    toc_tree,
)
from accel.drivers.zstdchunked.crc64 import Crc64
from accel.drivers.zstdchunked.footer import (
    FOOTER_SIZE,
    LEGACY_FOOTER_SIZE,
    SKIPPABLE_FRAME_HEADER_SIZE,
    LegacyZstdChunkedFooter,
    parse_any_footer,
)
from accel.drivers.zstdchunked.tarsplit import TARSPLIT_FILE, TARSPLIT_SEGMENT
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


def _manifest(f: BinaryIO, size: int, desc: Descriptor) -> bytes:
    """The manifest (TOC) JSON, its position and checksum checked against the layer's annotations."""
    checksum_key, position_key = _keys(desc)
    try:  # the longer footer's frame covers the shorter one's
        footer = parse_any_footer(_read_at(f, max(size - SKIPPABLE_FRAME_HEADER_SIZE - FOOTER_SIZE, 0), size))
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
    return manifest


def toc_document(path: Path, desc: Descriptor) -> dict[str, Any]:
    """The manifest (TOC) document, its checksum checked against the annotation."""
    with path.open("rb") as f:
        document: dict[str, Any] = json.loads(_manifest(f, path.stat().st_size, desc))
    return document


def check_blob(path: Path, desc: Descriptor) -> list[str]:
    """Footer, manifest position and checksum, every chunk digest and every file digest."""
    size = path.stat().st_size
    with path.open("rb") as f:
        manifest = _manifest(f, size, desc)
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


def check_tarsplit(path: Path, desc: Descriptor, tarsplit_digest: str | None = None) -> str:
    """The tar-split (what a partial pull rebuilds the tar from) against the layer's own stream: each segment
    is the stream's next bytes, each file's CRC-64 that of the stream's next `size` bytes, and nothing is
    left over; where it is agrees with the footer, the annotation and the TOC's `tarSplitDigest`. After the
    data, only skippable frames, one after the other to the blob's end (a plain pull decompresses the whole
    blob): the manifest, the tar-split (located by the 64-byte footer; with the 40-byte one, the frame between
    manifest and footer, if any) and the footer. The check's name when it holds."""
    size = path.stat().st_size
    with path.open("rb") as f:
        try:
            footer = parse_any_footer(
                _read_at(f, max(size - SKIPPABLE_FRAME_HEADER_SIZE - FOOTER_SIZE, 0), size)
            )
        except ValueError as exc:
            raise LayerReadError(f"zstd:chunked footer: {exc}") from exc
        legacy = isinstance(footer, LegacyZstdChunkedFooter)
        frames: list[tuple[int, int]] = []  # (offset, length) of each frame's content
        at = footer.manifest_offset - SKIPPABLE_FRAME_HEADER_SIZE
        while at < size:
            header = _read_at(f, at, SKIPPABLE_FRAME_HEADER_SIZE)
            magic = int.from_bytes(header[:4], "little")
            if len(header) != SKIPPABLE_FRAME_HEADER_SIZE or magic & 0xFFFFFFF0 != 0x184D2A50:
                raise LayerReadError(f"zstd:chunked: no skippable frame at offset {at}, after the manifest")
            frames.append((at + SKIPPABLE_FRAME_HEADER_SIZE, int.from_bytes(header[4:], "little")))
            at += SKIPPABLE_FRAME_HEADER_SIZE + frames[-1][1]
        footer_size = LEGACY_FOOTER_SIZE if legacy else FOOTER_SIZE
        if at != size or frames[0] != (footer.manifest_offset, footer.manifest_length):
            raise LayerReadError(
                "zstd:chunked: the skippable frames after the data do not lead to the footer"
            )
        if frames[-1] != (size - footer_size, footer_size) or len(frames) > 3:
            raise LayerReadError(
                "zstd:chunked: the frames after the manifest are not a tar-split and the footer"
            )
        if legacy:
            if len(frames) == 2:
                return "frames"
            tarsplit_offset, tarsplit_length = frames[1]
            tarsplit_uncompressed_length = None
        else:
            tarsplit_offset, tarsplit_length = footer.tarsplit_offset, footer.tarsplit_length
            tarsplit_uncompressed_length = footer.tarsplit_uncompressed_length
            position = f"{tarsplit_offset}:{tarsplit_length}:{tarsplit_uncompressed_length}"
            annotated = desc.annotation(mt.ZSTD_CHUNKED_TARSPLIT_POSITION)
            if annotated is not None and annotated != position:
                raise LayerReadError(
                    f"zstd:chunked tar-split position {annotated} differs from the footer's {position}"
                )
            if len(frames) != 3 or frames[1] != (tarsplit_offset, tarsplit_length):
                raise LayerReadError("zstd:chunked tar-split: not the frame between manifest and footer")
        compressed = _read_at(f, tarsplit_offset, tarsplit_length)
    if tarsplit_digest is not None and tarsplit_digest != dg.of_bytes(compressed):
        raise LayerReadError(
            f"zstd:chunked tar-split digest {dg.of_bytes(compressed)} differs from the TOC's "
            f"{tarsplit_digest}"
        )
    try:
        # Every frame of it (a writer may end it with an empty frame, which must be intact too).
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(compressed), read_across_frames=True)
        raw = (
            reader.read()
            if tarsplit_uncompressed_length is None
            else reader.read(tarsplit_uncompressed_length + 1)
        )
    except zstandard.ZstdError as exc:
        raise LayerReadError(f"zstd:chunked tar-split: {exc}") from exc
    if tarsplit_uncompressed_length is not None and len(raw) != tarsplit_uncompressed_length:
        raise LayerReadError(
            f"zstd:chunked tar-split: {len(raw)} bytes, the footer says {tarsplit_uncompressed_length}"
        )
    with open_uncompressed(path, mt.OCI_LAYER_ZSTD) as stream:
        for expected_position, line in enumerate(raw.splitlines()):
            entry = json.loads(line)
            if entry.get("position") != expected_position:
                raise LayerReadError(f"zstd:chunked tar-split entry {expected_position} is out of order")
            if entry["type"] == TARSPLIT_SEGMENT:
                payload = base64.b64decode(entry.get("payload") or "")
                if stream.read(len(payload)) != payload:
                    raise LayerReadError(
                        f"zstd:chunked tar-split segment {expected_position} differs from the layer's tar"
                    )
            elif entry["type"] == TARSPLIT_FILE:
                crc, left = Crc64(), int(entry.get("size") or 0)
                while left > 0:
                    piece = stream.read(min(left, 1 << 20))
                    if not piece:
                        break
                    crc.update(piece)
                    left -= len(piece)
                name = entry.get("name") or entry.get("name_raw")
                payload = entry.get("payload")
                if left or (payload is not None and base64.b64decode(payload) != crc.digest()):
                    raise LayerReadError(f"zstd:chunked tar-split: {name!r} differs from the layer's tar")
            else:
                raise LayerReadError(f"zstd:chunked tar-split entry of unknown type {entry['type']!r}")
        if stream.read(1):
            raise LayerReadError("zstd:chunked tar-split ends before the layer's tar")
    return "tar-split == tar"


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

    def read(self, blob: Path, layer: SourceLayer, checks: list[str]) -> list[trees.Entry]:
        """The blob's structure, its tar stream, then its TOC against that stream: a partial pull creates
        files from the TOC's metadata and data, so a TOC that says something else than the tar is wrong."""
        try:
            checks.extend(self.check(blob, layer.descriptor))
            document = toc_document(blob, layer.descriptor)
            raw_toc = document.get("entries") or []
            unresolved = missing_hardlink_targets(raw_toc)
            if unresolved:
                raise LayerReadError(f"zstd:chunked TOC: {unresolved}")
            toc = toc_tree(raw_toc)
            entries = self.entries(blob, layer)
        except DECODE_ERRORS as exc:
            raise LayerReadError(decode_problem(exc)) from exc
        checks.append("diff_id")
        problem = toc_difference(toc, {entry.path: entry for entry in entries})
        if problem:
            raise LayerReadError(f"zstd:chunked TOC: {problem}")
        checks.append("toc == tar")
        try:
            checks.append(check_tarsplit(blob, layer.descriptor, document.get("tarSplitDigest")))
        except DECODE_ERRORS as exc:
            raise LayerReadError(f"zstd:chunked tar-split: {decode_problem(exc)}") from exc
        return entries

    def entries(self, blob: Path, layer: SourceLayer) -> list[trees.Entry]:
        # A zstd stream whatever the descriptor's media type says.
        with open_uncompressed(blob, mt.OCI_LAYER_ZSTD, layer.diff_id) as stream:
            return list(trees.iter_tar(stream))
