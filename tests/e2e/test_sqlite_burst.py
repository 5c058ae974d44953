"""The embedded default under load (issue 9): acceld on accel's Prefect server (`service.prefectserver`) with
its default SQLite database, `worker: 5`, 30 webhook pushes in a few seconds → all converted, none duplicated,
no `database is locked` in any log (plain `prefect server start` logged ~100-190 of them)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from accel.store import ContentStore
from tests.harness import registry as harness
from tests.harness.api import harbor_for, wait_until
from tests.harness.conversions import assert_converted, wait_task
from tests.harness.pushing import push_seeded_image
from tests.harness.services import WEBHOOK_AUTH, Acceld, PrefectServer, acceld_settings, tail

pytestmark = [pytest.mark.registry, pytest.mark.prefect]

BURST = 30


@pytest.fixture(scope="module")
def sqlite_prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    server = PrefectServer(tmp_path_factory.mktemp("prefect-sqlite"))  # no database URL: SQLite
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sqlite_acceld(
    tmp_path_factory: pytest.TempPathFactory, sqlite_prefect: PrefectServer, registry: harness.RegistryServer
) -> Iterator[Acceld]:
    workdir: Path = tmp_path_factory.mktemp("acceld-sqlite")
    settings = acceld_settings(workdir, harness.free_port(), [registry.host])
    service = Acceld(workdir, sqlite_prefect, settings)
    service.start()
    yield service
    service.stop()
    print(tail(service.log_path, 3000))


def _tasks_for(acceld: Acceld, ref) -> list[dict]:
    """Tasks of `ref`; none while the list answers 503 (a busy SQLite server may be slow to list)."""
    r = httpx.get(
        f"{acceld.url}/api/v1/conversions", params={"limit": 1000}, headers=WEBHOOK_AUTH, timeout=120
    )
    if r.status_code != 200:
        return []
    return [t for t in r.json() if t["source"].startswith(f"{ref.name}:")]


@pytest.fixture(scope="module")
def burst(sqlite_acceld, sqlite_prefect, registry, tmp_path_factory) -> dict:
    """30 webhook pushes sent within a few seconds, every task waited for; the refs, tasks and logs."""
    store = ContentStore(tmp_path_factory.mktemp("burst-source"))
    refs = [push_seeded_image(registry.host, store, tag=f"b{i}", seed=500 + i) for i in range(BURST)]

    def send(ref):
        r = httpx.post(
            f"{sqlite_acceld.url}/api/v1/conversions", json=harbor_for(ref), headers=WEBHOOK_AUTH, timeout=30
        )
        return r.status_code

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(send, refs))
    listed = {
        str(ref): wait_until(
            lambda ref=ref: _tasks_for(sqlite_acceld, ref), timeout=300, what=f"a task for {ref}"
        )
        for ref in refs
    }
    finished = [wait_task(sqlite_acceld, tasks[0]["id"], timeout=600) for tasks in listed.values()]
    # Listed again once all are done: a duplicate created late would show here.
    final = {str(ref): _tasks_for(sqlite_acceld, ref) for ref in refs}
    logs = sqlite_acceld.log() + sqlite_prefect.log_path.read_text(errors="replace")
    return {"refs": refs, "statuses": statuses, "finished": finished, "final": final, "logs": logs}


def test_a_burst_on_the_embedded_sqlite_default_converts_everything_once(burst):
    assert burst["statuses"] == [202] * BURST
    assert [t["status"] for t in burst["finished"]] == ["COMPLETED"] * BURST, [
        t["reason"] for t in burst["finished"]
    ]
    assert all(len(tasks) == 1 for tasks in burst["final"].values()), burst["final"]  # none duplicated
    for ref in burst["refs"]:
        assert_converted(ref)


def test_a_burst_on_the_embedded_sqlite_default_logs_no_lock_errors(burst):
    assert burst["logs"].count("database is locked") == 0
    assert burst["logs"].count("Traceback") == 0
