"""Tar fix-ups on the way into the builder: nydus-image 2.2.0's tar reader is stricter than the writers.

The stream passes through unchanged except for char/block/FIFO headers with blank device numbers (see
`fix_header`). Headers are read with `accel.tarstream` (Go's reading of a header block); a block that is no
valid header (end-of-archive zeros, trailing bytes, or a broken archive) passes through untouched, so the
builder judges a broken archive itself and reports it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from accel import tarstream

COPY_SIZE = 1 << 20
TAR_BLOCK = tarstream.BLOCK_SIZE

# ustar header fields (offset, length) rewritten by `fix_header`.
_TAR_CHECKSUM = (148, 8)
_TAR_DEVMAJOR = (329, 8)
_TAR_DEVMINOR = (337, 8)
_TAR_DEVICE_TYPES = frozenset({tarstream.TYPE_CHAR, tarstream.TYPE_BLOCK, tarstream.TYPE_FIFO})
_TAR_ZERO_DEVICE = b"0000000\0"


def _tar_checksum(header: bytes | bytearray) -> int:
    start, length = _TAR_CHECKSUM
    return sum(header[:start]) + 32 * length + sum(header[start + length :])


def fix_header(block: bytes, header: tarstream.TarHeader) -> bytes:
    """Fill empty device numbers of char/block/fifo header blocks with zeros.

    Python's tarfile (and some other writers) leave them blank for FIFOs; nydus-image 2.2.0's tar reader
    then fails with "numeric field was not a number". Zero is what Go's archive/tar writes.
    """
    if header.typeflag not in _TAR_DEVICE_TYPES:
        return block
    fixed = bytearray(block)
    changed = False
    for start, length in (_TAR_DEVMAJOR, _TAR_DEVMINOR):
        if not fixed[start : start + length].strip(b"\0 "):
            fixed[start : start + length] = _TAR_ZERO_DEVICE
            changed = True
    if not changed:
        return block
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
        block = _read_exactly(source, TAR_BLOCK)
        if len(block) < TAR_BLOCK:
            if block:
                yield block
            return
        try:
            header, data_size = tarstream.parse_header_block(block)
        except tarstream.TarError:  # end-of-archive zeros or trailing bytes: pass through untouched
            yield block
            continue
        yield fix_header(block, header)
        remaining = data_size + -data_size % TAR_BLOCK
        while remaining > 0:
            chunk = source.read(min(COPY_SIZE, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk
