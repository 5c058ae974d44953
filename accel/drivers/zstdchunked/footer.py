"""The zstd:chunked footers and skippable frames.

Two footers exist. The current one (containers/storage pkg/chunked/internal/minimal, since 1.51) is 64
bytes ending in "GNUlInUx" and also locates the tar-split. The older one is 40 bytes ending in "GnUlInUx"
(the TOC only): containers/storage wrote it before 1.48, and it is the only one stargz-snapshotter's
estargz/zstdchunked reads. containers/storage reads neither when the layer carries its position annotation
(every version does so).
"""

from __future__ import annotations

import dataclasses
import struct
from typing import ClassVar

SKIPPABLE_FRAME_MAGIC = b"\x50\x2a\x4d\x18"
SKIPPABLE_FRAME_HEADER_SIZE = 8
FOOTER_MAGIC = b"GNUlInUx"
FOOTER_SIZE = 64
LEGACY_FOOTER_MAGIC = b"GnUlInUx"
LEGACY_FOOTER_SIZE = 40
MANIFEST_TYPE_CRFS = 1


def _footer_frame(blob_tail: bytes, size: int) -> bytes:
    frame = blob_tail[-(SKIPPABLE_FRAME_HEADER_SIZE + size) :]
    if len(frame) != SKIPPABLE_FRAME_HEADER_SIZE + size:
        raise ValueError("blob too small for a zstd:chunked footer")
    if frame[:4] != SKIPPABLE_FRAME_MAGIC or int.from_bytes(frame[4:8], "little") != size:
        raise ValueError(f"footer is not a {size}-byte skippable frame")
    return frame[SKIPPABLE_FRAME_HEADER_SIZE:]


@dataclasses.dataclass(frozen=True)
class ZstdChunkedFooter:
    manifest_offset: int
    manifest_length: int
    manifest_uncompressed_length: int
    manifest_type: int
    tarsplit_offset: int
    tarsplit_length: int
    tarsplit_uncompressed_length: int

    _STRUCT: ClassVar[struct.Struct] = struct.Struct("<7Q8s")

    def to_bytes(self) -> bytes:
        return self._STRUCT.pack(*dataclasses.astuple(self), FOOTER_MAGIC)

    @classmethod
    def parse(cls, blob_tail: bytes) -> ZstdChunkedFooter:
        """Parse the last bytes of a blob (at least the footer's skippable frame)."""
        *values, magic = cls._STRUCT.unpack(_footer_frame(blob_tail, FOOTER_SIZE))
        if magic != FOOTER_MAGIC:
            raise ValueError("zstd:chunked footer magic missing")
        return cls(*values)


@dataclasses.dataclass(frozen=True)
class LegacyZstdChunkedFooter:
    """The 40-byte footer: where the TOC is, nothing about the tar-split."""

    manifest_offset: int
    manifest_length: int
    manifest_uncompressed_length: int
    manifest_type: int

    _STRUCT: ClassVar[struct.Struct] = struct.Struct("<4Q8s")

    def to_bytes(self) -> bytes:
        return self._STRUCT.pack(*dataclasses.astuple(self), LEGACY_FOOTER_MAGIC)

    @classmethod
    def parse(cls, blob_tail: bytes) -> LegacyZstdChunkedFooter:
        *values, magic = cls._STRUCT.unpack(_footer_frame(blob_tail, LEGACY_FOOTER_SIZE))
        if magic != LEGACY_FOOTER_MAGIC:
            raise ValueError("zstd:chunked (40-byte) footer magic missing")
        return cls(*values)


AnyFooter = ZstdChunkedFooter | LegacyZstdChunkedFooter


def parse_any_footer(blob_tail: bytes) -> AnyFooter:
    """The footer a blob ends with, whichever of the two it is (its magic, the last 8 bytes, tells)."""
    if blob_tail[-8:] == LEGACY_FOOTER_MAGIC:
        return LegacyZstdChunkedFooter.parse(blob_tail)
    return ZstdChunkedFooter.parse(blob_tail)


def skippable_frame(payload: bytes) -> bytes:
    return SKIPPABLE_FRAME_MAGIC + len(payload).to_bytes(4, "little") + payload
