"""Expected failures end task and flow runs with one line: no traceback in the run's logs.

An `AccelError` (a 404, a refused credential, a limit, a config error: `accel/errors.py`,
`accel/registry/errors.py`) is a failure the engine raised on purpose, whose message already says what
failed and why; Prefect's engines log every exception with its traceback. `ExpectedFailureFilter`, on
Prefect's task-run and flow-run loggers, drops the traceback of those records only (the line stays, and so
does every state message); any other exception is a bug and keeps its traceback. ACCEL_DEBUG=1 (or
`show_tracebacks`) keeps them all.
"""

from __future__ import annotations

import logging
import os

from accel.cancel import Cancelled
from accel.errors import AccelError

RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")

# Set by the warm local runner for one `accelctl convert --debug` call.
show_tracebacks = False


class ExpectedFailureFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and not (show_tracebacks or os.environ.get("ACCEL_DEBUG")):
            exc = record.exc_info[1]
            if isinstance(exc, AccelError | Cancelled):  # a cancellation is no failure either
                record.exc_info = None
                record.exc_text = None
        return True


def install() -> None:
    """On Prefect's run loggers, once per process (logger filters survive Prefect's logging setup)."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ExpectedFailureFilter) for f in logger.filters):
            logger.addFilter(ExpectedFailureFilter())
