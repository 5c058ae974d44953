"""acceld end to end: real registries, a real Prefect server, acceld with its own runner, all on loopback.

Each test pushes its own synthetic image (unique repository), sends an event, and judges the outcome by
what is in the registry and what the task API says.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import uuid
from typing import Any

import httpx
import pytest

from accel.reference import Reference
from tests.harness.api import cloudevent_for, harbor_for, malformed_bodies, wait_until
from tests.harness.conversions import assert_converted, tasks_for, wait_listed, wait_task
from tests.harness.pushing import push_seeded_image
from tests.harness.services import REPO, SUFFIX, WEBHOOK_AUTH, WEBHOOK_SECRET, Acceld

pytestmark = [pytest.mark.registry, pytest.mark.prefect]


def answered_every(body: dict[str, Any], refs: list[Reference]) -> bool:
    """A 202 answer accounts for each pushed image: a task created, or its creation still pending."""
    named = {t["source"] for t in body["tasks"]} | set(body["pending"])
    return named == {str(ref) for ref in refs}


def test_harbor_default_payload_async(acceld, registry, source_store):
    ref = push_seeded_image(registry.host, source_store)
    r = httpx.post(f"{acceld.url}/api/v1/conversions", json=harbor_for(ref), headers=WEBHOOK_AUTH, timeout=30)
    # Harbor gives up after 3 s: acceld answers without waiting for the run (tests/unit/test_api.py proves
    # that with a hanging orchestrator); here the answer names the task or leaves it pending.
    assert r.status_code == 202, r.text
    assert answered_every(r.json(), [ref]), r.json()
    task_ids = [t["id"] for t in r.json()["tasks"]] or [t["id"] for t in wait_listed(acceld, ref)]
    assert len(task_ids) == 1
    done = wait_task(acceld, task_ids[0])
    assert done["status"] == "COMPLETED", done
    assert done["source"] == str(ref)
    assert done["target"] == f"{ref.name}:{ref.tag}{SUFFIX}"
    assert done["source_size"] > 0 and done["target_size"] > 0
    assert done["finished"] is not None
    assert_converted(ref)


def test_cloudevents_payload_sync(acceld, registry, source_store):
    ref = push_seeded_image(registry.host, source_store, tag="ce", seed=1)
    r = httpx.post(
        f"{acceld.url}/api/v1/conversions?sync=true",
        content=json.dumps(cloudevent_for(ref)),
        headers={**WEBHOOK_AUTH, "Content-Type": "application/cloudevents+json"},
        timeout=180,
    )
    assert r.status_code == 200, r.text
    [task] = r.json()["tasks"]
    assert task["status"] == "COMPLETED"
    assert_converted(ref)


def test_distribution_notification_from_a_real_registry(acceld, notifying_registry, source_store):
    """The registry itself notifies acceld; the converted image's own push event is ignored (no loop)."""
    ref = push_seeded_image(notifying_registry.host, source_store, tag="dist", seed=2)
    tasks = wait_listed(acceld, ref, timeout=120)
    assert len(tasks) == 1, tasks
    done = wait_task(acceld, tasks[0]["id"])
    assert done["status"] == "COMPLETED", done
    assert_converted(ref)
    # The registry notifies acceld of the converted image's push too; acceld logs that it ignored it.
    target = f"{ref.name}:{ref.tag}{SUFFIX}"
    wait_until(
        lambda: any("ignored" in line and target in line for line in acceld.log().splitlines()),
        timeout=120,
        what=f"acceld to receive and ignore the push notification of {target}",
    )
    assert len(tasks_for(acceld, ref)) == 1


def test_duplicate_events_are_one_conversion(acceld, registry, source_store):
    ref = push_seeded_image(registry.host, source_store, tag="dup", seed=3)
    ids = set()
    for body in (harbor_for(ref), harbor_for(ref), cloudevent_for(ref)):
        r = httpx.post(f"{acceld.url}/api/v1/conversions", json=body, headers=WEBHOOK_AUTH, timeout=30)
        assert r.status_code == 202, r.text
        ids |= {t["id"] for t in r.json()["tasks"]}
    assert len(ids) == 1
    assert wait_task(acceld, ids.pop())["status"] == "COMPLETED"
    assert len(tasks_for(acceld, ref)) == 1


