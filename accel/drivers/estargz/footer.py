"""The eStargz footer: an empty gzip member whose extra field holds the TOC member's offset."""

from __future__ import annotations

import struct

FOOTER_SIZE = 51


def footer_bytes(toc_offset: int) -> bytes:
    """The 51-byte footer: an empty gzip member whose FEXTRA subfield `SG` holds `%016x` offset + STARGZ."""
    subfield = b"%016xSTARGZ" % toc_offset
    extra = b"SG" + struct.pack("<H", len(subfield)) + subfield
    header = b"\x1f\x8b\x08\x04" + b"\x00\x00\x00\x00" + b"\x00\xff"  # ID, deflate, FEXTRA, mtime, XFL, OS
    empty_stored_block = b"\x01\x00\x00\xff\xff"  # BFINAL, stored, LEN 0, NLEN
    footer = header + struct.pack("<H", len(extra)) + extra + empty_stored_block + b"\x00" * 8  # CRC, ISIZE
    assert len(footer) == FOOTER_SIZE
    return footer


def toc_offset(footer: bytes) -> int:
    """The TOC member's offset a footer holds; ValueError naming what is wrong when it is not a footer."""
    if len(footer) != FOOTER_SIZE or footer[:4] != b"\x1f\x8b\x08\x04":
        raise ValueError("not a gzip header with an extra field")
    xlen = struct.unpack_from("<H", footer, 10)[0]
    extra = footer[12 : 12 + xlen]
    if extra[:2] != b"SG" or extra[-6:] != b"STARGZ":
        raise ValueError("no SG subfield ending in STARGZ")
    return int(extra[4:20], 16)
