"""The HTTP layer against an in-memory backend: status codes, auth, idempotency keys, metrics."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from fastapi.testclient import TestClient

from accel.config import load_settings
from service.api import BackendUnavailable, create_app
from service.api.app import CreationRetry
from service.metrics import Metrics
from tests.harness.api import (
    DIGEST,
    FakeBackend,
    cloudevent,
    harbor,
    harbor_event,
    malformed_bodies,
    wait_until,
)

HOST = "harbor.test:8443"
OPEN_HOST = "open.test"
SECRET = "Bearer s3cret"
AUTH = {"Authorization": SECRET}


@pytest.fixture
def settings(tmp_path):
    return load_settings(
        {
            "provider": {
                "source": {
                    HOST: {"webhook": {"auth_header": SECRET}},
                    OPEN_HOST: {"webhook": {"allow_unauthenticated": True}},
                },
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
    """Harbor gives up after 3 s: the answer must not wait for a run creation that hangs."""
    backend.gate = threading.Event()  # every submission hangs until released
    # Safety net: an app that waited for the creation would hang here; released, it fails the asserts.
    safety = threading.Timer(60, backend.gate.set)
    safety.start()
    app = create_app(settings, backend, metrics, answer_within=0.2)
    with TestClient(app) as client:
        r = client.post("/api/v1/conversions", json=harbor(f"{OPEN_HOST}/a/b:v1"))
        # Answered while the creation still hangs: accepted, the image pending, no task yet.
        assert r.status_code == 202 and r.json()["tasks"] == []
        assert r.json()["pending"] == [f"{OPEN_HOST}/a/b:v1@{DIGEST}"]
        assert backend.tasks == {} and len(backend.requests) == 1
        backend.gate.set()
        # Creation goes on in the background once the orchestrator answers.
        wait_until(lambda: len(backend.tasks) == 1, timeout=30, what="the background run creation")
    safety.cancel()


def test_cloudevents_push(client, backend):
    r = client.post(
        "/api/v1/conversions",
        content=json.dumps(cloudevent(f"{OPEN_HOST}/team/app:v1")),
        headers={"Content-Type": "application/cloudevents+json"},
    )
    assert r.status_code == 202, r.text
    assert str(backend.requests[0].source) == f"{OPEN_HOST}/team/app:v1@{DIGEST}"


def test_non_push_events_are_acknowledged_and_ignored(client, backend):
    auth = {"Authorization": SECRET}
    r = client.post(
        "/api/v1/conversions", json=harbor(f"{HOST}/library/app:v1", kind="PULL_ARTIFACT"), headers=auth
    )
    assert r.status_code == 200 and r.json()["status"] == "ignored"
    pulled = cloudevent(f"{HOST}/a/b:v1", kind="harbor.artifact.pulled")
    r = client.post("/api/v1/conversions", json=pulled, headers=auth)
    assert r.status_code == 200 and r.json()["status"] == "ignored"
    assert backend.requests == []


def test_non_push_events_need_auth_too(client, backend):
    """Not even an acknowledgement without credentials while some host requires them."""
    r = client.post("/api/v1/conversions", json=harbor(f"{HOST}/library/app:v1", kind="PULL_ARTIFACT"))
    assert r.status_code == 401
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
    r = client.post(
        "/api/v1/conversions",
        json=harbor("evil.example.com/library/app:v1"),
        headers={"Authorization": SECRET},
    )
    assert r.status_code == 403
    assert "evil.example.com" in r.json()["reason"]
    assert backend.requests == []


def test_unauthenticated_callers_cannot_tell_configured_hosts(client, backend):
    """Authentication comes first: an unknown host and a configured one get the same 401 without auth."""
    unknown = client.post("/api/v1/conversions", json=harbor("evil.example.com/library/app:v1"))
    configured = client.post("/api/v1/conversions", json=harbor(f"{HOST}/library/app:v1"))
    assert unknown.status_code == configured.status_code == 401
    assert unknown.json() == configured.json()
    assert "evil.example.com" not in unknown.text and HOST not in configured.text
    assert backend.requests == []


def test_a_host_secret_does_not_open_another_host(tmp_path, backend):
    two_hosts = load_settings(
        {
            "provider": {
                "source": {
                    HOST: {"webhook": {"auth_header": SECRET}},
                    "other.test": {"webhook": {"auth_header": "Bearer other"}},
                },
                "work_dir": str(tmp_path / "work"),
            },
            "converter": {"driver": {"type": "estargz"}},
        }
    )
    with TestClient(create_app(two_hosts, backend)) as c:
        r = c.post("/api/v1/conversions", json=harbor("other.test/a/b:v1"), headers={"Authorization": SECRET})
        assert r.status_code == 403
        r = c.post(
            "/api/v1/conversions", json=harbor("other.test/a/b:v1"), headers={"Authorization": "Bearer other"}
        )
        assert r.status_code == 202
    assert len(backend.requests) == 1


@pytest.mark.parametrize(
    "body", [b"{not json", b"[]", json.dumps(harbor("evil.example.com/a/b:v1")).encode()]
)
def test_without_open_hosts_everything_unauthenticated_is_401(tmp_path, backend, body):
    """With no host open to unauthenticated webhooks, the header is checked before the body is read."""
    secured = load_settings(
        {
            "provider": {
                "source": {HOST: {"webhook": {"auth_header": SECRET}}},
                "work_dir": str(tmp_path / "work"),
            },
            "converter": {"driver": {"type": "estargz"}},
        }
    )
    with TestClient(create_app(secured, backend)) as c:
        for path in ("/api/v1/conversions", "/api/v1/notifications/distribution"):
            r = c.post(path, content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 401, (path, r.text)
            huge = c.post(path, content=body, headers={"Content-Length": str(1 << 30)})
            assert huge.status_code in (401, 400)
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
    listed = client.get("/api/v1/conversions", headers=AUTH).json()
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
    assert (
        client.get(f"/api/v1/conversions/{task_id}", headers=AUTH).json()["source"]
        == f"{OPEN_HOST}/a/b:v1@{DIGEST}"
    )
    assert client.get("/api/v1/conversions/nope", headers=AUTH).status_code == 404
    assert client.get("/api/v1/conversions?limit=0", headers=AUTH).status_code == 400


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
    text = client.get("/metrics", headers=AUTH).text
    assert 'accel_webhook_requests_total{result="accepted",source="harbor"} 1.0' in text
    assert 'accel_webhook_requests_total{result="invalid",source="harbor"} 1.0' in text
    assert "accel_build_info{" in text
    assert "a/b" not in text  # no per-repository labels


@pytest.mark.parametrize("body", malformed_bodies(), ids=lambda b: f"{len(b)}B")
def test_malformed_bodies_get_4xx_with_reason(client, backend, body):
    r = client.post("/api/v1/conversions", content=body, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:200])
    assert r.json()["reason"]
    assert backend.requests == []


class _SilentBackend(FakeBackend):
    """An orchestrator that accepts connections but never answers reads."""

    async def get(self, task_id):
        await asyncio.sleep(3600)

    async def list(self, limit):
        await asyncio.sleep(3600)


def test_reads_answer_503_when_the_orchestrator_does_not_answer(settings, monkeypatch):
    import service.api.app as app_module

    monkeypatch.setattr(app_module, "READ_WITHIN", 0.2)
    with TestClient(create_app(settings, _SilentBackend())) as c:
        listed = c.get("/api/v1/conversions", headers=AUTH)
        got = c.get("/api/v1/conversions/task-0", headers=AUTH)
    for r in (listed, got):
        assert r.status_code == 503, r.text
        assert "orchestrator unavailable" in r.json()["reason"]


def test_readyz_reports_extra_problems(settings, backend):
    problems = ["deployment runner exited 3 time(s) in a row (last exit code 1); see acceld's log"]
    with TestClient(create_app(settings, backend, readiness=lambda: problems)) as c:
        r = c.get("/readyz")
    assert r.status_code == 503 and problems[0] in r.json()["problems"]
    with TestClient(create_app(settings, backend, readiness=list)) as c:
        assert c.get("/readyz").status_code == 200


class _BusyBackend(FakeBackend):
    """Slow, then failing its first `failures` creations as a busy Prefect does (503), then fine."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def submit(self, request):
        self.requests.append(request)
        while self.gate is not None and not self.gate.is_set():
            await asyncio.sleep(0.01)
        if self.failures > 0:
            self.failures -= 1
            raise BackendUnavailable("Server error '503 Service Unavailable'")
        self.requests.pop()
        return await super().submit(request)