@pytest.mark.parametrize(("headers", "status"), [({}, 401), ({"Authorization": "Bearer nope"}, 401)])
def test_wrong_or_missing_auth_is_401(acceld, registry, headers, status):
    ref = Reference.parse(f"{registry.host}/e2e/auth:v1@sha256:{'1' * 64}")
    r = httpx.post(f"{acceld.url}/api/v1/conversions", json=harbor_for(ref), headers=headers, timeout=30)
    assert r.status_code == status
    assert tasks_for(acceld, ref) == []


def test_unknown_registry_is_403(acceld):
    ref = Reference.parse(f"unknown.example.com/e2e/app:v1@sha256:{'2' * 64}")
    r = httpx.post(f"{acceld.url}/api/v1/conversions", json=harbor_for(ref), headers=WEBHOOK_AUTH, timeout=30)
    assert r.status_code == 403
    assert "unknown.example.com" in r.json()["reason"]


def test_fifty_malformed_bodies_get_4xx(acceld):
    bodies = malformed_bodies()
    assert len(bodies) == 50
    for body in bodies:
        for path in ("/api/v1/conversions", "/api/v1/notifications/distribution"):
            r = httpx.post(
                f"{acceld.url}{path}",
                content=body,
                headers={**WEBHOOK_AUTH, "Content-Type": "application/json"},
            )
            assert 400 <= r.status_code < 500, (path, body[:80], r.status_code, r.text[:200])


def test_failed_conversion_reports_reason(acceld, registry):
    """A pushed digest that is not in the registry: the flow fails, and the task says why."""
    ref = Reference.parse(f"{registry.host}/e2e/{uuid.uuid4().hex[:10]}:gone@sha256:{'3' * 64}")
    r = httpx.post(f"{acceld.url}/api/v1/conversions", json=harbor_for(ref), headers=WEBHOOK_AUTH, timeout=30)
    assert r.status_code == 202, r.text
    done = wait_task(acceld, r.json()["tasks"][0]["id"], timeout=180)
    assert done["status"] == "FAILED"
    assert done["reason"]
    assert done["finished"] is not None


def test_ten_concurrent_conversions_without_database_locks(acceld, registry, source_store, prefect_server):
    refs = [push_seeded_image(registry.host, source_store, tag=f"c{i}", seed=100 + i) for i in range(10)]

    def send(ref: Reference) -> tuple[int, dict[str, Any]]:
        r = httpx.post(
            f"{acceld.url}/api/v1/conversions", json=harbor_for(ref), headers=WEBHOOK_AUTH, timeout=30
        )
        return r.status_code, r.json()

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(send, refs))
    assert all(status == 202 for status, _ in answers), answers
    assert all(answered_every(body, [ref]) for ref, (_, body) in zip(refs, answers, strict=True)), answers
    ids = [wait_listed(acceld, ref)[0]["id"] for ref in refs]  # some may have been "pending"
    finished = [wait_task(acceld, i, timeout=300) for i in ids]
    assert [t["status"] for t in finished] == ["COMPLETED"] * 10, [t["reason"] for t in finished]
    for ref in refs:
        assert_converted(ref)
    logs = acceld.log() + prefect_server.log_path.read_text(errors="replace")
    assert "database is locked" not in logs


def test_metrics_reflect_conversions(acceld, registry, source_store):
    """Counts what this test itself causes: one refused and one completed conversion."""
    ref = push_seeded_image(registry.host, source_store, tag="metrics", seed=5)
    before = httpx.get(f"{acceld.url}/metrics", headers=WEBHOOK_AUTH, timeout=30).text
    refused = httpx.post(f"{acceld.url}/api/v1/conversions", json=harbor_for(ref), timeout=30)
    assert refused.status_code == 401
    r = httpx.post(
        f"{acceld.url}/api/v1/conversions?sync=true", json=harbor_for(ref), headers=WEBHOOK_AUTH, timeout=180
    )
    assert r.status_code == 200 and r.json()["tasks"][0]["status"] == "COMPLETED", r.text
    success = 'accel_conversions_total{driver="estargz",result="success"}'

    def metrics_with_success() -> str | None:
        text = httpx.get(f"{acceld.url}/metrics", headers=WEBHOOK_AUTH, timeout=30).text
        return text if success in text else None

    text = wait_until(metrics_with_success, timeout=60, what="the completed conversion in the metrics")
    assert 'accel_webhook_requests_total{result="completed",source="harbor"}' in text
    assert 'accel_webhook_requests_total{result="unauthorized",source="harbor"}' in text
    assert "accel_conversion_duration_seconds_bucket" in text
    assert "accel_build_info{" in text
    assert "/e2e/" not in text
    # acceld's own families move too (its dashboards read these): one more conversion operation, and the
    # API requests under acceleration_service_<server.name>.
    convert = 'acceleration_service_core_conversions_op_total{op="convert"}'
    assert _value(text, convert) >= _value(before, convert) + 1
    host = acceld.url.removeprefix("http://")
    api = (
        "acceleration_service_api_requests_total"
        + '{{code="{}",host="{}",method="POST",url="/api/v1/conversions"}}'
    )
    for code in ("401", "200"):
        assert _value(text, api.format(code, host)) >= _value(before, api.format(code, host)) + 1
    assert 'acceleration_service_core_conversions_op_duration_seconds_count{op="convert"}' in text
    assert "process_start_time_seconds" in text


