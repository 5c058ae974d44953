"""The zstd:chunked footer and skippable frames (containers/storage pkg/chunked/internal/minimal)."""

from __future__ import annotations

import dataclasses
import struct
from typing import ClassVar

SKIPPABLE_FRAME_MAGIC = b"\x50\x2a\x4d\x18"
SKIPPABLE_FRAME_HEADER_SIZE = 8
FOOTER_MAGIC = b"GNUlInUx"
FOOTER_SIZE = 64
MANIFEST_TYPE_CRFS = 1


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
        frame = blob_tail[-(SKIPPABLE_FRAME_HEADER_SIZE + FOOTER_SIZE) :]
        if len(frame) != SKIPPABLE_FRAME_HEADER_SIZE + FOOTER_SIZE:
            raise ValueError("blob too small for a zstd:chunked footer")
        if frame[:4] != SKIPPABLE_FRAME_MAGIC or int.from_bytes(frame[4:8], "little") != FOOTER_SIZE:
            raise ValueError("footer is not a 64-byte skippable frame")
        *values, magic = cls._STRUCT.unpack(frame[SKIPPABLE_FRAME_HEADER_SIZE:])
        if magic != FOOTER_MAGIC:
            raise ValueError("zstd:chunked footer magic missing")
        return cls(*values)


def skippable_frame(payload: bytes) -> bytes:
    return SKIPPABLE_FRAME_MAGIC + len(payload).to_bytes(4, "little") + payload
