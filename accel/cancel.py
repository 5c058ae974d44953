"""Cancelling engine work that is already running: a token its caller sets, which the work notices.

The caller of a conversion (accelctl's Ctrl-C, through the warm local runner or in its own process) holds a
`CancelToken` and makes it current for the work (`current_token`, a context variable: every thread started
with a copy of the caller's context sees it, as Prefect's task-run threads are). The engine looks at it where
work takes time: each block streamed from or to a registry, each block a layer reader reads, a backoff
between retries, a wait for a pull or a conversion slot (`check`, `sleep`). What blocks outside Python is
interrupted by a callback the token runs when it is set (`on_cancel`): `nydus-image` is killed, a stalled
download's socket is shut. Work outside any token (acceld's runs, tests) never looks further than the
context variable.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class Cancelled(Exception):
    """The work was cancelled by its caller (not an `AccelError`: nothing may take it for a failure of the
    image and carry on)."""


class CancelToken:
    """Set once (`cancel`); the work it is current for stops at its next look, or at once where a callback
    interrupts it."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: dict[int, Callable[[], object]] = {}
        self._ids = itertools.count()
        self.reason = "cancelled"

    def __repr__(self) -> str:
        return f"CancelToken(cancelled={self.cancelled}, reason={self.reason!r})"

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self, reason: str = "cancelled") -> None:
        """Set the token (the first reason stays) and run the interrupting callbacks registered now."""
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self._event.set()
            callbacks = list(self._callbacks.values())
        for callback in callbacks:
            _run(callback)

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled(self.reason)

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True (at once) when the token is set."""
        return self._event.wait(seconds)

    @contextlib.contextmanager
    def on_cancel(self, callback: Callable[[], object]) -> Iterator[None]:
        """Run `callback` if the token is set while the block runs (at once if it is set already)."""
        with self._lock:
            key = next(self._ids)
            self._callbacks[key] = callback
            already = self._event.is_set()
        if already:
            _run(callback)
        try:
            yield
        finally:
            with self._lock:
                self._callbacks.pop(key, None)


def _run(callback: Callable[[], object]) -> None:
    try:
        callback()
    except Exception:  # an interruption that could not be made: the work still stops at its next look
        log.debug("cancel callback %r failed", callback, exc_info=True)


current_token: contextvars.ContextVar[CancelToken | None] = contextvars.ContextVar(
    "accel_cancel_token", default=None
)


def current() -> CancelToken | None:
    return current_token.get()


@contextlib.contextmanager
def cancelled_by(token: CancelToken) -> Iterator[CancelToken]:
    """Work in this block (and in threads started with a copy of its context) stops once `token` is set."""
    reset = current_token.set(token)
    try:
        yield token
    finally:
        current_token.reset(reset)


def check() -> None:
    """Raise `Cancelled` when the current token is set."""
    token = current_token.get()
    if token is not None:
        token.check()


def sleep(seconds: float) -> None:
    """`time.sleep`, cut short (raising `Cancelled`) when the current token is set."""
    token = current_token.get()
    if token is None:
        time.sleep(seconds)
        return
    token.wait(seconds)
    token.check()


@contextlib.contextmanager
def on_cancel(callback: Callable[[], object]) -> Iterator[None]:
    """Run `callback` when the current token (if any) is set while the block runs."""
    token = current_token.get()
    if token is None:
        yield
        return
    with token.on_cancel(callback):
        yield


def in_this_context(target: Callable[P, T]) -> Callable[P, T]:
    """`target` run in a copy of the caller's context: a helper thread started with it sees the token."""
    context = contextvars.copy_context()

    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return context.run(target, *args, **kwargs)

    return run