def test_a_pending_creation_that_fails_is_retried_not_lost(settings, metrics):
    backend = _BusyBackend(failures=2)
    backend.gate = threading.Event()
    quick_retry = CreationRetry(first_delay=0.01)  # the backoff's shape without its real seconds
    app = create_app(settings, backend, metrics, answer_within=0.2, creation_retry=quick_retry)
    with TestClient(app) as client:
        r = client.post("/api/v1/conversions", json=harbor(f"{OPEN_HOST}/a/b:v1"))
        assert r.status_code == 202 and r.json()["pending"] == [f"{OPEN_HOST}/a/b:v1@{DIGEST}"]
        backend.gate.set()
        wait_until(lambda: len(backend.tasks) == 1, timeout=60, what="the creation after two failures")
    assert backend.failures == 0


class _RefusingSomeBackend(FakeBackend):
    """Refuses the creation of runs for sources in `refuse` (an error that is not an outage)."""

    def __init__(self, refuse: str) -> None:
        super().__init__()
        self.refuse = refuse

    async def submit(self, request):
        if self.refuse in str(request.source):
            raise RuntimeError("flow run parameters rejected")
        return await super().submit(request)


def test_every_resource_of_a_webhook_ends_in_tasks_pending_ignored_or_refused(settings):
    long_tag = "t" * 126  # legal; its target tag would pass 128 characters and is shortened
    resources = [
        {"resource_url": f"{OPEN_HOST}/a/long:{long_tag}", "digest": DIGEST, "tag": long_tag},
        {"resource_url": f"{OPEN_HOST}/a/bad:v1", "digest": DIGEST, "tag": "v1"},
        {"resource_url": f"{OPEN_HOST}/a/app:v1-esgz", "digest": DIGEST, "tag": "v1-esgz"},
    ]
    backend = _RefusingSomeBackend(refuse="/a/bad")
    with TestClient(create_app(settings, backend)) as c:
        r = c.post("/api/v1/conversions", json=harbor_event(resources))
    assert r.status_code == 202, r.text
    body = r.json()
    assert [t["source"] for t in body["tasks"]] == [f"{OPEN_HOST}/a/long:{long_tag}@{DIGEST}"]
    assert body["refused"] == [
        {
            "reference": f"{OPEN_HOST}/a/bad:v1@{DIGEST}",
            "reason": "RuntimeError: flow run parameters rejected",
        }
    ]
    assert len(body["ignored"]) == 1 and "own output" in body["ignored"][0]
    assert body["pending"] == []


