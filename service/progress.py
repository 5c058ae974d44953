"""The live status line `accelctl convert` shows on a terminal while the local runner converts: how many
layers were pulled, converted and uploaded per driver, pushes, and the elapsed time, redrawn every second.

The runner sends one {"progress": {"step": verb, "name": task run name, "state": state}} per finished task
run; nothing here imports Prefect (or anything beyond the standard library). Not shown in a pipe or with -v.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections import Counter
from typing import TextIO

# `convert sha256:abcdef012345 (estargz)`: the verb and, for per-driver steps, the driver.
_NAME = re.compile(r"^(?P<verb>[\w-]+)\b.*?(?:\((?P<driver>[\w-]+)\))?$")
# `convert 12 layers: sha256:…, … (estargz)`: a batch's run (tasks.batches) counts its layers.
_BATCH = re.compile(r"^[\w-]+ (?P<layers>\d+) layers:")
STEPS = ("pull", "convert", "upload", "push")
REDRAW_SECONDS = 1.0


class Progress:
    def __init__(self, source: str, stream: TextIO = sys.stderr) -> None:
        self.source = source
        self.stream = stream
        self.started = time.monotonic()
        self.done: Counter[tuple[str, str]] = Counter()  # (verb, driver or "") → finished task runs
        self.failed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._redraw_every_second, daemon=True)
        self._shown = False

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.clear()

    def task_finished(self, name: str, state: str) -> None:
        found = _NAME.match(name)
        if found is None or found["verb"] not in STEPS:
            return
        batch = _BATCH.match(name)
        with self._lock:
            self.done[(found["verb"], found["driver"] or "")] += int(batch["layers"]) if batch else 1
            if state not in ("Completed", "Cached"):
                self.failed += 1
        self.draw()

    def line(self) -> str:
        with self._lock:
            parts = []
            pulled = self.done[("pull", "")]
            if pulled:
                parts.append(f"pulled {pulled}")
            drivers = sorted({d for (verb, d) in self.done if d})
            for driver in drivers:
                steps = [
                    f"{verb}ed {self.done[(verb, driver)]}"
                    for verb in ("convert", "upload")
                    if self.done[(verb, driver)]
                ]
                parts.append(f"{driver}: " + ", ".join(steps))
            if pushes := self.done[("push", "")]:
                parts.append(f"pushed {pushes}")
            if self.failed:
                parts.append(f"{self.failed} failed")
        elapsed = time.monotonic() - self.started
        return f"converting {self.source}: " + ("; ".join(parts) or "resolving") + f" ({elapsed:.0f}s)"

    def draw(self) -> None:
        text = self.line()
        with self._lock:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
            self._shown = True

    def clear(self) -> None:
        """Before any other line is written: the status line goes, the next draw brings it back."""
        with self._lock:
            if self._shown:
                self.stream.write("\r\033[K")
                self.stream.flush()
                self._shown = False

    def _redraw_every_second(self) -> None:
        while not self._stop.wait(REDRAW_SECONDS):
            self.draw()
