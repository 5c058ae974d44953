"""acceld.log has one line format (issue 23): acceld's own lines, uvicorn's and Prefect's (runner and flow-run
processes, through the Prefect logging config acceld sets), with digests shortened; JSON on request, with
the full digests and run ids in fields of their own."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

import pytest

from service import acceld
from service.logformat import (
    LOG_FORMAT_ENV,
    PREFECT_LOGGING_CONFIG,
    AcceldFormatter,
    JsonFormatter,
    shorten_digests,
)
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


def _prefect_process_lines(**env_extra: str) -> list[str]:
    """The stderr lines of a process started with acceld's environment (the runner, a flow-run process) that
    logs through Prefect's and the flow run loggers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING") and k != LOG_FORMAT_ENV}
    env |= env_extra
    env |= {"PREFECT_LOGGING_CONFIG_PATH": str(PREFECT_LOGGING_CONFIG), "PREFECT_LOGGING_LEVEL": "INFO"}
    env["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"  # no run here to send its lines to
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    script = (
        "import logging\n"
        "from prefect import flow  # configures Prefect's logging, as the flows' imports do\n"
        f"logging.getLogger('prefect.runner').info('runner line {DIGEST}')\n"
        f"run = {{'flow_run_name': 'convert h/r:v1@{DIGEST}'}}  # a run id would send it to the API\n"
        "logging.getLogger('prefect.flow_runs').warning('run line', extra=run)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 2, done.stderr
    return lines


def test_prefect_processes_log_in_acceld_s_format():
    lines = _prefect_process_lines()
    assert all(LINE.match(line) for line in lines), lines
    assert lines[0].endswith("prefect.runner: runner line sha256:0123456789ab")
    assert lines[1].endswith("flow run convert h/r:v1: run line")


def test_a_long_line_is_cut_at_200_characters():
    layers = ", ".join(f"sha256:{n:012x}" + "d" * 52 for n in range(40))
    line = AcceldFormatter().format(_record("prefect.task_runs", f"converting with estargz {layers}"))
    assert len(line) == 200 and line.endswith("…") and "d" * 52 not in line


def test_json_lines_carry_short_digests_in_the_message_and_full_ones_in_fields():
    formatter = JsonFormatter()
    entry = json.loads(formatter.format(_record("acceld.api", f"push of h/r:v1@{DIGEST} ({DIGEST})")))
    assert set(entry) == {"time", "level", "source", "message", "digests"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    assert (entry["level"], entry["source"]) == ("INFO", "acceld.api")
    assert entry["message"] == "push of h/r:v1@sha256:0123456789ab (sha256:0123456789ab)"
    assert entry["digests"] == [DIGEST]
    run = _record("prefect.flow_runs", "pushed", flow_run_name=f"convert h/r:v1@{DIGEST}", flow_run_id="r-1")
    entry = json.loads(formatter.format(run))
    assert entry["source"] == "flow run convert h/r:v1" and "digests" not in entry
    assert (entry["flow_run_name"], entry["flow_run_id"]) == (f"convert h/r:v1@{DIGEST}", "r-1")


def test_json_keeps_long_messages_and_tracebacks_in_one_line():
    layers = ", ".join(f"sha256:{n:012x}" + "d" * 52 for n in range(40))
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("acceld", logging.ERROR, __file__, 1, layers, None, sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert len(entry["digests"]) == 40 and "…" not in entry["message"]
    assert entry["exception"].endswith("ValueError: boom")


def test_acceld_formatter_follows_the_chosen_format(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(LOG_FORMAT_ENV, "json")
    assert json.loads(AcceldFormatter().format(_record("acceld", "hello")))["message"] == "hello"
    monkeypatch.setenv(LOG_FORMAT_ENV, "human")
    assert LINE.match(AcceldFormatter().format(_record("acceld", "hello")))


def test_prefect_processes_log_json_when_acceld_does():
    lines = _prefect_process_lines(**{LOG_FORMAT_ENV: "json"})
    runner, run = (json.loads(line) for line in lines)
    assert (runner["source"], runner["message"]) == ("prefect.runner", "runner line sha256:0123456789ab")
    assert runner["digests"] == [DIGEST]
    assert run["level"] == "WARNING" and run["source"] == "flow run convert h/r:v1"
    assert run["flow_run_name"] == f"convert h/r:v1@{DIGEST}"


def test_acceld_log_format_json_reaches_its_log_and_its_children(monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.delenv(LOG_FORMAT_ENV, raising=False)
    monkeypatch.delenv("ACCEL_CONFIG", raising=False)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        assert acceld.main(["--log-format", "json"]) == 2  # no config: stops after configuring its log
        assert os.environ[LOG_FORMAT_ENV] == "json"  # what the runner and flow-run processes inherit
        logging.getLogger("acceld").warning("refusing %s", DIGEST)
        entry = json.loads(capsys.readouterr().err.splitlines()[-1])
        assert entry["message"] == "refusing sha256:0123456789ab" and entry["digests"] == [DIGEST]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
