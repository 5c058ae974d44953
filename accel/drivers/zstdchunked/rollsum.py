"""Content-defined chunking as containers/storage does it: zero runs become "zeros" chunks, the rest is cut
where the bup-style rolling sum over a 64-byte window has its low 16 bits all set.

The rolling sum runs in C (`_rollsum.c`, built by scripts/setup and loaded with ctypes) when the library
is there; otherwise numpy evaluates it for a whole block at once with prefix sums, which is several times
slower and pays a fixed cost per call that shows on many small files. Both give the same cuts. numpy is
only imported for the fallback: its import costs a tenth of a second, and its OpenBLAS threads spin.

Data pieces are memoryview slices of the fed blocks, not copies: the frame writer, zstd and hashlib all
take buffers, and a copy per byte on the parsing thread showed in the profile.
"""

from __future__ import annotations

import ctypes
import dataclasses
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROLLSUM_BITS = 16
HOLE_THRESHOLD = 1024  # zero runs at least this long become "zeros" chunks

_WINDOW = 64
# s2 == sum_{k=0..63} (k+1)*byte[p-k] + 64*63*31 (mod 2^32) for the reference RollSum; cut when its low
# 16 bits are all ones, i.e. when the weighted sum is this value mod 2^16.
_CUT_RESIDUE = (0xFFFF - _WINDOW * (_WINDOW - 1) * 31) % (1 << ROLLSUM_BITS)
_CUT_MASK = (1 << ROLLSUM_BITS) - 1


_ROLLSUM_SLICE = 64 << 10  # numpy temporaries stay cache- and allocator-friendly at this size


# Not ".so": module discovery (pkgutil, import) would take a .so here for an extension module.
NATIVE_LIBRARY = Path(__file__).with_name("_rollsum.lib")


def _load_native(path: Path = NATIVE_LIBRARY) -> Callable[..., list[int]] | None:
    """The C rolling sum, or None when the library was not built (or does not load)."""
    try:
        # PyDLL: the call keeps the GIL. A block takes well under a millisecond, and a thread that lets go
        # of the GIL waits far longer to get it back while the compression and hashing threads run.
        library = ctypes.PyDLL(str(path))
        # Two prototypes of the one function (indexing makes a new function object each time): data at an
        # offset, passed as an address; and a whole bytes object, passed as it is (most calls: a file's
        # payload), which spares a ctypes.cast per call.
        at_address, whole = library["accel_rollsum_cuts"], library["accel_rollsum_cuts"]
    except (OSError, AttributeError):
        return None
    c_size, c_residue, c_address = ctypes.c_size_t, ctypes.c_uint16, ctypes.c_void_p
    at_address.restype = whole.restype = c_size
    at_address.argtypes = [ctypes.c_char_p, c_address, c_size, c_residue, c_address]
    whole.argtypes = [ctypes.c_char_p, ctypes.c_char_p, c_size, c_residue, c_address]

    scratch = threading.local()  # per thread: a buffer with room for a cut after every byte, and its address

    def cuts(history: bytes, data: bytes, start: int = 0, end: int | None = None) -> list[int]:
        """Cuts in data[start:end], relative to `start`, without copying the slice."""
        assert len(history) == _WINDOW - 1 and isinstance(data, bytes)
        end = len(data) if end is None else end
        size = end - start
        if size <= 0:
            return []
        found: Any = getattr(scratch, "found", None)
        if found is None or len(found) < size:
            found = scratch.found = (ctypes.c_uint32 * max(size, 1 << 20))()
            scratch.address = ctypes.addressof(found)
        if start == 0:
            count = whole(history, data, size, _CUT_RESIDUE, scratch.address)
        else:
            address = ctypes.cast(data, c_address).value  # bytes' own buffer, alive while `data` is
            assert address is not None
            count = at_address(history, address + start, size, _CUT_RESIDUE, scratch.address)
        return found[:count] if count else []

    return cuts


