"""The HTTP layer against an in-memory backend: status codes, auth, idempotency keys, metrics."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import time

import pytest
from fastapi.testclient import TestClient

from accel.config import load_settings
from service.api import ConversionTask, SubmitRequest, TaskNotFound, create_app
from service.api.conversions import COMPLETED, FAILED, PROCESSING
from service.metrics import Metrics

HOST = "harbor.test:8443"
OPEN_HOST = "open.test"
DIGEST = "sha256:" + "ab" * 32
SECRET = "Bearer s3cret"


class FakeBackend:
    def __init__(self) -> None:
        self.tasks: dict[str, ConversionTask] = {}
        self.requests: list[SubmitRequest] = []
        self.by_key: dict[str, str] = {}
        self.fail_sources: set[str] = set()
        self.down = False
        self.delay = 0.0

    async def submit(self, request: SubmitRequest) -> ConversionTask:
        self.requests.append(request)
        await asyncio.sleep(self.delay)
        if request.idempotency_key in self.by_key:
            return self.tasks[self.by_key[request.idempotency_key]]
        task = ConversionTask(
            id=f"task-{len(self.tasks)}",
            created=dt.datetime.now(dt.UTC),
            source=str(request.source),
            status=PROCESSING,
            drivers=list(request.drivers),
        )
        self.tasks[task.id] = task
        self.by_key[request.idempotency_key] = task.id
        return task

    async def get(self, task_id: str) -> ConversionTask:
        try:
            return self.tasks[task_id]
        except KeyError:
            raise TaskNotFound(task_id) from None

    async def list(self, limit: int) -> list[ConversionTask]:
        return list(self.tasks.values())[:limit]

    async def wait(self, task_id: str, timeout: float) -> ConversionTask:
        task = self.tasks[task_id]
        failed = task.source in self.fail_sources
        done = task.model_copy(
            update={
                "status": FAILED if failed else COMPLETED,
                "reason": "boom" if failed else "",
                "finished": dt.datetime.now(dt.UTC),
            }
        )
        self.tasks[task_id] = done
        return done

    async def problems(self) -> list[str]:
        return ["prefect down"] if self.down else []


@pytest.fixture
def settings(tmp_path):
    return load_settings(
        {
            "provider": {
                "source": {HOST: {"webhook": {"auth_header": SECRET}}, OPEN_HOST: {}},
                "work_dir": str(tmp_path / "work"),
            },
            "converter": {
                "driver": {"type": "estargz"},
                "rules": [{"tag_suffix": "-esgz"}],
            },
        }
    )


@pytest.fixture
def backend():
    return FakeBackend()


@pytest.fixture
def metrics():
    return Metrics()


@pytest.fixture
def client(settings, backend, metrics):
    with TestClient(create_app(settings, backend, metrics)) as c:
        yield c


def harbor(resource_url: str, digest: str | None = DIGEST, tag: str | None = "v1", kind="PUSH_ARTIFACT"):
    resource = {"resource_url": resource_url}
    if digest:
        resource["digest"] = digest
    if tag:
        resource["tag"] = tag
    return {
        "type": kind,
        "occur_at": 1700000000,
        "operator": "admin",
        "event_data": {
            "resources": [resource],
            "repository": {"name": "app", "namespace": "library", "repo_full_name": "library/app"},
        },
    }


def cloudevent(resource_url: str, kind="harbor.artifact.pushed"):
    return {
        "specversion": "1.0",
        "id": "4b2f89a6",
        "source": "/projects/1/webhook/policies/3",
        "type": kind,
        "datacontenttype": "application/json",
        "time": "2024-03-06T06:08:43Z",
        "data": harbor(resource_url)["event_data"],
        "operator": "admin",
    }


def test_harbor_push_creates_task_pinned_to_digest(client, backend):
    r = client.post(
        "/api/v1/conversions", json=harbor(f"{HOST}/library/app:v1"), headers={"Authorization": SECRET}
    )
    assert r.status_code == 202, r.text
    [task] = r.json()["tasks"]
    assert task["status"] == "PROCESSING"
    [req] = backend.requests
    assert str(req.source) == f"{HOST}/library/app:v1@{DIGEST}"
    assert req.drivers == ("estargz",)
    assert req.idempotency_key.startswith("accel-")


def test_same_event_twice_is_one_task(client, backend):
    body = harbor(f"{HOST}/library/app:v1")
    ids = {
        client.post("/api/v1/conversions", json=body, headers={"Authorization": SECRET}).json()["tasks"][0][
            "id"
        ]
        for _ in range(2)
    }
    assert len(ids) == 1 and len(backend.tasks) == 1
    other = harbor(f"{HOST}/library/app:v2", tag="v2")
    r = client.post("/api/v1/conversions", json=other, headers={"Authorization": SECRET})
    assert r.json()["tasks"][0]["id"] not in ids


def test_slow_orchestrator_still_answers_in_time(settings, backend, metrics):
    backend.delay = 1.0
    app = create_app(settings, backend, metrics)
    app.state.api.answer_within = 0.2
    with TestClient(app) as client:
        started = time.monotonic()
        r = client.post("/api/v1/conversions", json=harbor(f"{OPEN_HOST}/a/b:v1"))
        assert time.monotonic() - started < 0.9
        assert r.status_code == 202 and r.json()["tasks"] == []
        assert r.json()["pending"] == [f"{OPEN_HOST}/a/b:v1@{DIGEST}"]
        time.sleep(1.2)  # creation finished in the background
        assert len(backend.tasks) == 1


def test_cloudevents_push(client, backend):
    r = client.post(
        "/api/v1/conversions",
        content=json.dumps(cloudevent(f"{OPEN_HOST}/team/app:v1")),
        headers={"Content-Type": "application/cloudevents+json"},
    )
    assert r.status_code == 202, r.text
    assert str(backend.requests[0].source) == f"{OPEN_HOST}/team/app:v1@{DIGEST}"


def test_non_push_events_are_acknowledged_and_ignored(client, backend):
    r = client.post("/api/v1/conversions", json=harbor(f"{HOST}/library/app:v1", kind="PULL_ARTIFACT"))
    assert r.status_code == 200 and r.json()["status"] == "ignored"
    r = client.post("/api/v1/conversions", json=cloudevent(f"{HOST}/a/b:v1", kind="harbor.artifact.pulled"))
    assert r.status_code == 200 and r.json()["status"] == "ignored"
    assert backend.requests == []


def test_converted_tags_do_not_loop(client, backend):
    r = client.post("/api/v1/conversions", json=harbor(f"{OPEN_HOST}/a/b:v1-esgz", tag="v1-esgz"))
    assert r.status_code == 200 and r.json()["status"] == "ignored"
    assert backend.requests == []


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer wrong"}, 401), ({"Authorization": SECRET}, 202)],
)
def test_auth_header(client, backend, headers, status):
    r = client.post("/api/v1/conversions", json=harbor(f"{HOST}/library/app:v1"), headers=headers)
    assert r.status_code == status, r.text
    assert len(backend.requests) == (1 if status == 202 else 0)


def test_unknown_host_is_forbidden(client, backend):
    r = client.post("/api/v1/conversions", json=harbor("evil.example.com/library/app:v1"))
    assert r.status_code == 403
    assert "evil.example.com" in r.json()["reason"]
    assert backend.requests == []


def test_sync_waits_and_reports_failure(client, backend):
    r = client.post("/api/v1/conversions?sync=true", json=harbor(f"{OPEN_HOST}/a/b:v1"))
    assert r.status_code == 200 and r.json()["tasks"][0]["status"] == "COMPLETED"
    backend.fail_sources.add(f"{OPEN_HOST}/a/c:v1@{DIGEST}")
    r = client.post("/api/v1/conversions?sync=true", json=harbor(f"{OPEN_HOST}/a/c:v1"))
    assert r.status_code == 500
    assert r.json()["tasks"][0]["status"] == "FAILED" and "boom" in r.json()["reason"]


def test_distribution_envelope(client, backend):
    events = {
        "events": [
            {
                "action": "push",
                "target": {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": DIGEST,
                    "repository": "a/b",
                },
                "request": {"host": OPEN_HOST},
            },
            {
                "action": "push",
                "target": {
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "digest": DIGEST,
                    "repository": "a/b",
                    "tag": "v3",
                    "url": f"http://{OPEN_HOST}/v2/a/b/manifests/{DIGEST}",
                },
                "request": {"host": OPEN_HOST},
            },
        ]
    }
    r = client.post(
        "/api/v1/notifications/distribution",
        content=json.dumps(events),
        headers={"Content-Type": "application/vnd.docker.distribution.events.v1+json"},
    )
    assert r.status_code == 202, r.text
    assert [str(q.source) for q in backend.requests] == [f"{OPEN_HOST}/a/b:v3@{DIGEST}"]


def test_list_get_and_404(client):
    r = client.post("/api/v1/conversions", json=harbor(f"{OPEN_HOST}/a/b:v1"))
    task_id = r.json()["tasks"][0]["id"]
    listed = client.get("/api/v1/conversions").json()
    assert [t["id"] for t in listed] == [task_id]
    assert set(listed[0]) >= {
        "id",
        "created",
        "finished",
        "source",
        "target",
        "source_size",
        "target_size",
        "status",
        "reason",
    }
    assert client.get(f"/api/v1/conversions/{task_id}").json()["source"] == f"{OPEN_HOST}/a/b:v1@{DIGEST}"
    assert client.get("/api/v1/conversions/nope").status_code == 404
    assert client.get("/api/v1/conversions?limit=0").status_code == 400


def test_health_and_readiness(client, backend):
    assert client.get("/api/v1/health").status_code == 200
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    backend.down = True
    r = client.get("/readyz")
    assert r.status_code == 503 and "prefect down" in r.json()["problems"]


def test_metrics_count_webhooks(client, backend):
    client.post("/api/v1/conversions", json=harbor(f"{OPEN_HOST}/a/b:v1"))
    client.post("/api/v1/conversions", content=b"{not json")
    text = client.get("/metrics").text
    assert 'accel_webhook_requests_total{result="accepted",source="harbor"} 1.0' in text
    assert 'accel_webhook_requests_total{result="invalid",source="harbor"} 1.0' in text
    assert "accel_build_info{" in text
    assert "a/b" not in text  # no per-repository labels


def _malformed_bodies() -> list[bytes]:
    rng = random.Random(7)
    good = json.dumps(harbor(f"{OPEN_HOST}/a/b:v1")).encode()
    fixed = [
        b"",
        b"   ",
        b"null",
        b"[]",
        b"42",
        b'"PUSH_ARTIFACT"',
        b"{",
        b"\xff\xfe\x00",
        b"NaN",
        b'{"type": 5}',
        b'{"type": "PUSH_ARTIFACT"}',
        b'{"type": "PUSH_ARTIFACT", "event_data": []}',
        b'{"type": "PUSH_ARTIFACT", "event_data": {"resources": {}}}',
        b'{"type": "PUSH_ARTIFACT", "event_data": {"resources": []}}',
        b'{"type": "PUSH_ARTIFACT", "event_data": {"resources": [7]}}',
        b'{"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": 7}]}}',
        b'{"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": "UPPER/Case:x"}]}}',
        b'{"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": "h/a:b c"}]}}',
        b'{"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": "nohost"}]}}',
        b'{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"resource_url":"open.test/a/b","digest":"md5:1"}]}}',
        b'{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"resource_url":"open.test/a/b","tag":"-bad"}]}}',
        b'{"specversion": "0.3", "type": "harbor.artifact.pushed"}',
        b'{"specversion": "1.0", "type": "harbor.artifact.pushed", "data": "x"}',
        b"[" * 100_000,
        b'{"a": ' + b"1" * 10_000 + b"}",
        json.dumps({"type": "PUSH_ARTIFACT", "event_data": {"resources": [{}] * 300}}).encode(),
        b"x" * ((1 << 20) + 1),
    ]
    mutated = []
    while len(fixed) + len(mutated) < 50:
        data = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.choice(b'{}[]":,\x00\\ab')
        try:
            json.loads(bytes(data))
            continue  # still valid JSON: not a malformed body
        except ValueError:
            mutated.append(bytes(data))
    return fixed + mutated


@pytest.mark.parametrize("body", _malformed_bodies(), ids=lambda b: f"{len(b)}B")
def test_malformed_bodies_get_4xx_with_reason(client, backend, body):
    r = client.post("/api/v1/conversions", content=body, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:200])
    assert r.json()["reason"]
    assert backend.requests == []
