"""tar-split's JSON-lines stream (github.com/vbatts/tar-split tar/storage), which lets a reader rebuild the
source tar byte for byte from the TOC's files."""

from __future__ import annotations

import base64
import binascii
import json
import os

import zstandard

from accel.errors import DriverError

# tar-split entry types (github.com/vbatts/tar-split tar/storage)
TARSPLIT_FILE = 1
TARSPLIT_SEGMENT = 2
TARSPLIT_MAX_SEGMENT = 1 << 20  # tar-split stores trailing data in segments of at most this size


def _tarsplit_name(name: bytes) -> dict[str, str]:
    """tar-split stores names that are not clean UTF-8 (or contain U+FFFD) base64'd as name_raw."""
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\ufffd" in text:
        return {"name_raw": base64.b64encode(name).decode("ascii")}
    return {"name": text} if text else {}


_json_string = json.encoder.encode_basestring  # what json.dumps(..., ensure_ascii=False) writes for a str


class TarSplitWriter:
    """tar-split's JSON-lines stream (as asm.NewInputTarStream packs it), zstd-compressed in memory.

    Lines are formatted directly (same bytes as json.dumps with the reference's key order) and reach the
    compressor in batches: per-line json.dumps and compressor calls showed on layers of many small files.
    """

    BATCH_BYTES = 1 << 20

    def __init__(self, level: int) -> None:
        self._compressed = _CountingBuffer()
        self._zstd = zstandard.ZstdCompressor(level=level, write_checksum=True).stream_writer(
            self._compressed, closefd=False
        )
        self._position = 0
        self.uncompressed_size = 0
        self._seen: set[str] = set()
        self._lines: list[str] = []
        self._line_chars = 0

    def _add(self, line_without_position: str) -> None:
        line = f'{line_without_position},"position":{self._position}}}\n'
        self._position += 1
        self._lines.append(line)
        self._line_chars += len(line)
        if self._line_chars >= self.BATCH_BYTES:
            self._flush_lines()

    def _flush_lines(self) -> None:
        if self._lines:
            data = "".join(self._lines).encode()
            self.uncompressed_size += len(data)
            self._zstd.write(data)
            self._lines, self._line_chars = [], 0

    def add_segment(self, raw: bytes) -> None:
        for start in range(0, len(raw), TARSPLIT_MAX_SEGMENT):
            piece = raw[start : start + TARSPLIT_MAX_SEGMENT]
            self._add(f'{{"type":{TARSPLIT_SEGMENT},"payload":"{base64.b64encode(piece).decode("ascii")}"')

    def add_file(self, name: bytes, size: int, checksum: bytes | None) -> None:
        # The reader's unpacker rejects repeated paths (after filepath.Clean); fail early instead.
        clean = os.path.normpath(name.decode("utf-8", "surrogateescape")) if name else "."
        if clean in self._seen:
            raise DriverError(f"tar entry {name!r} appears twice; zstd:chunked readers reject duplicates")
        self._seen.add(clean)
        line = f'{{"type":{TARSPLIT_FILE}'
        if name.isascii() and name:  # most names: what _tarsplit_name gives, without its checks
            line += f',"name":{_json_string(name.decode("ascii"))}'
        else:
            for key, value in _tarsplit_name(name).items():
                line += f",{_json_string(key)}:{_json_string(value)}"
        if size:
            line += f',"size":{size}'
        payload = (
            f'"{binascii.b2a_base64(checksum, newline=False).decode("ascii")}"'
            if checksum is not None
            else "null"
        )
        self._add(f'{line},"payload":{payload}')

    def finish(self) -> bytes:
        self._flush_lines()
        self._zstd.flush(zstandard.FLUSH_FRAME)
        self._zstd.close()
        return self._compressed.getvalue()


class _CountingBuffer:
    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def getvalue(self) -> bytes:
        return b"".join(self._parts)