def _value(metrics_text: str, sample: str) -> float:
    """A sample's value in a Prometheus text exposition (0 when it is not there yet)."""
    for line in metrics_text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _accelctl(acceld: Acceld, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.accelctl", "task", *args],
        env={**acceld.env, "ACCELD_URL": acceld.url, "ACCELD_AUTH_HEADER": WEBHOOK_SECRET},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_accelctl_task_commands(acceld, registry, source_store):
    ref = push_seeded_image(registry.host, source_store, tag="ctl", seed=4)
    created = _accelctl(acceld, "create", "--sync", f"{ref.name}:{ref.tag}")
    assert created.returncode == 0, created.stderr
    assert "COMPLETED" in created.stdout
    assert_converted(ref)

    listed = _accelctl(acceld, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    # A tag-only request is pinned to the digest its tag named when it arrived.
    mine = [t for t in json.loads(listed.stdout) if t["source"] == str(ref)]
    assert len(mine) == 1 and mine[0]["status"] == "COMPLETED"

    got = _accelctl(acceld, "get", mine[0]["id"])
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["id"] == mine[0]["id"]
    assert _accelctl(acceld, "get", str(uuid.uuid4())).returncode == 1

    async_id = _accelctl(acceld, "create", f"{ref.name}:{ref.tag}")  # same source: the same task
    assert async_id.stdout.strip() == mine[0]["id"]


def test_restart_keeps_the_list_and_runs_orphaned_runs_again(acceld, prefect_server, registry, source_store):
    """Tasks are Prefect runs, so a restart loses nothing; a run left RUNNING by a dead acceld runs again, as
    itself (its push was answered 2xx, Harbor does not send it again), and converts."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Running

    from service.api.prefect_backend import SUBMITTED_TAG

    # A conversion of this test's own, finished before the restart.
    ref = push_seeded_image(registry.host, source_store, tag="restart", seed=6)
    r = httpx.post(
        f"{acceld.url}/api/v1/conversions?sync=true", json=harbor_for(ref), headers=WEBHOOK_AUTH, timeout=180
    )
    [mine] = r.json()["tasks"]
    assert mine["status"] == "COMPLETED", r.text
    before = httpx.get(
        f"{acceld.url}/api/v1/conversions", params={"limit": 1000}, headers=WEBHOOK_AUTH, timeout=30
    ).json()
    finished_before = {t["id"]: t for t in before if t["status"] != "PROCESSING"}
    assert finished_before[mine["id"]]["target"] == f"{ref.name}:{ref.tag}{SUFFIX}"
    acceld.stop()

    # A push the dead acceld answered 2xx and whose run it had started (no process runs it any more).
    orphaned = push_seeded_image(registry.host, source_store, tag="orphan", seed=7)

    async def orphan() -> str:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name("convert-image/convert-image")
            run = await client.create_flow_run_from_deployment(  # as acceld's API creates its runs
                deployment.id, parameters={"source": str(orphaned)}, tags=[SUBMITTED_TAG]
            )
            await client.set_flow_run_state(run.id, Running(), force=True)
            return str(run.id)

    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        orphan_id = asyncio.run(orphan())
    acceld.start()
    after = {
        t["id"]: t
        for t in httpx.get(
            f"{acceld.url}/api/v1/conversions?limit=1000", headers=WEBHOOK_AUTH, timeout=30
        ).json()
    }
    # Finished tasks (this test's among them) are listed as before: status, target and sizes.
    for task_id, task in finished_before.items():
        for field in ("status", "target", "source_size", "target_size"):
            assert after[task_id][field] == task[field], (task_id, field)
    orphan_task = wait_task(acceld, orphan_id, timeout=300)
    assert orphan_task["status"] == "COMPLETED", orphan_task
    assert [t["id"] for t in tasks_for(acceld, orphaned)] == [orphan_id]  # run again as itself, not beside
    assert_converted(orphaned)
