"""CRC-64/ISO (Go's hash/crc64 with the crc64.ISO table), which tar-split uses for payload checksums.

ISA-L's implementation when python-isal exports it (checked against the standard check value), else an
exact big-int algebra fallback.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _load_isal_crc64() -> Callable[[int, bytes], int] | None:
    """ISA-L's crc64_iso_refl, which python-isal's extension exports; None if it is not there."""
    try:
        from isal import isal_zlib

        # PyDLL keeps the GIL: the CRC of a block takes microseconds, and getting the GIL back after
        # letting go of it (as CDLL does) cost the parsing thread far more while the pool ran.
        func = ctypes.PyDLL(isal_zlib.__file__).crc64_iso_refl
    except (ImportError, OSError, AttributeError):
        return None
    func.restype = ctypes.c_uint64
    func.argtypes = [ctypes.c_uint64, ctypes.c_char_p, ctypes.c_uint64]

    def update(crc: int, data: bytes) -> int:
        return func(crc, data, len(data))

    # Guard against a library whose symbol means something else: the CRC-64/GO-ISO check value.
    return update if update(0, b"123456789") == 0xB90956C775A41001 else None


_BIT_REVERSE = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))
_CRC64_ISO_LOW = 0x1B  # x^64 + x^4 + x^3 + x + 1, without the x^64 term
_ALL_ONES_64 = (1 << 64) - 1


def _poly_mod_iso(value: int) -> int:
    """value mod the CRC-64/ISO polynomial over GF(2). The polynomial's tail is x^4+x^3+x+1, so
    x^(64m) == (x^4+x^3+x+1)^m, and for m a power of two that power is still four terms (Frobenius):
    each fold is four shifts and xors regardless of how large m is."""
    while (bits := value.bit_length()) > 64:
        m = 1 << ((bits - 1) // 64).bit_length() - 1  # largest power of two with 64*m < bits
        high, low = value >> (64 * m), value & ((1 << (64 * m)) - 1)
        value = (high << (4 * m)) ^ (high << (3 * m)) ^ (high << m) ^ high ^ low
    return value


def _crc64_iso_python(crc: int, data: bytes) -> int:
    """Same result as Go's crc64.Update(crc, crc64.MakeTable(crc64.ISO), data), via big-int algebra."""
    if not data:
        return crc
    nbits = 8 * len(data)
    reg = int(f"{crc ^ _ALL_ONES_64:064b}"[::-1], 2)  # the register in normal (unreflected) bit order
    message = int.from_bytes(data.translate(_BIT_REVERSE), "big")
    reg = _poly_mod_iso((reg << nbits) ^ (message << 64))
    return int(f"{reg:064b}"[::-1], 2) ^ _ALL_ONES_64


_crc64_update = _load_isal_crc64() or _crc64_iso_python


class Crc64:
    """Incremental CRC-64/ISO; `digest()` is the 8 big-endian bytes Go's hash.Sum(nil) returns."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = _crc64_update(self.value, data)

    def digest(self) -> bytes:
        return self.value.to_bytes(8, "big")
