"""Giving freed memory back to the system after a conversion in a long-lived process (the local runner,
acceld's in-process runs, the warm flow-run starter's children need not: they exit).

glibc keeps what a conversion freed (codec buffers, 1 MiB blocks, the tar walk's records) in its heap for
later allocations, so a resident runner that once converted a 200 MiB image stayed at its peak size while
idle, and every later conversion's peak counted it. `malloc_trim(0)` returns the free pages at the top and
inside the heap (a few milliseconds)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    # Named, not looked up with ctypes.util.find_library: that runs `ldconfig -p` in a child process, a fork
    # of this large process after every conversion.
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL("libc.so.6").malloc_trim  # type: ignore[no-any-return]
    return None


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the system (glibc only); whether anything was released."""
    trim = _malloc_trim() if sys.platform.startswith("linux") else None
    return bool(trim(0)) if trim is not None else False
