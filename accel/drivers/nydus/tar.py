"""Tar fix-ups on the way into the builder: nydus-image 2.2.0's tar reader is stricter than the writers.

The stream passes through unchanged except for char/block/FIFO headers with blank device numbers (see
`fix_header`); end-of-archive zeros and trailing bytes are passed through untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

COPY_SIZE = 1 << 20
TAR_BLOCK = 512

# ustar header fields (offset, length) and the types whose header is not followed by data (as Go reads them).
_TAR_SIZE = (124, 12)
_TAR_CHECKSUM = (148, 8)
_TAR_TYPEFLAG = 156
_TAR_DEVMAJOR = (329, 8)
_TAR_DEVMINOR = (337, 8)
_TAR_HEADER_ONLY_TYPES = frozenset(b"123456")
_TAR_DEVICE_TYPES = frozenset(b"346")
_TAR_ZERO_DEVICE = b"0000000\0"


def _tar_checksum(header: bytes | bytearray) -> int:
    start, length = _TAR_CHECKSUM
    return sum(header[:start]) + 32 * length + sum(header[start + length :])


def _tar_number(field: bytes | bytearray) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        return int.from_bytes(bytes([field[0] & 0x7F]) + bytes(field[1:]), "big")
    text = bytes(field).replace(b"\0", b" ").strip()
    return int(text, 8) if text else 0


def fix_header(header: bytes) -> bytes:
    """Fill empty device numbers of char/block/fifo headers with zeros.

    Python's tarfile (and some other writers) leave them blank for FIFOs; nydus-image 2.2.0's tar reader
    then fails with "numeric field was not a number". Zero is what Go's archive/tar writes.
    """
    if header[_TAR_TYPEFLAG] not in _TAR_DEVICE_TYPES:
        return header
    fixed = bytearray(header)
    changed = False
    for start, length in (_TAR_DEVMAJOR, _TAR_DEVMINOR):
        if not fixed[start : start + length].strip(b"\0 "):
            fixed[start : start + length] = _TAR_ZERO_DEVICE
            changed = True
    if not changed:
        return header
    start, length = _TAR_CHECKSUM
    fixed[start : start + length] = b"%06o\0 " % _tar_checksum(fixed)
    return bytes(fixed)


def _read_exactly(source: BinaryIO, size: int) -> bytes:
    data = source.read(size)
    while data and len(data) < size:
        more = source.read(size - len(data))
        if not more:
            break
        data += more
    return data


def builder_compatible_tar(source: BinaryIO) -> Iterator[bytes]:
    """The tar stream in chunks, headers fixed up for the builder where needed (see `fix_header`)."""
    while True:
        header = _read_exactly(source, TAR_BLOCK)
        if len(header) < TAR_BLOCK:
            if header:
                yield header
            return
        start, length = _TAR_CHECKSUM
        stored = header[start : start + length]
        try:
            valid = header.count(0) != TAR_BLOCK and _tar_number(stored) == _tar_checksum(header)
        except ValueError:
            valid = False
        if not valid:  # end-of-archive zeros or trailing bytes: pass through untouched
            yield header
            continue
        yield fix_header(header)
        if header[_TAR_TYPEFLAG] in _TAR_HEADER_ONLY_TYPES:
            continue
        offset, size_length = _TAR_SIZE
        remaining = -(-_tar_number(header[offset : offset + size_length]) // TAR_BLOCK) * TAR_BLOCK
        while remaining > 0:
            chunk = source.read(min(COPY_SIZE, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk
