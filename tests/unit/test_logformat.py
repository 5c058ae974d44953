"""acceld.log has one line format (issue 23): acceld's own lines, uvicorn's and Prefect's (runner and flow-run
processes, through the Prefect logging config acceld sets), with digests shortened."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

from service.logformat import PREFECT_LOGGING_CONFIG, AcceldFormatter, shorten_digests
from service.state import PROJECT_ROOT

DIGEST = "sha256:" + "0123456789ab" + "c" * 52
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (INFO|WARNING) +(?P<source>.+?): (?P<message>.*)$")


def _record(name: str, message: str, **extra: str) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    return record


def test_lines_name_their_source_and_shorten_digests():
    formatter = AcceldFormatter()
    plain = LINE.match(formatter.format(_record("acceld.api", f"push of h/r:v1@{DIGEST}")))
    assert (
        plain and plain["source"] == "acceld.api" and plain["message"] == "push of h/r:v1@sha256:0123456789ab"
    )
    run = LINE.match(
        formatter.format(_record("prefect.flow_runs", "pushed", flow_run_name=f"convert h/r:v1@{DIGEST}"))
    )
    assert run and run["source"] == "flow run convert h/r:v1"
    task = LINE.match(
        formatter.format(_record("prefect.task_runs", "done", task_run_name="pull sha256:0123456789ab"))
    )
    assert task and task["source"] == "task run pull sha256:0123456789ab"
    assert shorten_digests(f"{DIGEST} and {DIGEST}") == "sha256:0123456789ab and sha256:0123456789ab"


def test_prefect_processes_log_in_acceld_s_format():
    """A process started with acceld's environment (the runner, a flow-run process) formats Prefect's and the
    flow run loggers' lines as acceld does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING")}
    env |= {"PREFECT_LOGGING_CONFIG_PATH": str(PREFECT_LOGGING_CONFIG), "PREFECT_LOGGING_LEVEL": "INFO"}
    env["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"  # no run here to send its lines to
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    script = (
        "import logging\n"
        "from prefect import flow  # configures Prefect's logging, as the flows' imports do\n"
        f"logging.getLogger('prefect.runner').info('runner line {DIGEST}')\n"
        "run = {'flow_run_name': 'convert h/r:v1'}\n"
        "logging.getLogger('prefect.flow_runs').warning('run line', extra=run)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 2 and all(LINE.match(line) for line in lines), done.stderr
    assert lines[0].endswith("prefect.runner: runner line sha256:0123456789ab")
    assert lines[1].endswith("flow run convert h/r:v1: run line")


def test_a_long_line_is_cut_at_200_characters():
    layers = ", ".join(f"sha256:{n:012x}" + "d" * 52 for n in range(40))
    line = AcceldFormatter().format(_record("prefect.task_runs", f"converting with estargz {layers}"))
    assert len(line) == 200 and line.endswith("…") and "d" * 52 not in line