def _rollsum_cuts_numpy(history: bytes, data: bytes, start: int = 0, end: int | None = None) -> list[int]:
    """Indexes i in data[start:end] (relative to `start`) after which the reference rolling sum says
    "split"."""
    if start or end is not None:
        data = data[start:end]
    cuts: list[int] = []
    for offset in range(0, len(data), _ROLLSUM_SLICE):
        before = (history + data[max(0, offset - (_WINDOW - 1)) : offset])[-(_WINDOW - 1) :]
        cuts += [offset + i for i in _rollsum_cuts_slice(before, data[offset : offset + _ROLLSUM_SLICE])]
    return cuts


def _rollsum_cuts_slice(history: bytes, data: bytes) -> list[int]:
    """`_rollsum_cuts` for one slice.

    `history` is the 63 bytes before `data` in the file (zeros before the file start). Every window's
    weighted sum comes from two prefix sums, in numpy (C speed): with S1 = cumsum(b) and S2 = cumsum(j*b[j]),
    sum_{j=p-63..p} (p+1-j)*b[j] = (p+1)*(S1[p+1]-S1[p-63]) - (S2[p+1]-S2[p-63]). uint32 arithmetic wraps
    modulo 2^32, which keeps the low 16 bits exact.
    """
    import numpy as np  # only the fallback needs it

    assert len(history) == _WINDOW - 1
    b = np.frombuffer(history + data, dtype=np.uint8).astype(np.uint32)
    n = len(b)
    s1 = np.zeros(n + 1, dtype=np.uint32)
    s2 = np.zeros(n + 1, dtype=np.uint32)
    np.cumsum(b, out=s1[1:])
    b *= np.arange(n, dtype=np.uint32)  # b[j] * j, reusing the buffer
    np.cumsum(b, out=s2[1:])
    # Slices, not fancy indexing: upper = p+1 and lower = p-63 for every position p of `data`.
    first = _WINDOW - 1
    upper = slice(first + 1, n + 1)
    lower = slice(0, n - first)
    p_plus_1 = np.arange(first + 1, n + 1, dtype=np.uint32)
    weighted = p_plus_1 * (s1[upper] - s1[lower]) - (s2[upper] - s2[lower])
    return np.flatnonzero((weighted & np.uint32(_CUT_MASK)) == np.uint32(_CUT_RESIDUE)).tolist()


_rollsum_cuts = _load_native() or _rollsum_cuts_numpy


@dataclasses.dataclass(frozen=True)
class DataPiece:
    data: bytes | memoryview  # a slice of the fed block: valid as long as the event is held
    cut_after: bool  # the current data chunk ends after these bytes


@dataclasses.dataclass(frozen=True)
class ZeroRun:
    length: int  # bytes of a zero hole (a hole may arrive as several runs; it ends at the next DataPiece)


_HOLE_NEEDLE = bytes(HOLE_THRESHOLD)
_NONZERO_RE = re.compile(b"[^\x00]")
_ZERO_STEP = bytes(4096)


_NO_HISTORY = bytes(_WINDOW - 1)


def whole_file_chunks(data: bytes) -> list[tuple[int, bool]]:
    """(end offset, is a "zeros" chunk) of each chunk of a file whose data is all of `data`: the chunks
    `FileChunker` finds, without its events (the rolling sum restarts at every file; after a hole, its
    window holds the hole's zeros, as in the file)."""
    if data.find(_HOLE_NEEDLE) < 0:  # no zero run long enough for a hole (most files)
        chunks = [(cut + 1, False) for cut in _rollsum_cuts(_NO_HISTORY, data)]
        if not chunks or chunks[-1][0] != len(data):
            chunks.append((len(data), False))
        return chunks
    chunks = []
    pos = 0
    for hole_start, hole_end in [*_find_holes(data, 0), (len(data), len(data))]:
        if pos < hole_start:
            history = (_NO_HISTORY + data[max(0, pos - (_WINDOW - 1)) : pos])[-(_WINDOW - 1) :]
            chunks += [(pos + cut + 1, False) for cut in _rollsum_cuts(history, data, pos, hole_start)]
            if not chunks or chunks[-1][0] != hole_start:
                chunks.append((hole_start, False))
        if hole_start < hole_end:
            chunks.append((hole_end, True))
        pos = hole_end
    return chunks


