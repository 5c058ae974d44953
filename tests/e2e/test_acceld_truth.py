"""acceld reports what happened (issue 23), with one worker: the `harbor.artifact.pushed` trigger converts
under acceld (twice is once), and a bulk run over stale images completes — it never holds the only slot its
own children need. acceld here has its own Prefect server (two accelds serving the same deployment names
would take each other's runs).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from accel.reference import Reference
from tests.harness.conversions import assert_converted, tasks_for
from tests.harness.pushing import push_seeded_image
from tests.harness.services import Acceld, acceld_on_sqlite, emit_push_event, prefect_cli

pytestmark = [pytest.mark.registry, pytest.mark.prefect]


@pytest.fixture(scope="module")
def one_worker_acceld(tmp_path_factory: pytest.TempPathFactory, registry) -> Iterator[Acceld]:
    with acceld_on_sqlite(tmp_path_factory.mktemp("truth"), [registry.host], worker=1) as service:
        yield service


def _runs(acceld: Acceld, flow_name: str) -> list[dict[str, Any]]:
    api = acceld.env["PREFECT_API_URL"]
    body = {"flows": {"name": {"any_": [flow_name]}}, "limit": 200}
    return httpx.post(f"{api}/flow_runs/filter", json=body, timeout=30).json()


def _poll(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}")


def _final(run: dict[str, Any]) -> bool:
    return (run.get("state") or {}).get("type") in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def test_the_push_event_converts_under_acceld_and_twice_is_once(
    one_worker_acceld: Acceld, registry, source_store
):
    ref = push_seeded_image(registry.host, source_store, tag="event", seed=2301)
    for _ in range(2):
        emit_push_event(one_worker_acceld.env, ref)

    def both_final() -> list[dict[str, Any]] | None:
        runs = [
            r for r in _runs(one_worker_acceld, "convert-image") if r["parameters"].get("source") == str(ref)
        ]
        return runs if len(runs) == 2 and all(_final(r) for r in runs) else None

    runs = _poll(both_final, timeout=300, what="both triggered runs to finish")
    assert all(r["state"]["type"] == "COMPLETED" for r in runs), [r["state"] for r in runs]
    assert_converted(ref)
    assert sum("accel-duplicate" in r["tags"] for r in runs) == 1  # one converted, one skipped as duplicate
    listed = tasks_for(one_worker_acceld, ref)
    assert len(listed) == 1 and listed[0]["status"] == "COMPLETED", listed


def test_a_bulk_run_with_one_worker_converts_its_stale_images_and_completes(
    one_worker_acceld: Acceld, registry, source_store
):
    store = source_store
    first = push_seeded_image(registry.host, store, tag="v1", seed=2302)
    repository = first.name
    refs = [first] + [
        _push_into(registry.host, repository, store, tag, seed) for tag, seed in (("v2", 2303), ("v3", 2304))
    ]
    repositories = f"repositories={json.dumps([repository])}"
    prefect_cli(
        one_worker_acceld.env, "deployment", "run", "bulk-reconvert/bulk-reconvert", "-p", repositories
    )

    def bulk_final() -> dict[str, Any] | None:
        runs = [r for r in _runs(one_worker_acceld, "bulk-reconvert") if r["parameters"].get("repositories")]
        return runs[0] if runs and _final(runs[0]) else None

    bulk = _poll(bulk_final, timeout=600, what="the bulk run to finish")
    assert bulk["state"]["type"] == "COMPLETED", bulk["state"]
    for ref in refs:
        assert_converted(ref)
    children = [r for r in _runs(one_worker_acceld, "convert-image") if r["parent_task_run_id"]]
    names = {r["name"] for r in children}
    assert {f"convert {ref}" for ref in refs} <= names, names


def _push_into(host: str, repository: str, store: Any, tag: str, seed: int) -> Reference:
    """A seeded image under `tag` in an existing repository."""
    from accel.registry import HostConfig, RegistryClient
    from tests.harness import imagegen, pushing

    extra = imagegen.TarBuilder(auto_parents=True)
    extra.file("seed.txt", f"seed {seed}\n".encode())
    image = imagegen.generate_image([*imagegen.standard_layers(64 * imagegen.KiB), extra], store)
    ref = Reference.parse(f"{repository}:{tag}")
    with RegistryClient({host: HostConfig()}) as client:
        digest = pushing.push(client, store, ref, image)
    return ref.with_digest(digest)


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) +\S.*?: ")


def test_acceld_log_has_one_format_and_short_lines(one_worker_acceld: Acceld):
    """After the runs above: acceld's, uvicorn's, the runner's and the flow runs' lines all in one format,
    none over 200 characters (digests shortened; the API and artifacts keep them whole)."""
    lines = [line for line in one_worker_acceld.log().splitlines() if line.strip()]
    assert any(" flow run convert " in line for line in lines)  # the flow-run processes' lines are there
    odd = [line for line in lines if not LOG_LINE.match(line)]
    assert not odd, "\n".join(line[:160] for line in odd[:15])
    long = [line for line in lines if len(line) > 200]
    assert not long, "\n".join(long[:10])
    assert not re.search(r"sha256:[0-9a-f]{64}", "\n".join(lines))
