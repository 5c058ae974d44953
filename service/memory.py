"""Giving freed memory back to the system after a conversion in a long-lived process (the local runner,
acceld's in-process runs, the warm flow-run starter's children need not: they exit).

glibc keeps what a conversion freed (codec buffers, 1 MiB blocks, the tar walk's records) in its heap for
later allocations, so a resident runner that once converted a 200 MiB image stayed at its peak size while
idle, and every later conversion's peak counted it. `malloc_trim(0)` returns the free pages at the top and
inside the heap (a few milliseconds)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the system (glibc only); whether anything was released."""
    if not sys.platform.startswith("linux"):
        return False
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    return False
