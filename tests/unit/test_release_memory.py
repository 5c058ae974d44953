"""A long-lived runner hands a conversion's freed memory back to the system (service/memory.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# 300 blocks of 1 MiB in glibc's heap (below the mmap threshold the runner sets), all freed but the last,
# which keeps the heap from shrinking by itself; prints RSS (KiB) after the free and after the trim.
_PROGRAM = """
import sys
from service.memory import release_free_memory

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

blocks = [bytes([n % 251]) * (1 << 20) for n in range(300)]
keep = blocks[-1]
del blocks
freed = rss()
released = release_free_memory()
print(freed, rss(), released)
"""


def test_freed_heap_memory_goes_back_to_the_system():
    env = {**os.environ, "MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(4 << 20)}
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM], cwd=REPO, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    freed, trimmed, released = int(out[0]), int(out[1]), out[2]
    assert freed > 250 * 1024, "the freed blocks should still be resident before the trim"
    assert released == "True"
    assert trimmed < freed - 200 * 1024, f"RSS {freed} KiB → {trimmed} KiB after the trim"
