"""The live display `accelctl convert` shows on a terminal while a conversion runs: per layer, the bytes
pulled, converted and pushed by each driver, cache hits, the whole run's percent and the elapsed time.

It draws the run's progress snapshots (`tasks.progress.RunProgress.snapshot`: the local runner sends one
every half second, `--in-process` gets them from its own run) with rich (which Prefect depends on), redrawn
twice a second, so the elapsed time moves even while no byte does, and gone when the conversion ends. Not
shown in a pipe or with -v: then stderr keeps its lines and stdout the result lines. Nothing here imports
Prefect; rich is imported only when a display is shown.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

from accel.progress import human_bytes

REFRESHES_PER_SECOND = 2
MAX_ROWS = 12  # layers shown at once; the rest are summed up in one line


def _elapsed(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}:{seconds:02d}"


def _cell(meter: list[Any] | None) -> str:
    """A step of one layer: `–` (not this run's to do), `12.0/53.1 MB`, or `done`."""
    if meter is None:
        return "–"
    value, total, finished = meter
    if finished:
        return "done"
    if total:
        return f"{100 * value / total:3.0f} % {human_bytes(value)}"
    return human_bytes(value) if value else "waiting"


def _active(layer: dict[str, Any]) -> bool:
    steps = [layer["pulled"]]
    for state in layer["drivers"].values():
        if not state["cached"]:
            steps += [state["converted"], state["uploaded"]]
    return any(step is not None and not step[2] for step in steps)


class Progress:
    """`with Progress(source):` shows the display on `stream` (a terminal); `update` gives it a snapshot."""

    def __init__(self, source: str, stream: TextIO = sys.stderr) -> None:
        from rich.console import Console
        from rich.live import Live

        self.source = source
        self.started = time.monotonic()
        self._snapshot: dict[str, Any] | None = None
        self._lock = threading.Lock()
        # Warnings printed to sys.stderr meanwhile go above the display; stdout (the results) is left alone.
        self._live = Live(
            self,
            console=Console(file=stream, stderr=stream is sys.stderr),
            refresh_per_second=REFRESHES_PER_SECOND,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=True,
        )

    def __enter__(self) -> Progress:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()

    def update(self, snapshot: dict[str, Any]) -> None:
        with self._lock:
            self._snapshot = snapshot

    def clear(self) -> None:
        """Kept for callers that print a line of their own: the display moves below it by itself."""

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        with self._lock:
            snapshot = self._snapshot
        elapsed = _elapsed(time.monotonic() - self.started)
        if snapshot is None or not snapshot["layers"]:
            return Text(f"converting {self.source}: resolving ({elapsed})")
        percent = float(snapshot["percent"])
        header = Text(f"converting {self.source}: {percent:.1f} % ({elapsed})")
        bar = Table.grid()  # a row of its own
        bar.add_row(ProgressBar(total=100, completed=percent, width=40))
        drivers = snapshot["drivers"]
        table = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold")
        table.add_column("layer")
        table.add_column("size", justify="right")
        table.add_column("pulled", justify="right")
        for driver in drivers:
            table.add_column(f"{driver}\nconverted", justify="right")
            table.add_column(f"{driver}\npushed", justify="right")
        layers = snapshot["layers"]
        # The layers still moving first, the largest of them on top.
        ordered = sorted(layers, key=lambda layer: (not _active(layer), -layer["size"]))
        for layer in ordered[:MAX_ROWS]:
            cells = [layer["digest"].removeprefix("sha256:")[:12], human_bytes(layer["size"])]
            cells.append(_cell(layer["pulled"]))
            for driver in drivers:
                state = layer["drivers"][driver]
                if state["cached"]:
                    cells += ["cache hit", "cache hit"]
                else:
                    cells += [_cell(state["converted"]), _cell(state["uploaded"])]
            table.add_row(*cells)
        parts: list[Any] = [header, bar, table]
        if hidden := layers[MAX_ROWS:]:
            parts.append(Text(f"… and {len(hidden)} more layers"))
        pushes = [f"{driver} push: {_cell(meter)}" for driver, meter in snapshot["pushes"].items()]
        if pushes:
            parts.append(Text("; ".join(pushes)))
        return Group(*parts)
