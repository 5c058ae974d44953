"""Byte counters for live progress: how far a layer's pull, conversion and upload have got.

The engine counts; it never reports. Whoever wants to watch a step (the Prefect tasks: `tasks/progress.py`)
gives it a `ByteMeter` for the length of the call (`metering`), and the three places bytes move count into
the meter of the calling context:

- a blob streamed into the content store by the registry client (`RegistryClient.fetch_blob`): bytes pulled;
- a layer's compressed bytes read by its conversion (`LayerInput.open_tar`, through `CountingReader`, on the
  reading thread the conversion starts): bytes converted;
- a blob sent to a registry (`RegistryClient.push_blob`): bytes pushed.

A meter has one writer at a time and is read by other threads; an int assignment is atomic under the GIL,
so no lock is needed (and a meter stays picklable, as task parameters must be for Prefect's cache keys).
Blobs sent side by side (`accel.copy.copy_blobs`) each count into a `MeterShare` of the caller's meter.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO


class ByteMeter:
    """Bytes done of `total` (0 when unknown). `done` marks the step finished, whatever was counted (a step
    answered from a cache, a blob already in place)."""

    def __init__(self, total: int = 0) -> None:
        self.total = total
        self.value = 0
        self.finished = False

    def add(self, count: int) -> None:
        self.value += count

    def set(self, count: int) -> None:
        """Where the step is now; a retry that starts over goes back to 0."""
        self.value = count

    def done(self) -> None:
        self.value = max(self.value, self.total)
        self.finished = True

    def fraction(self) -> float:
        if self.finished:
            return 1.0
        return min(1.0, self.value / self.total) if self.total else 0.0

    def __repr__(self) -> str:
        return f"ByteMeter({self.value}/{self.total}{', done' if self.finished else ''})"


class MeterShare(ByteMeter):
    """One writer's part of a meter that several write at once (blobs sent side by side): the part counts its
    own bytes as a lone writer would (starting at 0, going back on a retry), and `parent` holds the parts'
    sum. `lock` is the one every part of that parent takes."""

    def __init__(self, parent: ByteMeter, lock: threading.Lock) -> None:
        super().__init__()
        self._parent = parent
        self._lock = lock

    def add(self, count: int) -> None:
        self.set(self.value + count)

    def set(self, count: int) -> None:
        with self._lock:
            self._parent.value += count - self.value
            self.value = count


_current: contextvars.ContextVar[ByteMeter | None] = contextvars.ContextVar("accel_byte_meter", default=None)


@contextlib.contextmanager
def metering(meter: ByteMeter | None) -> Iterator[ByteMeter | None]:
    """Count the bytes the engine moves in this block (this thread's context) into `meter` (None: nothing
    is counted)."""
    token = _current.set(meter)
    try:
        yield meter
    finally:
        _current.reset(token)


def current() -> ByteMeter | None:
    """The meter of the calling context, if a caller is watching."""
    return _current.get()


class CountingReader(io.RawIOBase):
    """A binary stream counting each byte read from `inner` into `meter`, capped at the meter's total and
    never backwards: a driver reading its layer twice (Nydus normalising) stays at 100 % the second time."""

    def __init__(self, inner: BinaryIO, meter: ByteMeter) -> None:
        super().__init__()
        self._inner = inner
        self._meter = meter
        self._read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self._inner.readinto(buffer)  # type: ignore[attr-defined]
        if count:
            self._count(count)
        return count or 0

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        if data:
            self._count(len(data))
        return data

    def _count(self, count: int) -> None:
        self._read += count
        reached = min(self._read, self._meter.total) if self._meter.total else self._read
        self._meter.set(max(self._meter.value, reached))  # a second read of the layer never goes back

    def close(self) -> None:
        self._inner.close()
        super().close()


def human_bytes(count: float) -> str:
    """`532 B`, `12.0 MB`: decimal units, as registries and docker show sizes."""
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"
