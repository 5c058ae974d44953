"""acceld's one log line format, for its own lines, uvicorn's and Prefect's (runner and flow runs alike).

    2026-12-07 19:23:46.307 INFO    flow run convert reg/app:v3: pushed reg/app:v3-esgz@sha256:78b5d00850bf

`<date> <time> <LEVEL> <source>: <message>`, where the source is the logger's name, or the flow or task run a
Prefect run logger speaks for (at most SOURCE_WIDTH characters, a run name without its digest). Digests are
shortened to 12 hex digits in log lines, and a line is at most LINE_WIDTH (200) characters, cut with `…`
(a batch task run's list of layers, say); the API, the run's artifacts and the Prefect UI keep them whole.

JSON on request (`acceld --log-format json`, or ACCELD_LOG_FORMAT=json, which acceld passes on to its runner
and flow-run processes): one object a line,

    {"time": "2026-12-07T19:23:46.307Z", "level": "INFO", "source": "flow run convert reg/app:v3",
     "message": "pushed reg/app:v3-esgz@sha256:78b5d00850bf", "digests": ["sha256:78b5d00850bf…(64 hex)"],
     "flow_run_id": "…"}

with the message's digests short as in the line format, their full form in `digests`, the Prefect run's ids
when the line speaks for one, and `exception` for a traceback; messages are not cut.

Standard library only: acceld's runner, its flow-run processes (through PREFECT_LOGGING_CONFIG_PATH, see
`PREFECT_LOGGING_CONFIG`) and acceld itself use it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s %(source)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
# Prefect's logging config with this module's formatter: PREFECT_LOGGING_CONFIG_PATH of acceld's runner and
# of the flow-run processes it starts.
PREFECT_LOGGING_CONFIG = Path(__file__).with_name("prefect_logging.yml")
_DIGEST = re.compile(r"\b(sha256:[0-9a-f]{12})[0-9a-f]{52}\b")
_FULL_DIGEST = re.compile(r"\bsha256:[0-9a-f]{64}\b")
# `human` (LOG_FORMAT) or `json`; read by every process's formatter, so acceld sets it for its children.
LOG_FORMAT_ENV = "ACCELD_LOG_FORMAT"
LOG_FORMATS = ("human", "json")
# A Prefect run logger's record attributes worth a JSON field of their own.
_RUN_FIELDS = ("flow_run_id", "flow_run_name", "task_run_id", "task_run_name")
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


class HumanFormatter(logging.Formatter):
    """LOG_FORMAT with short digests, lines cut at LINE_WIDTH."""

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT, DATE_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        record.source = _source(record)
        lines = shorten_digests(super().format(record)).split("\n")
        return "\n".join(line if len(line) <= LINE_WIDTH else line[: LINE_WIDTH - 1] + "…" for line in lines)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, source, message (short digests), the full digests and run ids."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        when = dt.datetime.fromtimestamp(record.created, dt.UTC)
        entry: dict[str, object] = {
            "time": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z",
            "level": record.levelname,
            "source": _source(record),
            "message": shorten_digests(message),
        }
        if digests := list(dict.fromkeys(_FULL_DIGEST.findall(message))):
            entry["digests"] = digests
        for name in _RUN_FIELDS:
            if value := getattr(record, name, None):
                entry[name] = str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def log_format() -> str:
    """The format this process logs in: ACCELD_LOG_FORMAT, `human` when unset or unknown."""
    chosen = os.environ.get(LOG_FORMAT_ENV, "human").strip().lower()
    return chosen if chosen in LOG_FORMATS else "human"


class AcceldFormatter(logging.Formatter):
    """acceld's format for this process (`log_format()`): the line format, or JSON. Takes (and ignores) the
    options Prefect's formatter config passes."""

    def __init__(self, *_args: Any, **_options: Any) -> None:
        super().__init__()
        self._chosen: logging.Formatter = JsonFormatter() if log_format() == "json" else HumanFormatter()

    def format(self, record: logging.LogRecord) -> str:
        return self._chosen.format(record)


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