def test_a_webhook_whose_every_image_is_refused_is_a_4xx_naming_them(settings):
    backend = _RefusingSomeBackend(refuse="/a/bad")
    with TestClient(create_app(settings, backend)) as c:
        r = c.post("/api/v1/conversions", json=harbor(f"{OPEN_HOST}/a/bad:v1"))
    assert r.status_code == 422, r.text
    assert r.json()["reason"] == f"{OPEN_HOST}/a/bad:v1@{DIGEST}: RuntimeError: flow run parameters rejected"


@pytest.mark.parametrize(
    "path", ["/api/v1/conversions", "/api/v1/conversions/task-0", "/metrics", "/openapi.json"]
)
def test_reads_take_the_webhook_header_like_writes(client, path):
    missing = client.get(path)
    assert missing.status_code == 401 and "Authorization header missing" in missing.json()["reason"]
    assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get(path, headers=AUTH).status_code in (200, 404)  # 404: no task-0 yet


def test_health_routes_answer_without_a_header(client):
    for path in ("/api/v1/health", "/livez"):
        assert client.get(path).status_code == 200


def test_metrics_open_answers_without_a_header(settings, backend):
    opened = settings.model_copy(update={"metric": settings.metric.model_copy(update={"open": True})})
    with TestClient(create_app(opened, backend, Metrics())) as c:
        assert c.get("/metrics").status_code == 200
        assert c.get("/api/v1/conversions").status_code == 401  # only the metrics are opened


def test_metrics_print_go_buckets_and_skip_probes(client):
    """The Go service's histogram buckets (client_golang's DefBuckets), bounds printed as Go prints them,
    and accel's own probes not counted as API requests."""
    for path in ("/readyz", "/livez", "/readyz"):
        client.get(path)
    client.get("/api/v1/health")
    text = client.get("/metrics", headers=AUTH).text
    requests = [
        line for line in text.splitlines() if line.startswith("acceleration_service_api_requests_total{")
    ]
    assert requests and all('url="/api/v1/health"' in line for line in requests), requests
    bounds = [
        line.split('le="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("acceleration_service_api_request_duration_seconds_bucket{")
    ]
    assert bounds == ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"]
    size_bounds = [
        line.split('le="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("acceleration_service_api_request_size_bytes_bucket{")
    ]
    assert size_bounds[:3] == ["1024", "2048", "5120"] and "2.62144e+06" in size_bounds
    assert 'le="1.0"' not in text
    bucket = next(line for line in text.splitlines() if "request_duration_seconds_bucket{" in line)
    assert bucket.split("{")[1].split("}")[0].endswith('le="0.005"')  # Go writes `le` last
