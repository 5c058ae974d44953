"""The work-pool mode end to end, as README's "Work-pool mode" and "Run it from Prefect" say to run it.

A Prefect server on its own PostgreSQL; `prefect work-pool create` and `prefect deploy --all` from the
checkout (prefect.yaml rendered with a config whose bulk schedule is every minute); two
`prefect worker start` processes, each with its own config and work dir, so they share nothing but the
registry; `acceld --no-serve` for the HTTP API. Images are small (one 64 KiB layer set each) so twenty
conversions fit this 2-core box in a few minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from accel import constants as mt
from accel.drivers import DRIVER_TYPES
from accel.reference import Reference
from accel.registry import HostConfig, RegistryClient
from accel.store import ContentStore
from deployments.render import render
from tests.harness import conformance, imagegen, pushing
from tests.harness import registry as harness
from tests.harness.api import harbor_for, wait_until
from tests.harness.conversions import assert_converted
from tests.harness.postgres import PostgresServer
from tests.harness.postgres import available as postgres_available
from tests.harness.pushing import push_seeded_image
from tests.harness.services import (
    REPO,
    SUFFIX,
    WEBHOOK_AUTH,
    WEBHOOK_SECRET,
    Acceld,
    PrefectServer,
    PrefectWorker,
    emit_push_event,
    prefect_cli,
    tail,
)

pytestmark = [pytest.mark.registry, pytest.mark.prefect]

IMAGES = 20
WORKER_LIMIT = 3
BULK_CRON = "* * * * *"  # every minute: the shortest cron


@dataclass
class WorkPool:
    prefect: PrefectServer
    acceld: Acceld
    workers: dict[str, PrefectWorker]
    ops_env: dict[str, str]  # an operator's shell: PREFECT_API_URL, ACCEL_HOME
    bulk_repository: str
    bulk_first: str  # digest of the bulk repository's v1 when the module started
    store: ContentStore
    proxy: harness.FaultProxy  # another source host in front of the registry; hold() stalls runs on it

    def runs(self, flow_name: str) -> list[Any]:
        """Every run of `flow_name`, read through the Prefect API."""
        import asyncio

        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowFilter, FlowFilterName
        from prefect.settings import PREFECT_API_URL, temporary_settings

        async def read() -> list[Any]:
            async with get_client() as client:
                return await client.read_flow_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])), limit=200
                )

        with temporary_settings({PREFECT_API_URL: self.prefect.api_url}):
            return asyncio.run(read())

    def artifacts(self, flow_run_id: uuid.UUID) -> list[Any]:
        import asyncio

        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
        from prefect.settings import PREFECT_API_URL, temporary_settings

        async def read() -> list[Any]:
            async with get_client() as client:
                return await client.read_artifacts(
                    artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
                )

        with temporary_settings({PREFECT_API_URL: self.prefect.api_url}):
            return asyncio.run(read())


def _settings(registry_host: str, work_dir: Path, bulk_repository: str, proxy_host: str) -> dict[str, Any]:
    webhook = {"webhook": {"auth_header": WEBHOOK_SECRET}}
    return {
        "provider": {
            "source": {registry_host: webhook, proxy_host: webhook},
            "work_dir": str(work_dir),
        },
        "converter": {
            "worker": 5,
            "driver": {"type": "estargz", "config": {"compression_level": 1}},
            "rules": [{"tag_suffix": SUFFIX}],
        },
        "bulk": {"schedule": BULK_CRON, "repositories": [bulk_repository]},
    }


@pytest.fixture(scope="module")
def workpool(
    tmp_path_factory: pytest.TempPathFactory, registry: harness.RegistryServer
) -> Iterator[WorkPool]:
    if not postgres_available():
        pytest.skip("PostgreSQL server binaries are not installed (scripts/setup installs them)")
    root = tmp_path_factory.mktemp("workpool")
    store = ContentStore(root / "source-store")
    bulk_repository = f"{registry.host}/e2e-bulk/{uuid.uuid4().hex[:10]}"
    # The scheduled bulk runs walk this repository from the first minute on: it has a tag to convert.
    with RegistryClient({registry.host: HostConfig()}) as client:
        image = imagegen.generate_image(imagegen.standard_layers(64 * 1024), store)
        bulk_first = pushing.push(client, store, Reference.parse(f"{bulk_repository}:v1"), image)
    workers: dict[str, PrefectWorker] = {}
    with PostgresServer() as postgres, harness.fault_proxy(registry.host) as proxy:
        prefect = PrefectServer(root / "prefect", database_url=postgres.url)
        prefect.start()
        started: list[Any] = [prefect]
        try:
            # The operator: render prefect.yaml for this config's schedule, create the pool, deploy.
            ops_config = root / "ops" / "config.yaml"
            ops_config.parent.mkdir()
            ops_config.write_text(
                yaml.safe_dump(_settings(registry.host, root / "ops" / "work", bulk_repository, proxy.host))
            )
            prefect_file = REPO / f".prefect-e2e-{uuid.uuid4().hex[:8]}.yaml"  # beside the entrypoints
            prefect_file.write_text(render(str(ops_config)))
            ops_env = {**prefect.client_env(root / "ops" / "prefect-home"), "ACCEL_HOME": str(REPO)}
            try:
                prefect_cli(ops_env, "work-pool", "create", "accel", "--type", "process")
                prefect_cli(ops_env, "deploy", "--all", "--prefect-file", str(prefect_file))
            finally:
                prefect_file.unlink()

            for name in ("worker-a", "worker-b"):
                home = root / name
                home.mkdir()
                config = home / "config.yaml"
                config.write_text(
                    yaml.safe_dump(_settings(registry.host, home / "work", bulk_repository, proxy.host))
                )
                workers[name] = PrefectWorker(home, prefect, name, config, pool="accel")
                workers[name].start(limit=WORKER_LIMIT)
                started.append(workers[name])

            acceld_settings = _settings(registry.host, root / "acceld" / "work", bulk_repository, proxy.host)
            acceld_settings["server"] = {"name": "API", "host": "127.0.0.1", "port": harness.free_port()}
            acceld = Acceld(root / "acceld", prefect, acceld_settings, args=("--no-serve",))
            acceld.start()
            started.append(acceld)
            yield WorkPool(prefect, acceld, workers, ops_env, bulk_repository, bulk_first, store, proxy)
        finally:
            proxy.release()
            for service in reversed(started):
                service.stop()
            for worker in workers.values():
                print(f"--- {worker.name}\n{tail(worker.log_path, 3000)}")


def poll(condition: Any, timeout: float, what: str) -> Any:
    """wait_until, at a pace that leaves the 2 cores to the conversions."""

    def paced() -> Any:
        value = condition()
        if not value:
            time.sleep(2)
        return value

    return wait_until(paced, timeout, what)


def _post(acceld: Acceld, ref: Reference) -> list[dict[str, Any]]:
    r = httpx.post(f"{acceld.url}/api/v1/conversions", json=harbor_for(ref), headers=WEBHOOK_AUTH, timeout=60)
    assert r.status_code == 202, r.text
    return r.json()["tasks"]


def _task(acceld: Acceld, task_id: str) -> dict[str, Any]:
    return httpx.get(f"{acceld.url}/api/v1/conversions/{task_id}", headers=WEBHOOK_AUTH, timeout=30).json()


def _accelctl_list(acceld: Acceld) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "service.accelctl", "task", "list", "--json"],
        env={**acceld.env, "ACCELD_URL": acceld.url, "ACCELD_AUTH_HEADER": WEBHOOK_SECRET},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def assert_reference_readable(ref: Reference, scratch: Path) -> None:
    """Every layer of the converted image passes the eStargz reference reader (tests/conformance/checker)."""
    from accel.oci import Manifest

    target = ref.with_tag(f"{ref.tag}{SUFFIX}")
    with RegistryClient({ref.registry: HostConfig()}) as client:
        _, raw = client.fetch_manifest(target)
        for layer in Manifest.parse(raw).layers:
            blob = client.fetch_blob(target, layer, ContentStore(scratch))  # digest-verified
            verdict = conformance.check_estargz(
                blob,
                layer.annotation(mt.ESTARGZ_TOC_DIGEST),
                int(layer.annotation(mt.ESTARGZ_UNCOMPRESSED_SIZE)),
            )
            assert verdict.ok, f"{target} layer {layer.digest}: reference reader said: {verdict.error}"


def _worker_of(run: Any) -> str | None:
    return (run.labels or {}).get("prefect.worker.name")


def test_twenty_pushes_convert_on_both_workers_with_sizes_and_targets(workpool: WorkPool, registry, tmp_path):
    refs = [push_seeded_image(registry.host, workpool.store, tag="wp", seed=100 + i) for i in range(IMAGES)]
    ids: dict[str, str] = {}
    for ref in refs:
        [task] = _post(workpool.acceld, ref)
        ids[str(ref)] = task["id"]
    assert len(set(ids.values())) == IMAGES

    def all_final() -> bool:
        return all(_task(workpool.acceld, i)["status"] != "PROCESSING" for i in ids.values())

    poll(all_final, timeout=420, what=f"{IMAGES} work-pool conversions to finish")
    for ref in refs:
        task = _task(workpool.acceld, ids[str(ref)])
        assert task["status"] == "COMPLETED", task
        assert_converted(ref)
        assert_reference_readable(ref, tmp_path / "fetched")

    # The same webhooks again: the same runs, nothing new.
    for ref in refs:
        assert [t["id"] for t in _post(workpool.acceld, ref)] == [ids[str(ref)]]

    # Sizes and targets as the runs recorded them (the result artifact), in `accelctl task list`.
    listed = {t["id"]: t for t in _accelctl_list(workpool.acceld)}
    for ref in refs:
        task = listed[ids[str(ref)]]
        target = f"{ref.name}:{ref.tag}{SUFFIX}"
        assert task["targets"] == [target] and task["target"] == target, task
        assert task["source_size"] > 0 and task["target_size"] > 0, task
        assert task["drivers"] == ["estargz"]
    mine = [t for t in listed.values() if t["source"] in ids]
    assert len(mine) == IMAGES  # no duplicates

    runs = {str(r.id): r for r in workpool.runs("convert-image")}
    workers = {_worker_of(runs[i]) for i in ids.values()}
    assert workers == {"worker-a", "worker-b"}, workers
    # Each worker converted in its own work dir: both content stores hold converted blobs.
    for worker in workpool.workers.values():
        assert any((worker.workdir / "work" / "content").rglob("*")), worker.name


def test_the_same_event_twice_through_the_trigger_is_one_conversion(workpool: WorkPool, registry):
    ref = push_seeded_image(registry.host, workpool.store, tag="event", seed=300)
    for _ in range(2):
        emit_push_event(workpool.ops_env, ref)

    def both_final() -> list[Any] | None:
        runs = [r for r in workpool.runs("convert-image") if (r.parameters or {}).get("source") == str(ref)]
        done = len(runs) == 2 and all(r.state and r.state.is_final() for r in runs)
        return runs if done else None

    runs = poll(both_final, timeout=300, what="both triggered runs to finish")
    assert all(r.state.is_completed() for r in runs), [r.state for r in runs]
    assert_converted(ref)
    first, second = sorted(runs, key=lambda r: r.created)
    assert "accel-duplicate" not in first.tags and "accel-duplicate" in second.tags
    # The duplicate skipped, naming the run that converted; acceld lists only that one.
    [result] = [a for a in workpool.artifacts(second.id) if a.type == "accel-result"]
    data = json.loads(result.data) if isinstance(result.data, str) else result.data
    assert data["skipped"] == f"duplicate of flow run {first.id}" and data["targets"] == []
    listed = [t for t in _accelctl_list(workpool.acceld) if t["source"] == str(ref)]
    assert [t["id"] for t in listed] == [str(first.id)]
    assert listed[0]["targets"] == [f"{ref.name}:{ref.tag}{SUFFIX}"] and listed[0]["target_size"] > 0


def test_scheduled_bulk_run_reconverts_a_repushed_tag_and_lists_it(workpool: WorkPool, registry):
    base = Reference.parse(f"{workpool.bulk_repository}:v1")
    target = base.with_tag(f"v1{SUFFIX}")
    first = workpool.bulk_first
    with RegistryClient({registry.host: HostConfig()}) as client:

        def made_from() -> str | None:
            try:
                _, raw = client.fetch_manifest(target)
            except Exception:
                return None
            return json.loads(raw)["annotations"][mt.ACCEL_SOURCE_DIGEST]

        poll(lambda: made_from() == first, timeout=240, what="a scheduled bulk run to convert v1")
        extra = imagegen.TarBuilder(auto_parents=True)
        extra.file("again.txt", b"re-pushed\n")
        image = imagegen.generate_image([*imagegen.standard_layers(64 * 1024), extra], workpool.store)
        second = pushing.push(client, workpool.store, base, image)
        assert second != first
        poll(lambda: made_from() == second, timeout=240, what="a scheduled bulk run to re-convert v1")

    pinned = f"{base}@{second}"

    def bulk_run_listing_it() -> tuple[Any, str] | None:
        for run in workpool.runs("bulk-reconvert"):
            if not (run.state and run.state.is_final()):
                continue
            for artifact in workpool.artifacts(run.id):
                if artifact.key == "bulk-reconvert" and f"`{pinned}`" in str(artifact.data):
                    return run, str(artifact.data)
        return None

    run, markdown = poll(bulk_run_listing_it, timeout=120, what="the bulk run's artifact")
    assert run.name.startswith("bulk-reconvert 20"), run.name
    assert run.state.is_completed(), run.state
    assert f"estargz: {target} was made from {first}, source is now {second}" in markdown
    # The conversion is the bulk run's linked child, COMPLETED.
    [child] = [r for r in workpool.runs("convert-image") if (r.parameters or {}).get("source") == pinned]
    assert child.parent_task_run_id is not None and child.state.is_completed()
    assert f"| {child.id} | Completed |" in markdown


def test_cli_run_as_the_readme_says_and_the_run_form_schema(workpool: WorkPool, registry):
    import re

    ref = push_seeded_image(registry.host, workpool.store, tag="cli", seed=400)
    source = f"{ref.name}:{ref.tag}"
    out = prefect_cli(
        workpool.ops_env, "deployment", "run", "convert-image/convert-image", "-p", f"source={source}"
    )
    [run_id] = set(re.findall(r"UUID: ([0-9a-f-]{36})", out)) or [None]
    assert run_id, out

    def finished() -> Any:
        [run] = [r for r in workpool.runs("convert-image") if str(r.id) == run_id]
        return run if run.state and run.state.is_final() else None

    run = poll(finished, timeout=300, what="the CLI-started run")
    assert run.state.is_completed(), run.state
    [result] = [a for a in workpool.artifacts(run.id) if a.type == "accel-result"]
    data = json.loads(result.data) if isinstance(result.data, str) else result.data
    assert [t["reference"] for t in data["targets"]] == [f"{source}{SUFFIX}"]
    assert data["targets"][0]["source_size"] > 0 and data["targets"][0]["target_size"] > 0
    assert_converted(ref)
    # Not one of acceld's tasks: acceld lists the runs it was sent (and the push trigger's), as Go does.
    assert _task(workpool.acceld, run_id)["status"] == 404

    # What the UI's custom-run form is built from: the deployed parameter schema.
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def schema() -> dict[str, Any]:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name("convert-image/convert-image")
            return deployment.parameter_openapi_schema

    with temporary_settings({PREFECT_API_URL: workpool.prefect.api_url}):
        properties = asyncio.run(schema())["properties"]
    assert set(properties) == {"source", "drivers", "config", "target_repository", "target"}
    assert all(p.get("description") for p in properties.values()), properties
    # Every registered driver, in the registry's (alphabetical) order.
    assert (
        properties["drivers"]["anyOf"][0]["items"]["enum"]
        == list(DRIVER_TYPES)
        == [
            "estargz",
            "nydus",
            "zstdchunked",
        ]
    )


def test_killing_a_worker_mid_run_crashes_its_run_and_a_resent_webhook_converts_on_the_other(
    workpool: WorkPool, registry
):
    # As README says for the work-pool mode: the automation that marks runs whose process died CRASHED.
    prefect_cli(
        workpool.ops_env, "automation", "create", "--from-file", str(REPO / "prefect-automations.yaml")
    )
    pushed = push_seeded_image(registry.host, workpool.store, tag="crash", seed=500)
    ref = Reference.parse(f"{workpool.proxy.host}/{pushed.repository}:{pushed.tag}@{pushed.digest}")
    workpool.proxy.hold()  # the run stalls on its first registry request: surely mid-run when killed
    [task] = _post(workpool.acceld, ref)

    def stalled_run() -> Any:
        run = {str(r.id): r for r in workpool.runs("convert-image")}.get(task["id"])
        running = run is not None and run.state is not None and run.state.is_running()
        return run if running and workpool.proxy.held and _worker_of(run) else None

    run = poll(stalled_run, timeout=240, what="the run to start and stall on the registry")
    victim = _worker_of(run)
    [survivor] = set(workpool.workers) - {victim}
    workpool.workers[victim].kill()
    workpool.proxy.release()

    def crashed() -> dict[str, Any] | None:
        got = _task(workpool.acceld, task["id"])
        return got if got["status"] != "PROCESSING" else None

    # Heartbeats every 30 s, CRASHED after 90 s without one.
    failed = poll(crashed, timeout=300, what="the killed worker's run to be marked crashed")
    assert failed["status"] == "FAILED" and "no heartbeat" in failed["reason"], failed
    assert {str(r.id): r for r in workpool.runs("convert-image")}[task["id"]].state.is_crashed()

    [again] = _post(workpool.acceld, ref)
    assert again["id"] != task["id"]  # a CRASHED run's key gets a new attempt: a new run
    done = poll(
        lambda: (t := _task(workpool.acceld, again["id"]))["status"] != "PROCESSING" and t, 300, "re-run"
    )
    assert done["status"] == "COMPLETED", done
    assert _worker_of({str(r.id): r for r in workpool.runs("convert-image")}[again["id"]]) == survivor
    assert_converted(ref)
