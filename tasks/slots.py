"""Conversion slots of one flow run: at most N layer conversions at once, the largest layers first.

A conversion here is one `convert-layers` task run: a batch of layers (`tasks.batches`), announced with its
layers' total size and holding its slot while it converts them one after another.

With conversions reading behind their pulls, every conversion of a run starts at once and queues for a
slot; the order they reach it is a race of a few milliseconds. Taken first come first served, two small
layers could take both slots while the largest waits, and the run then ends one large conversion later
than it needs to (the longest-first rule of list scheduling). So the flow announces each conversion with
its layer's size, and a free slot goes to the largest announced conversion. A conversion that never asks
(its result came from Prefect's task cache, or it failed first) is withdrawn by the flow when its task run
ends; and none waits for a larger one that has not asked yet for more than `WAIT_FOR_LARGER` seconds, so a
thread pool too small to start it cannot hold the others up for ever.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from accel import cancel

WAIT_FOR_LARGER = 2.0


class ConversionSlots:
    def __init__(self, limit: int, wait_for_larger: float = WAIT_FOR_LARGER) -> None:
        self._limit = max(1, limit)
        self._wait_for_larger = wait_for_larger
        self._changed = threading.Condition()
        self._running = 0
        self._waiting: dict[str, int] = {}  # conversion → its layer's size: announced, not yet started
        self._asking: set[str] = set()  # of those, the ones waiting in `slot`

    def announce(self, key: str, size: int) -> None:
        with self._changed:
            self._waiting[key] = size

    def withdraw(self, key: str) -> None:
        """The conversion will not ask (its task run ended); a no-op once it has started."""
        with self._changed:
            if self._waiting.pop(key, None) is not None:
                self._changed.notify_all()

    @contextlib.contextmanager
    def slot(self, key: str, size: int) -> Iterator[None]:
        """Hold one of the slots while the block runs; wait for it behind larger layers."""
        arrived = time.monotonic()
        with self._changed:
            self._waiting.setdefault(key, size)
            self._asking.add(key)
            try:
                while not self._may_start(key, size, time.monotonic() - arrived):
                    cancel.check()  # a cancelled run's queued conversions never start
                    self._changed.wait(0.1)
            except cancel.Cancelled:
                self._asking.discard(key)
                raise
            del self._waiting[key]
            self._asking.discard(key)
            self._running += 1
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()

    def _may_start(self, key: str, size: int, waited: float) -> bool:
        if self._running >= self._limit:
            return False
        # Ties go by key, so that of two equal layers exactly one is first.
        larger = [name for name, other in self._waiting.items() if (other, name) > (size, key)]
        if any(name in self._asking for name in larger):
            return False
        return not larger or waited >= self._wait_for_larger
