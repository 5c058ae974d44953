"""acceld API test doubles and payloads: an in-memory backend, Harbor/CloudEvents bodies, malformed bodies.

The one place webhook bodies are built: unit tests post them to the app, e2e tests to a running acceld."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from accel.reference import Reference
from service.api import ConversionTask, SubmitRequest, TaskNotFound
from service.api.conversions import COMPLETED, FAILED, PROCESSING

DIGEST = "sha256:" + "ab" * 32


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `condition` until it returns something truthy (returned); fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)
    return value


class FakeBackend:
    """An in-memory orchestrator: one task per idempotency key, failures and outages on demand."""

    def __init__(self) -> None:
        self.tasks: dict[str, ConversionTask] = {}
        self.requests: list[SubmitRequest] = []
        self.by_key: dict[str, str] = {}
        self.fail_sources: set[str] = set()
        self.down = False
        # While set and not released, submissions hang: a slow orchestrator (threads may release it).
        self.gate: threading.Event | None = None

    async def submit(self, request: SubmitRequest) -> ConversionTask:
        self.requests.append(request)
        while self.gate is not None and not self.gate.is_set():
            await asyncio.sleep(0.01)
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


def harbor_event(
    resources: list[Any], kind: str = "PUSH_ARTIFACT", repository: str = "library/app"
) -> dict[str, Any]:
    """Harbor's "Default" webhook payload carrying `resources` as given (well-formed or not)."""
    return {
        "type": kind,
        "occur_at": 1700000000,
        "operator": "admin",
        "event_data": {
            "resources": list(resources),
            "repository": {
                "name": repository.rsplit("/", 1)[-1],
                "namespace": repository.split("/")[0],
                "repo_full_name": repository,
            },
        },
    }


def harbor(
    resource_url: str,
    digest: str | None = DIGEST,
    tag: str | None = "v1",
    kind: str = "PUSH_ARTIFACT",
    repository: str = "library/app",
) -> dict[str, Any]:
    """Harbor's event for one artifact; `digest` and `tag` are left out of the resource when None."""
    resource = {"resource_url": resource_url}
    if digest:
        resource["digest"] = digest
    if tag:
        resource["tag"] = tag
    return harbor_event([resource], kind, repository)


def harbor_for(ref: Reference) -> dict[str, Any]:
    """Harbor's push event for a pushed image: `ref` names its tag and digest."""
    return harbor(f"{ref.name}:{ref.tag}", digest=ref.digest, tag=ref.tag, repository=ref.repository)


def as_cloudevent(event: dict[str, Any], kind: str = "harbor.artifact.pushed") -> dict[str, Any]:
    """A Harbor event in Harbor's CloudEvents form (structured mode); each has an id of its own."""
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "requestid": str(uuid.uuid4()),
        "source": "/projects/1/webhook/policies/3",
        "type": kind,
        "datacontenttype": "application/json",
        "time": "2024-03-06T06:08:43Z",
        "data": event["event_data"],
        "operator": "admin",
    }


def cloudevent(resource_url: str, kind: str = "harbor.artifact.pushed") -> dict[str, Any]:
    return as_cloudevent(harbor(resource_url), kind)


def cloudevent_for(ref: Reference) -> dict[str, Any]:
    return as_cloudevent(harbor_for(ref))


def malformed_bodies() -> list[bytes]:
    rng = random.Random(7)
    good = json.dumps(harbor("open.test/a/b:v1")).encode()
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
