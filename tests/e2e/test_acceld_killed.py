"""acceld killed with SIGKILL: nothing it accepted is lost, and nothing it started goes on.

Lost work, deterministically: the Prefect server is stopped (SIGSTOP: it accepts connections and answers
nothing), so every webhook is answered 202 `pending`; acceld and its runner are then killed with SIGKILL, the
server resumed, and acceld started again on the same work dir. Every push must be converted, once.

Orphans: a conversion is held mid-pull by a proxy; acceld (alone, or with its runner) is killed with
SIGKILL; its runner and the run's own process must be gone within 10 s.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import httpx
import pytest

from tests.harness import imagegen
from tests.harness.api import harbor_for, wait_until
from tests.harness.conversions import assert_converted
from tests.harness.pushing import push_seeded_image, push_through_proxy
from tests.harness.registry import FaultProxy, free_port
from tests.harness.services import WEBHOOK_AUTH, Acceld, PrefectServer, acceld_settings, descendants, tail

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


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("killed", ["acceld", "acceld and its runner"])
def test_no_process_of_a_killed_acceld_goes_on(killed: str, fault_proxy: FaultProxy, source_store, tmp_path):
    prefect = PrefectServer(tmp_path / "prefect")
    prefect.start()
    service = Acceld(
        tmp_path / "acceld", prefect, acceld_settings(tmp_path / "acceld", free_port(), [fault_proxy.host])
    )
    started: list[int] = []
    try:
        service.start()
        _, ref = push_through_proxy(
            fault_proxy, source_store, imagegen.standard_layers(64 * imagegen.KiB), "v1"
        )
        stall = fault_proxy.stall(r"/blobs/sha256:", method="GET", times=1000)  # every layer download held
        r = httpx.post(
            f"{service.url}/api/v1/conversions", json=harbor_for(ref), headers=WEBHOOK_AUTH, timeout=30
        )
        assert r.status_code == 202, r.text

        def run_process() -> list[int]:
            found = [p for p in descendants(service.pid) if b"prefect.engine" in _cmdline(p)]
            return found if found and stall.reached.is_set() else []

        flow_runs = wait_until(run_process, timeout=300, what="the conversion's own process, held mid-pull")
        started = [*descendants(service.pid)]
        # `kill -9` of acceld alone, or of acceld and its runner at once (the OOM killer): nothing is told to
        # stop, and the run is held mid-pull, so nothing would end by itself.
        runners = [p for p in started if p not in flow_runs] if killed == "acceld and its runner" else []
        for pid in [service.pid, *runners]:
            os.kill(pid, 9)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [p for p in started if _alive(p)]
        assert left == [], f"alive 10 s after acceld was killed: {left} (flow runs {flow_runs})"
        stall.release()
    finally:
        fault_proxy.clear()
        for pid in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        service.stop()
        print(tail(service.log_path, 3000))
        prefect.stop()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_sigterm_stops_acceld_within_10_s_while_prefect_answers_nothing(registry, source_store, tmp_path):
    prefect = PrefectServer(tmp_path / "prefect")
    prefect.start()
    settings = acceld_settings(tmp_path / "acceld", free_port(), [registry.host])
    uds = tmp_path / "acceld.sock"
    settings["server"]["uds"] = str(uds)
    service = Acceld(tmp_path / "acceld", prefect, settings)
    try:
        service.start()
        ref = push_seeded_image(registry.host, source_store, seed=300)
        prefect.pause()
        try:
            r = httpx.post(
                f"{service.url}/api/v1/conversions", json=harbor_for(ref), headers=WEBHOOK_AUTH, timeout=30
            )
            assert r.status_code == 202 and r.json()["pending"] == [str(ref)], r.text  # a creation waiting
            started = time.monotonic()
            service.terminate()
            code = service.wait(timeout=30)
            took = time.monotonic() - started
        finally:
            prefect.resume()
        assert took <= 10, f"acceld took {took:.1f} s to stop after SIGTERM"
        assert code == 0 and not uds.exists(), (code, uds.exists())
        # What it accepted is not lost by stopping: the next start creates and converts it.
        service.start()
        wait_until(
            lambda: _completed(service) == [str(ref)], timeout=300, what="the journalled push, converted"
        )
    finally:
        service.stop()
        print(tail(service.log_path, 3000))
        prefect.stop()


def _completed(service: Acceld) -> list[str]:
    tasks = httpx.get(f"{service.url}/api/v1/conversions", headers=WEBHOOK_AUTH, timeout=30).json()
    return [t["source"] for t in tasks if t["status"] == "COMPLETED"]


def test_a_conversion_running_when_acceld_is_stopped_runs_again_after_the_restart(
    fault_proxy: FaultProxy, source_store, tmp_path
):
    """SIGTERM of acceld while a run converts: the run is not CANCELLED (Prefect's graceful stop of the
    runner would do that, and its push, answered 2xx, would never be converted); the next acceld runs it, as
    itself."""
    prefect = PrefectServer(tmp_path / "prefect")
    prefect.start()
    service = Acceld(
        tmp_path / "acceld", prefect, acceld_settings(tmp_path / "acceld", free_port(), [fault_proxy.host])
    )
    try:
        service.start()
        _, ref = push_through_proxy(
            fault_proxy, source_store, imagegen.standard_layers(64 * imagegen.KiB), "v1"
        )
        stall = fault_proxy.stall(r"/blobs/sha256:", method="GET", times=1000)  # held mid-pull
        r = httpx.post(
            f"{service.url}/api/v1/conversions", json=harbor_for(ref), headers=WEBHOOK_AUTH, timeout=30
        )
        assert r.status_code == 202, r.text
        wait_until(stall.reached.is_set, timeout=300, what="the conversion, held mid-pull")
        [task] = wait_until(lambda: _tasks(service, ref), timeout=60, what="its task")
        started = time.monotonic()
        service.terminate()
        assert service.wait(timeout=30) == 0
        assert time.monotonic() - started <= 10
        stall.release()
        fault_proxy.clear()
        service.start()
        wait_until(
            lambda: [t["status"] for t in _tasks(service, ref)] == ["COMPLETED"],
            timeout=300,
            what="the stopped conversion, run again and completed",
        )
        assert [t["id"] for t in _tasks(service, ref)] == [task["id"]]  # the same run, not a second one
        assert_converted(ref)
    finally:
        fault_proxy.clear()
        service.stop()
        print(tail(service.log_path, 3000))
        prefect.stop()


def _tasks(service: Acceld, ref) -> list[dict]:
    tasks = httpx.get(
        f"{service.url}/api/v1/conversions", params={"limit": 1000}, headers=WEBHOOK_AUTH, timeout=30
    ).json()
    return [t for t in tasks if t["source"] == str(ref)]
