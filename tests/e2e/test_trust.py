"""acceld as operators leave it running (issue 9): failed conversions retry, re-pushed tags convert again.

Real registry, real Prefect server, acceld with its own runner; each test uses its own repository.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path

import httpx
import pytest

from accel import constants as mt
from accel.reference import Reference
from accel.registry import HostConfig, RegistryClient
from accel.store import ContentStore
from tests.e2e.test_acceld import (
    AUTH,
    KiB,
    assert_converted,
    harbor_payload,
    tasks_for,
    wait_task,
)
from tests.harness import imagegen, pushing
from tests.harness.api import wait_until
from tests.harness.services import SUFFIX

pytestmark = [pytest.mark.registry, pytest.mark.prefect]


@pytest.fixture(scope="module")
def source_store(tmp_path_factory: pytest.TempPathFactory) -> ContentStore:
    return ContentStore(tmp_path_factory.mktemp("e2e-trust-source"))


def push_to(ref: Reference, store: ContentStore, seed: int) -> Reference:
    """A small synthetic image (distinct per seed) pushed to `ref`; returns `ref` pinned to its digest."""
    extra = imagegen.TarBuilder(auto_parents=True)
    extra.file("seed.txt", f"trust seed {seed}\n".encode())
    image = imagegen.build_image([*imagegen.standard_layers(32 * KiB), extra], store)
    with RegistryClient({ref.registry: HostConfig()}) as client:
        return ref.with_digest(pushing.push(client, store, ref, image))


def post(acceld, body: dict) -> dict:
    r = httpx.post(f"{acceld.url}/api/v1/conversions", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 202, r.text
    [task] = r.json()["tasks"]
    return task


def converted_from(target: Reference) -> str:
    with RegistryClient({target.registry: HostConfig()}) as client:
        _, raw = client.fetch_manifest(target)
    return json.loads(raw)["annotations"][mt.ACCEL_SOURCE_DIGEST]


def test_a_failed_conversion_is_retried_by_the_same_webhook(acceld, registry, source_store):
    """The first event names a digest the repository does not hold yet (the run fails); once it is
    pushed, the same event starts a new run that converts it, and a third event is that COMPLETED run."""

    def fresh() -> Reference:
        return Reference.parse(f"{registry.host}/e2e/{uuid.uuid4().hex[:10]}:retry")

    elsewhere = push_to(fresh(), source_store, 1)
    ref = fresh().with_digest(elsewhere.digest)
    first = post(acceld, harbor_payload(ref))
    assert wait_task(acceld, first["id"], timeout=180)["status"] == "FAILED"

    assert push_to(ref.with_tag("retry"), source_store, 1) == ref  # the same image, now in this repository
    second = post(acceld, harbor_payload(ref))
    assert second["id"] != first["id"]
    assert wait_task(acceld, second["id"], timeout=180)["status"] == "COMPLETED"
    assert_converted(ref)

    assert post(acceld, harbor_payload(ref))["id"] == second["id"]  # COMPLETED is still one conversion
    statuses = sorted(t["status"] for t in tasks_for(acceld, ref))
    assert statuses == ["COMPLETED", "FAILED"]


def test_a_re_pushed_tag_is_converted_again(acceld, registry, source_store):
    """A tag-only request (what `accelctl task create host/repo:tag` sends) is keyed by the digest the tag
    names when it arrives: after a re-push of the tag the new digest is converted."""
    tag_ref = Reference.parse(f"{registry.host}/e2e/{uuid.uuid4().hex[:10]}:moving")
    by_tag = {"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": str(tag_ref)}]}}
    target = tag_ref.with_tag(f"moving{SUFFIX}")

    old = push_to(tag_ref, source_store, 2)
    first = post(acceld, by_tag)
    assert first["source"] == str(old)
    assert wait_task(acceld, first["id"], timeout=180)["status"] == "COMPLETED"
    assert converted_from(target) == old.digest

    new = push_to(tag_ref, source_store, 3)
    assert new.digest != old.digest
    second = post(acceld, by_tag)
    assert second["id"] != first["id"]
    assert second["source"] == str(new)
    assert wait_task(acceld, second["id"], timeout=180)["status"] == "COMPLETED"
    assert converted_from(target) == new.digest


def _runs_flow_run(pid: int, run_id: str) -> bool:
    """Whether the process was started for flow run `run_id` (the runner passes it in the environment)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"PREFECT__FLOW_RUN_ID={run_id}".encode() in environ.split(b"\0")


def _descendants(root: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below `root`, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent:
                frontier.append(pid)
                try:
                    cmdline = (
                        (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    )
                except OSError:
                    cmdline = ""
                found.append((pid, cmdline))
    return found


def test_a_killed_flow_run_is_converted_by_the_same_webhook(acceld, registry, source_store):
    """kill -9 of the flow run's process while it works: its run ends CRASHED; the same webhook again starts
    a new run that converts the image, and the task list shows one COMPLETED task for it."""
    extra = imagegen.TarBuilder(auto_parents=True)
    extra.file("big.bin", os.urandom(48 << 20))  # enough work to be caught in the middle
    image = imagegen.build_image([*imagegen.standard_layers(32 * KiB), extra], source_store)
    tag_ref = Reference.parse(f"{registry.host}/e2e/{uuid.uuid4().hex[:10]}:killed")
    with RegistryClient({registry.host: HostConfig()}) as client:
        ref = tag_ref.with_digest(pushing.push(client, source_store, tag_ref, image))

    first = post(acceld, harbor_payload(ref))
    acceld_pid = acceld._proc.pid  # the harness's own child: every process below it is ours

    def flow_process() -> int | None:
        """The process running this run: another test's run may still be finishing beside it."""
        return next(
            (
                pid
                for pid, cmd in _descendants(acceld_pid)
                if "prefect.engine" in cmd and _runs_flow_run(pid, first["id"])
            ),
            None,
        )

    victim = wait_until(flow_process, timeout=120, what="the flow run's process")
    os.kill(victim, signal.SIGKILL)
    crashed = wait_task(acceld, first["id"], timeout=180)
    assert crashed["status"] == "FAILED", crashed

    second = post(acceld, harbor_payload(ref))
    assert second["id"] != first["id"]
    assert wait_task(acceld, second["id"], timeout=300)["status"] == "COMPLETED"
    assert_converted(ref)
    statuses = [t["status"] for t in tasks_for(acceld, ref)]
    assert statuses.count("COMPLETED") == 1 and len(statuses) == 2
