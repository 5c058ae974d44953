"""A run acceld creates starts at once: acceld wakes its runner (service/supervisor.py WAKE_SIGNAL) instead of
leaving the run to the runner's next poll. Here the poll is every 600 s, so a webhook's conversion finishes
within a minute only if the wake works — with either runner (Prefect's, whose runs are processes forked by
the warm starter, and `--in-process-runs`)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.harness.api import harbor_for
from tests.harness.conversions import assert_converted, wait_listed, wait_task
from tests.harness.pushing import push_seeded_image
from tests.harness.services import WEBHOOK_AUTH, Acceld, acceld_on_sqlite

pytestmark = [pytest.mark.registry, pytest.mark.prefect]

POLL_SECONDS = "600"

# The runner's line once it polls (Prefect's runner, and service/localserve.py).
RUNNER_UP = {(): "runner serving 2 deployment(s)", ("--in-process-runs",): "in-process, polling every"}


@pytest.fixture(scope="module", params=[(), ("--in-process-runs",)], ids=["process-runs", "in-process-runs"])
def slow_polling_acceld(request, tmp_path_factory: pytest.TempPathFactory, registry) -> Iterator[Acceld]:
    env = {"PREFECT_RUNNER_POLL_FREQUENCY": POLL_SECONDS}
    workdir = tmp_path_factory.mktemp("wake")
    with acceld_on_sqlite(workdir, [registry.host], args=request.param, env=env) as service:
        deadline = time.monotonic() + 120
        while RUNNER_UP[request.param] not in service.log():  # its first poll is behind it, or under way
            assert time.monotonic() < deadline, f"the runner did not start:\n{service.log()[-3000:]}"
            time.sleep(0.5)
        time.sleep(3)  # ... and over: a run found now was found by the wake
        yield service


def test_a_webhook_run_starts_without_waiting_for_the_poll(
    slow_polling_acceld: Acceld, registry, source_store
):
    acceld = slow_polling_acceld
    ref = push_seeded_image(registry.host, source_store, tag="wake", seed=2601)
    started = time.monotonic()
    answer = httpx.post(
        f"{acceld.url}/api/v1/conversions", json=harbor_for(ref), headers=WEBHOOK_AUTH, timeout=30
    )
    assert answer.status_code == 202, answer.text
    [task] = answer.json()["tasks"] or wait_listed(acceld, ref)
    done = wait_task(acceld, task["id"], timeout=60)
    assert done["status"] == "COMPLETED", (done, acceld.log()[-3000:])
    assert time.monotonic() - started < 60  # the poll would have taken up to 600 s
    assert_converted(ref)
