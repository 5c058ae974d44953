"""The Go accelctl's recorded requests, replayed against accel's API, and what the Go client does with the
answers (tests/unit/recorded/go_accelctl_against_accel.json, recorded from the real Go accelctl v0.2.9).

The Go client (pkg/client of goharbor/acceleration-service) sends no Authorization header, treats any status
from 400 to 500 as an error decoded as {code, message}, ignores a create's body, and decodes the task list
into its own struct: id, created and finished as RFC 3339 times (or null), source, source_size and
target_size as unsigned integers, status and reason as strings; other fields are ignored.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from accel.config import load_settings
from service.api import create_app
from service.metrics import Metrics
from tests.harness.api import FakeBackend

RECORDED = json.loads((Path(__file__).parent / "recorded" / "go_accelctl_against_accel.json").read_text())
EXCHANGES: list[dict[str, Any]] = RECORDED["exchanges"]
SOURCE_HOST = EXCHANGES[0]["request"]["body"]["event_data"]["resources"][0]["resource_url"].split("/")[0]
# What Go's time.Time.UnmarshalJSON takes: RFC 3339 with an optional fraction and a zone.
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
GO_STATUSES = {"PROCESSING", "COMPLETED", "FAILED"}  # pkg/task's statuses, which the Go accelctl prints


def go_decodes_task_list(body: str) -> list[dict[str, Any]]:
    """The Go accelctl's decoding of a task list (`[]task.Task`), failing where Go's would."""
    tasks = json.loads(body)
    assert tasks is None or isinstance(tasks, list)
    for task in tasks or []:
        assert isinstance(task["id"], str) and isinstance(task["source"], str)
        assert isinstance(task["status"], str) and isinstance(task["reason"], str)
        assert task["status"] in GO_STATUSES
        assert RFC3339.match(task["created"]), task["created"]
        assert task["finished"] is None or RFC3339.match(task["finished"]), task["finished"]
        for size in ("source_size", "target_size"):
            assert isinstance(task[size], int) and task[size] >= 0  # Go's uint
    return tasks or []


def go_accepts(status: int) -> bool:
    return not 400 <= status <= 500  # pkg/client Request: anything else is not an error


def app_settings(tmp_path: Path, webhook: dict[str, Any]):
    return load_settings(
        {
            "provider": {"source": {SOURCE_HOST: {"webhook": webhook}}, "work_dir": str(tmp_path / "work")},
            "converter": {"driver": {"type": "estargz"}, "rules": [{"tag_suffix": "-esgz"}]},
        }
    )


def test_the_recorded_answers_of_accel_are_what_the_go_client_reads():
    for exchange in EXCHANGES:
        request, answer = exchange["request"], exchange["answer"]
        assert "Authorization" not in request["headers"]  # the Go accelctl never sends one
        assert go_accepts(answer["status"])
        if request["method"] == "GET":
            [task] = go_decodes_task_list(answer["body"])
            assert task["status"] == "COMPLETED" and task["source"].startswith(SOURCE_HOST + "/")


def test_the_go_accelctl_requests_replayed_against_an_unauthenticated_host(tmp_path):
    """README "Switching from acceld": the Go accelctl works against a host with allow_unauthenticated."""
    backend = FakeBackend()
    app = create_app(app_settings(tmp_path, {"allow_unauthenticated": True}), backend, Metrics())
    with TestClient(app) as client:
        for exchange in EXCHANGES:
            request, recorded = exchange["request"], exchange["answer"]
            answer = client.request(
                request["method"], request["path"], headers=request["headers"], json=request["body"]
            )
            assert answer.status_code == recorded["status"], answer.text
            assert answer.headers["content-type"] == recorded["content_type"]
            if request["method"] == "GET":
                [task] = go_decodes_task_list(answer.text)
                [recorded_task] = json.loads(recorded["body"])
                assert set(task) == set(recorded_task)  # the same fields as the real acceld's answer
    assert len(backend.tasks) == 1  # create, then create --sync of the same source: one task, as recorded


def test_the_go_accelctl_against_a_host_with_a_secret_gets_an_error_it_prints(tmp_path):
    backend = FakeBackend()
    app = create_app(app_settings(tmp_path, {"auth_header": "Bearer s3cret"}), backend, Metrics())
    create = EXCHANGES[0]["request"]
    with TestClient(app) as client:
        answer = client.request("POST", create["path"], headers=create["headers"], json=create["body"])
    assert answer.status_code == 401 and not go_accepts(answer.status_code)
    error = answer.json()  # the Go client decodes {code, message} and prints "service response: <message>"
    assert isinstance(error["code"], str) and error["message"]
    assert backend.requests == []


def test_the_go_accelctl_list_is_refused_once_any_host_has_a_secret(tmp_path):
    """Reads name every repository, so they take a configured header: with any host's auth_header set, the
    Go accelctl's header-less `task list` gets a 401 it prints (README "Switching from acceld")."""
    settings = load_settings(
        {
            "provider": {
                "source": {
                    SOURCE_HOST: {"webhook": {"allow_unauthenticated": True}},
                    "harbor.test": {"webhook": {"auth_header": "Bearer s3cret"}},
                },
                "work_dir": str(tmp_path / "work"),
            },
            "converter": {"driver": {"type": "estargz"}, "rules": [{"tag_suffix": "-esgz"}]},
        }
    )
    [create, _create_sync, listing] = [e["request"] for e in EXCHANGES]
    with TestClient(create_app(settings, FakeBackend(), Metrics())) as client:
        created = client.request("POST", create["path"], headers=create["headers"], json=create["body"])
        listed = client.request("GET", listing["path"], headers=listing["headers"])
    assert go_accepts(created.status_code)
    assert listed.status_code == 401 and listed.json()["message"].startswith("Authorization header missing")
