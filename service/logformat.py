"""acceld's one log line format, for its own lines, uvicorn's and Prefect's (runner and flow runs alike).

    2026-12-07 19:23:46.307 INFO    flow run convert reg/app:v3: pushed reg/app:v3-esgz@sha256:78b5d00850bf

`<date> <time> <LEVEL> <source>: <message>`, where the source is the logger's name, or the flow or task run a
Prefect run logger speaks for (at most SOURCE_WIDTH characters, a run name without its digest). Digests are
shortened to 12 hex digits in log lines, and a line is at most LINE_WIDTH (200) characters, cut with `…`
(a batch task run's list of layers, say); the API, the run's artifacts and the Prefect UI keep them whole.

Standard library only: acceld's runner, its flow-run processes (through PREFECT_LOGGING_CONFIG_PATH, see
`PREFECT_LOGGING_CONFIG`) and acceld itself use it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s %(source)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
# Prefect's logging config with this module's formatter: PREFECT_LOGGING_CONFIG_PATH of acceld's runner and
# of the flow-run processes it starts.
PREFECT_LOGGING_CONFIG = Path(__file__).with_name("prefect_logging.yml")
_DIGEST = re.compile(r"\b(sha256:[0-9a-f]{12})[0-9a-f]{52}\b")
_PINNED = re.compile(r"@sha256:[0-9a-f]{12,64}")


def shorten_digests(text: str) -> str:
    """`sha256:` + 64 hex → `sha256:` + its first 12 (as task-run names show layers)."""
    return _DIGEST.sub(r"\1", text)


SOURCE_WIDTH = 64  # characters of a line's source at most: the message is what the line is for
# Characters of a log line at most; a longer one is cut with `…`. Only acceld.log's copy: the run's logs in
# the Prefect API, its artifacts and acceld's API keep the whole text.
LINE_WIDTH = 200


def _source(record: logging.LogRecord) -> str:
    if task_run := getattr(record, "task_run_name", None):
        source = f"task run {task_run}"
    elif flow_run := getattr(record, "flow_run_name", None):
        # `convert host/repo:tag@sha256:…`: the tag names the run well enough in a line (its messages give
        # the digest where it matters).
        source = f"flow run {_PINNED.sub('', str(flow_run))}"
    else:
        return record.name
    return source if len(source) <= SOURCE_WIDTH else source[: SOURCE_WIDTH - 1] + "…"


class AcceldFormatter(logging.Formatter):
    """LOG_FORMAT with short digests. Takes (and ignores) the options Prefect's formatter config passes."""

    def __init__(self, *_args: Any, **_options: Any) -> None:
        super().__init__(LOG_FORMAT, DATE_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        record.source = _source(record)
        lines = shorten_digests(super().format(record)).split("\n")
        return "\n".join(line if len(line) <= LINE_WIDTH else line[: LINE_WIDTH - 1] + "…" for line in lines)


def configure(level: str | int) -> None:
    """acceld's process: every log line to stderr in LOG_FORMAT at `level`, whatever configured logging
    before (Prefect does when it is imported)."""
    handler = logging.StreamHandler()
    handler.setFormatter(AcceldFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn's and Prefect's loggers have handlers (and formats) of their own: theirs go through root's.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "prefect"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.propagate = True
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call otherwise
