"""Cancelling a conversion that runs in this process's thread (the warm local runner's, on Ctrl-C).

The caller marks its thread cancellable with an Event (`cancellable`); `convert_image` looks at it between
steps (`check`) and while it waits for its layer tasks (`wait`), and ends the run CANCELLED on the first
look after it is set: nothing is built or pushed after that, and blobs an early upload already sent stay
untagged. Task threads still running finish on their own (into the content store only). Runs started any
other way (acceld, workers) have no event here: Prefect cancels those.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

_events: dict[int, threading.Event] = {}
_lock = threading.Lock()

POLL_SECONDS = 0.25


class ConversionCancelled(Exception):
    """The conversion was cancelled by its caller; the run ends CANCELLED."""


@contextlib.contextmanager
def cancellable(event: threading.Event) -> Iterator[None]:
    """A conversion run in the calling thread inside this block is cancelled once `event` is set."""
    ident = threading.get_ident()
    with _lock:
        previous = _events.get(ident)
        _events[ident] = event
    try:
        yield
    finally:
        with _lock:
            if previous is None:
                _events.pop(ident, None)
            else:
                _events[ident] = previous


def requested() -> bool:
    event = _events.get(threading.get_ident())
    return event is not None and event.is_set()


def check(step: str) -> None:
    """Raise ConversionCancelled when this thread's conversion was cancelled (before `step`)."""
    if requested():
        raise ConversionCancelled(f"cancelled (Ctrl-C) before {step}: nothing is pushed")


def wait(future: Any, step: str) -> None:
    """`future.wait()`, looking at the cancellation every POLL_SECONDS while a local task runs."""
    wrapped = getattr(future, "wrapped_future", None)
    if not isinstance(wrapped, concurrent.futures.Future) or threading.get_ident() not in _events:
        future.wait()
        return
    while not wrapped.done():
        check(step)
        concurrent.futures.wait([wrapped], timeout=POLL_SECONDS)