def _zero_run_end(buf: bytes, start: int) -> int:
    """Index of the first non-zero byte at or after `start` (len(buf) if none)."""
    step = len(_ZERO_STEP)
    pos = start
    while pos + step <= len(buf) and buf[pos : pos + step] == _ZERO_STEP:  # C-speed compares
        pos += step
    limit = min(len(buf), pos + step)
    found = _NONZERO_RE.search(buf, pos, limit)
    return found.start() if found else limit


def _find_holes(buf: bytes, start: int) -> list[tuple[int, int]]:
    """Maximal runs of at least HOLE_THRESHOLD zero bytes in buf[start:]."""
    holes = []
    pos = buf.find(_HOLE_NEEDLE, start)
    while pos >= 0:
        end = _zero_run_end(buf, pos + HOLE_THRESHOLD)
        holes.append((pos, end))
        pos = buf.find(_HOLE_NEEDLE, end)
    return holes


class FileChunker:
    """Splits one file's content into the reference compressor's chunks, fed block by block.

    Emits DataPiece / ZeroRun events; a chunk ends at a DataPiece with cut_after, where a hole starts,
    where a hole ends, and at the end of the file.
    """

    def __init__(self) -> None:
        self._history = bytes(_WINDOW - 1)
        self._carry = b""  # trailing zeros that may still grow into a hole
        self._in_hole = False

    def feed(self, block: bytes) -> Iterator[DataPiece | ZeroRun]:
        yield from self._process(self._carry + block, final=False)

    def finish(self) -> Iterator[DataPiece | ZeroRun]:
        yield from self._process(self._carry, final=True)
        self._carry = b""

    def _process(self, buf: bytes, final: bool) -> Iterator[DataPiece | ZeroRun]:
        self._carry = b""
        start = 0
        if self._in_hole:
            start = _zero_run_end(buf, 0)
            if start:
                yield ZeroRun(start)
            if start == len(buf):
                self._remember(buf)
                return
            self._in_hole = False
        end = len(buf)
        holes = _find_holes(buf, start)
        if not final:
            tail_zeros = len(buf) - len(buf.rstrip(b"\x00")) if buf[-1:] == b"\x00" else 0
            tail_start = max(len(buf) - tail_zeros, start)
            if tail_start < len(buf) and not (holes and holes[-1][1] == len(buf)):
                # A short zero run at the end might continue in the next block: decide later.
                self._carry = buf[tail_start:]
                end = tail_start
        pos = start
        for hole_start, hole_end in holes:
            yield from self._data(buf, pos, hole_start)
            yield ZeroRun(hole_end - hole_start)
            pos = hole_end
        if holes and holes[-1][1] == len(buf) and not final:
            self._in_hole = True
        yield from self._data(buf, pos, end)
        self._remember(buf, end)

    def _data(self, buf: bytes, start: int, end: int) -> Iterator[DataPiece]:
        if start >= end:
            return
        history = (self._history + buf[max(0, start - (_WINDOW - 1)) : start])[-(_WINDOW - 1) :]
        view = memoryview(buf)
        pos = start
        for cut in _rollsum_cuts(history, buf, start, end):
            yield DataPiece(view[pos : start + cut + 1], cut_after=True)
            pos = start + cut + 1
        if pos < end:
            yield DataPiece(view[pos:end], cut_after=False)

    def _remember(self, processed: bytes, end: int | None = None) -> None:
        """Keep the last window's worth of processed[:end] as the next block's history."""
        end = len(processed) if end is None else end
        self._history = (self._history + processed[max(0, end - (_WINDOW - 1)) : end])[-(_WINDOW - 1) :]
