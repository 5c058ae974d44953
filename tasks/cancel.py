"""Cancelling a conversion that runs in this process (the warm local runner's on Ctrl-C, or accelctl's own
with `--in-process`), and one cancelled in Prefect while this process runs it.

The caller makes a `RunCancellation` current (`cancellable`) and calls the flow in that context; Prefect
copies the context into every task-run thread, so the flow and its layer task runs see the same per-run
object (an `accel.cancel.CancelToken`). Once it is set, `convert_image` stops at its next look (between
steps, `check`; while it waits for its layer tasks, `wait`) and ends the run CANCELLED, and the engine work
already running stops within about a second (`accel/cancel.py`: streaming loops, registry reads,
`nydus-image` killed): nothing is built or pushed after it, and blobs an early upload already sent stay
untagged.

`run_started` (the flow calls it first) tells the caller the flow run's id, and watches the run in
Prefect: `prefect flow-run cancel ID` (or the UI's Cancel) of a run this process runs sets the same token.
Runs started any other way (acceld, workers) have no `RunCancellation`: Prefect cancels those.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from accel import cancel as engine_cancel

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25  # how often the flow looks while it waits for its layer tasks
WATCH_SECONDS = 1.0  # how often the run's state in Prefect is read

# The engine's exception: a cancelled layer task run raises it, and so does the flow.
ConversionCancelled = engine_cancel.Cancelled


class RunCancellation(engine_cancel.CancelToken):
    """One conversion's cancellation: set by its caller (`cancel`) or by a cancel in Prefect.
    `on_started(flow_run_id)` is called once the flow run exists (the caller can then name it)."""

    def __init__(self, on_started: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.on_started = on_started
        self.flow_run_id: str | None = None
        self._ended = threading.Event()

    def end(self) -> None:
        """The conversion returned: stop watching its run."""
        self._ended.set()

    def watch(self, flow_run_id: str) -> None:
        """Until the conversion ends, read the run's state in Prefect; CANCELLING (or CANCELLED) sets the
        token. In a thread of its own, with this context (Prefect's settings: its API)."""
        self.flow_run_id = flow_run_id
        thread = threading.Thread(
            target=engine_cancel.in_this_context(self._watch),
            args=(flow_run_id,),
            name="cancel-watch",
            daemon=True,
        )
        thread.start()

    def _watch(self, flow_run_id: str) -> None:
        from prefect.client.orchestration import get_client

        try:
            with get_client(sync_client=True) as client:
                while not self._ended.wait(WATCH_SECONDS) and not self.cancelled:
                    with contextlib.suppress(Exception):  # the server busy for a moment: look again
                        state = client.read_flow_run(uuid.UUID(flow_run_id)).state
                        if state is not None and (state.is_cancelling() or state.is_cancelled()):
                            log.info("flow run %s was cancelled in Prefect", flow_run_id)
                            self.cancel("cancelled in Prefect")
        except Exception:  # no API to watch: Ctrl-C still cancels
            log.debug("cannot watch flow run %s", flow_run_id, exc_info=True)


@contextlib.contextmanager
def cancellable(cancellation: RunCancellation) -> Iterator[RunCancellation]:
    """A conversion run in this block (its flow and task runs) is cancelled once `cancellation` is set."""
    try:
        with engine_cancel.cancelled_by(cancellation):
            yield cancellation
    finally:
        cancellation.end()


def _current() -> RunCancellation | None:
    token = engine_cancel.current()
    return token if isinstance(token, RunCancellation) else None


def run_started() -> None:
    """Called by the flow as it begins: the caller learns the run's id, and a cancel in Prefect of this
    in-process run is watched for."""
    cancellation = _current()
    if cancellation is None or cancellation.flow_run_id is not None:
        return  # not cancellable here, or a nested flow run of the same conversion
    from prefect.runtime import flow_run

    flow_run_id = str(flow_run.id)
    if cancellation.on_started is not None:
        with contextlib.suppress(Exception):  # a caller gone away does not stop the run
            cancellation.on_started(flow_run_id)
    cancellation.watch(flow_run_id)


def requested() -> bool:
    token = engine_cancel.current()
    return token is not None and token.cancelled


def check(step: str) -> None:
    """Raise ConversionCancelled when this conversion was cancelled (before `step`)."""
    token = engine_cancel.current()
    if token is not None and token.cancelled:
        raise ConversionCancelled(f"{token.reason} before {step}: nothing is pushed")


def wait(future: Any, step: str) -> None:
    """`future.wait()`, looking at the cancellation every POLL_SECONDS while a local task runs."""
    wrapped = getattr(future, "wrapped_future", None)
    if not isinstance(wrapped, concurrent.futures.Future) or engine_cancel.current() is None:
        future.wait()
        return
    while not wrapped.done():
        check(step)
        concurrent.futures.wait([wrapped], timeout=POLL_SECONDS)
