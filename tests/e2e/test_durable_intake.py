"""A push acceld answered 2xx is converted even when acceld dies before creating its flow run.

The deterministic form of the loss (issue: accepted webhooks lost when acceld dies): the Prefect server is
stopped (SIGSTOP: it accepts connections and answers nothing), so every webhook is answered 202 `pending`;
acceld and its runner are then killed with SIGKILL, the server resumed, and acceld started again on the same
work dir. Every push must be converted, once.
"""

from __future__ import annotations

import httpx

from tests.harness.api import harbor_for, wait_until
from tests.harness.conversions import assert_converted
from tests.harness.pushing import push_seeded_image
from tests.harness.registry import free_port
from tests.harness.services import WEBHOOK_AUTH, Acceld, PrefectServer, acceld_settings, tail

PUSHES = 5


def test_pushes_answered_pending_survive_a_killed_acceld(registry, source_store, tmp_path):
    prefect = PrefectServer(tmp_path / "prefect")  # its own: this test stops it
    prefect.start()
    service = Acceld(
        tmp_path / "acceld", prefect, acceld_settings(tmp_path / "acceld", free_port(), [registry.host])
    )
    try:
        service.start()
        refs = [push_seeded_image(registry.host, source_store, seed=100 + i) for i in range(PUSHES)]
        prefect.pause()
        try:
            for ref in refs:
                r = httpx.post(
                    f"{service.url}/api/v1/conversions",
                    json=harbor_for(ref),
                    headers=WEBHOOK_AUTH,
                    timeout=30,
                )
                assert r.status_code == 202, r.text
                assert r.json()["pending"] == [str(ref)], r.json()  # no flow run exists yet
            service.kill()
        finally:
            prefect.resume()
        service.start()

        def converted() -> bool:
            tasks = httpx.get(f"{service.url}/api/v1/conversions", headers=WEBHOOK_AUTH, timeout=30).json()
            done = [t for t in tasks if t["status"] == "COMPLETED"]
            return len(done) >= PUSHES

        wait_until(converted, timeout=600, what=f"{PUSHES} conversions after the restart")
        tasks = httpx.get(f"{service.url}/api/v1/conversions", headers=WEBHOOK_AUTH, timeout=30).json()
        assert sorted(t["source"] for t in tasks) == sorted(str(ref) for ref in refs)  # each once
        for ref in refs:
            assert_converted(ref)
    finally:
        service.stop()
        print(tail(service.log_path, 3000))
        prefect.stop()
