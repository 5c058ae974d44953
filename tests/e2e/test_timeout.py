"""converter.limits.timeout under acceld: a conversion that stops making progress (its layer pull held by
a fault proxy) ends FAILED naming the timeout, pushes nothing, and frees its worker slot — with one worker,
the next conversion completes while the stuck request is still held.

acceld here has its own Prefect server (two accelds serving the same deployment names would take each
other's runs), one worker and a short timeout.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from accel.reference import Reference
from accel.registry import HostConfig, RegistryClient
from accel.store import ContentStore
from tests.harness import imagegen
from tests.harness import registry as harness
from tests.harness.api import harbor_for
from tests.harness.conversions import assert_converted, wait_listed, wait_task
from tests.harness.pushing import push_through_proxy
from tests.harness.services import SUFFIX, WEBHOOK_AUTH, Acceld, acceld_on_sqlite

pytestmark = [pytest.mark.registry, pytest.mark.prefect]

TIMEOUT = 20  # seconds: far above a small conversion, far below the registry client's own read timeout


@pytest.fixture(scope="module")
def proxy(registry) -> Iterator[harness.FaultProxy]:
    with harness.fault_proxy(registry.host) as p:
        yield p


@pytest.fixture(scope="module")
def timeout_acceld(tmp_path_factory: pytest.TempPathFactory, proxy) -> Iterator[Acceld]:
    # SQLite, and one worker: the stalled conversion holds the only slot until its timeout frees it
    limits = {"timeout": TIMEOUT}
    with acceld_on_sqlite(
        tmp_path_factory.mktemp("timeout"), [proxy.host], worker=1, limits=limits
    ) as service:
        yield service


def submit(acceld: Acceld, ref: Reference) -> dict[str, Any]:
    """The task the webhook created (listed once created, when creation went on in the background)."""
    r = httpx.post(f"{acceld.url}/api/v1/conversions", json=harbor_for(ref), headers=WEBHOOK_AUTH, timeout=30)
    assert r.status_code == 202, r.text
    if tasks := r.json()["tasks"]:
        return tasks[0]
    assert r.json()["pending"], r.text
    [task] = wait_listed(acceld, ref)
    return task


def small_image(proxy: harness.FaultProxy, store: ContentStore, tag: str, seed: str):
    extra = imagegen.TarBuilder(auto_parents=True)
    extra.file("seed.txt", f"timeout {seed}\n".encode())
    return push_through_proxy(proxy, store, [*imagegen.standard_layers(32 * imagegen.KiB), extra], tag)


def test_a_stalled_conversion_times_out_and_frees_its_worker(timeout_acceld, registry, proxy, tmp_path):
    store = ContentStore(tmp_path / "source")
    image, stuck = small_image(proxy, store, "stuck", "stuck")
    # Every request for its last layer is held (the client's retries too) until the test ends.
    stall = proxy.stall(
        rf"^/v2/{stuck.repository}/blobs/{image.layers[-1].digest}$", method="GET", times=1000
    )
    try:
        first = submit(timeout_acceld, stuck)
        failed = wait_task(timeout_acceld, first["id"], timeout=TIMEOUT + 180)
        assert stall.reached.is_set()
        assert failed["status"] == "FAILED", failed
        assert f"timeout of {TIMEOUT}" in failed["reason"], failed["reason"]
        assert "converter.limits.timeout" in failed["reason"], failed["reason"]
        with RegistryClient({registry.host: HostConfig()}) as client:
            tags = client.list_tags(Reference.parse(f"{registry.host}/{stuck.repository}:x"))
        assert f"stuck{SUFFIX}" not in tags  # nothing pushed

        # The only worker is free again although the stuck request is still held.
        _, after = small_image(proxy, store, "after", "after")
        second = submit(timeout_acceld, after)
        assert wait_task(timeout_acceld, second["id"], timeout=180)["status"] == "COMPLETED"
        assert_converted(after)
        assert not stall.released.is_set()
    finally:
        stall.release()
