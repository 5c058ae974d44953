"""acceld as operators leave it running (issue 9): failed conversions retry, re-pushed tags convert again.

Real registry, real Prefect server, acceld with its own runner; each test uses its own repository.
"""

from __future__ import annotations

import json
import os
import re
import signal
import uuid
from pathlib import Path

import httpx
import pytest

from accel import constants as mt
from accel.reference import Reference
from accel.registry import HostConfig, RegistryClient
from accel.store import ContentStore
from tests.harness import imagegen, pushing
from tests.harness.api import harbor_for, wait_until
from tests.harness.conversions import assert_converted, tasks_for, wait_task
from tests.harness.pushing import push_through_proxy
from tests.harness.registry import Stall
from tests.harness.services import SUFFIX, WEBHOOK_AUTH

pytestmark = [pytest.mark.registry, pytest.mark.prefect]


def push_to(ref: Reference, store: ContentStore, seed: int) -> Reference:
    """A small synthetic image (distinct per seed) pushed to `ref`; returns `ref` pinned to its digest."""
    extra = imagegen.TarBuilder(auto_parents=True)
    extra.file("seed.txt", f"trust seed {seed}\n".encode())
    image = imagegen.generate_image([*imagegen.standard_layers(32 * imagegen.KiB), extra], store)
    with RegistryClient({ref.registry: HostConfig()}) as client:
        return ref.with_digest(pushing.push(client, store, ref, image))


def post(acceld, body: dict) -> dict:
    r = httpx.post(f"{acceld.url}/api/v1/conversions", json=body, headers=WEBHOOK_AUTH, timeout=30)
    assert r.status_code == 202, r.text
    tasks = r.json()["tasks"]
    assert len(tasks) == 1, r.text
    return tasks[0]


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
    first = post(acceld, harbor_for(ref))
    assert wait_task(acceld, first["id"], timeout=180)["status"] == "FAILED"

    assert push_to(ref.with_tag("retry"), source_store, 1) == ref  # the same image, now in this repository
    second = post(acceld, harbor_for(ref))
    assert second["id"] != first["id"]
    assert wait_task(acceld, second["id"], timeout=180)["status"] == "COMPLETED"
    assert_converted(ref)

    assert post(acceld, harbor_for(ref))["id"] == second["id"]  # COMPLETED is still one conversion
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


def _flow_process(acceld, run_id: str) -> int | None:
    """The process running flow run `run_id` (another test's run may still be finishing beside it); every
    process below the harness's own acceld child is ours."""
    return next(
        (
            pid
            for pid, cmd in _descendants(acceld._proc.pid)
            if "prefect.engine" in cmd and _runs_flow_run(pid, run_id)
        ),
        None,
    )


def _task_runs(prefect_server, run_id: str) -> list[dict]:
    """The flow run's task runs as Prefect's API lists them (name, state_type)."""
    r = httpx.post(
        f"{prefect_server.api_url}/task_runs/filter",
        json={"flow_runs": {"id": {"any_": [run_id]}}, "limit": 200},
        timeout=30,
    )
    r.raise_for_status()
    return r.json()


def _kill_then_convert_again(acceld, registry, ref: Reference, first: dict, stall: Stall) -> None:
    """kill -9 of the run's process where it is stopped; no target tag; the same webhook again converts it,
    and acceld lists one COMPLETED task for it (beside the killed one)."""
    victim = wait_until(lambda: _flow_process(acceld, first["id"]), timeout=60, what="the flow process")
    os.kill(victim, signal.SIGKILL)
    target = f"{ref.tag}{SUFFIX}"
    with RegistryClient({registry.host: HostConfig()}) as client:
        # Read straight from the registry: nothing half-pushed is visible under the target tag.
        assert target not in client.list_tags(Reference.parse(f"{registry.host}/{ref.repository}:x"))
    stall.release()  # the request the killed process left behind goes on; nobody reads its answer
    crashed = wait_task(acceld, first["id"], timeout=180)
    assert crashed["status"] == "FAILED", crashed

    second = post(acceld, harbor_for(ref))
    assert second["id"] != first["id"]
    assert wait_task(acceld, second["id"], timeout=300)["status"] == "COMPLETED"
    assert_converted(ref)
    statuses = [t["status"] for t in tasks_for(acceld, ref)]
    assert statuses.count("COMPLETED") == 1 and len(statuses) == 2, statuses


def test_a_flow_run_killed_mid_convert_is_converted_by_the_same_webhook(
    acceld, registry, stalling_proxy, prefect_server, source_store
):
    """kill -9 while the layers convert: the pull of the last layer is held, so the run stops with a
    convert-layers task in flight (the big layer's converting or converted, the last one's waiting for its
    pull) and nothing pushed."""
    big = imagegen.TarBuilder(auto_parents=True)
    big.file("big.bin", os.urandom(16 << 20))
    last = imagegen.TarBuilder(auto_parents=True)
    last.file("last.txt", f"last layer {uuid.uuid4()}\n".encode())
    image, ref = push_through_proxy(
        stalling_proxy, source_store, [*imagegen.standard_layers(32 * imagegen.KiB), big, last], "mid-convert"
    )
    last_layer = image.layers[-1].digest
    stall = stalling_proxy.stall(rf"^/v2/{ref.repository}/blobs/{last_layer}$", method="GET")
    try:
        first = post(acceld, harbor_for(ref))

        def converting() -> bool:
            """A convert-layers task run not finished while the last pull is held: the last layer's batch's
            (named `convert-layers-…` until it starts), which cannot finish before that pull, or one still
            running."""
            if not stall.reached.is_set():
                return False
            return any(
                t["name"].startswith("convert") and t["state_type"] in ("PENDING", "RUNNING")
                for t in _task_runs(prefect_server, first["id"])
            )

        wait_until(converting, timeout=180, what="a convert-layers task in flight, the last pull held")
        _kill_then_convert_again(acceld, registry, ref, first, stall)
    finally:
        stall.release()


def test_a_flow_run_killed_mid_push_is_converted_by_the_same_webhook(
    acceld, registry, stalling_proxy, prefect_server, source_store
):
    """kill -9 while the target is pushed: its blobs are in the registry (uploaded early, as each layer was
    converted, or by the push) and the push's first manifest upload is held, so the run stops with the
    target's blobs there and no tag."""
    extra = imagegen.TarBuilder(auto_parents=True)
    extra.file("seed.txt", f"mid-push {uuid.uuid4()}\n".encode())
    _, ref = push_through_proxy(
        stalling_proxy, source_store, [*imagegen.standard_layers(32 * imagegen.KiB), extra], "mid-push"
    )
    uploads = rf"^/v2/{ref.repository}/blobs/uploads/.+"
    stall = stalling_proxy.stall(rf"^/v2/{ref.repository}/manifests/.+", method="PUT")
    try:
        first = post(acceld, harbor_for(ref))

        def blobs_uploaded() -> bool:
            """Prefect shows the push task running, target blobs uploaded and its first manifest held."""
            return (
                stall.reached.is_set()
                and any(
                    h.method == "PUT" and h.status == 201 and re.search(uploads, h.path)
                    for h in list(stalling_proxy.hits)
                )
                and any(
                    t["name"].startswith("push ") and t["state_type"] == "RUNNING"
                    for t in _task_runs(prefect_server, first["id"])
                )
            )

        wait_until(blobs_uploaded, timeout=180, what="the target's blobs uploaded, its manifest held")
        _kill_then_convert_again(acceld, registry, ref, first, stall)
    finally:
        stall.release()
