"""converter.limits.timeout without acceld: the convert-image flow takes its timeout from the config it runs
with, so a run started directly (as accelctl's one-time runner and a work-pool worker start it) whose layer
pull stalls ends FAILED in Prefect's `TimedOut` state naming the timeout, and pushes no tag."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml

from accel.registry import HostConfig, RegistryClient
from accel.store import ContentStore
from tests.harness import configs, pushing
from tests.harness.registry import Stall

pytestmark = [pytest.mark.registry, pytest.mark.prefect]

TIMEOUT = 3  # seconds: the config's converter.limits.timeout


def _timed_out(run_name: str) -> bool:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as prefect:
        runs = prefect.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_name])))
    return any(r.state is not None and r.state.name == "TimedOut" for r in runs)


def _release_once_timed_out(stall: Stall, run_name: str, seen: threading.Event) -> None:
    """Prefect records the run's final state, then waits for its task threads, among them the stalled
    pull's: let that pull go on once the state is there (or after two minutes, failing the test)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not stall.released.is_set():
        if _timed_out(run_name):
            seen.set()
            break
        time.sleep(0.2)
    stall.release()


def _config(path: Path, host: str) -> Path:
    configs.write_config(path, {host: {}}, [configs.driver("estargz")])
    settings = yaml.safe_load(path.read_text())
    settings["converter"]["limits"] = {"timeout": TIMEOUT}
    path.write_text(yaml.safe_dump(settings))
    return path


def test_a_run_past_its_configs_timeout_ends_failed_naming_the_timeout(prefect_api, fault_proxy, tmp_path):
    from flows.convert_image import convert_image

    store = ContentStore(tmp_path / "source")
    image, source = pushing.push_standard_image(fault_proxy.host, store, "timeout")
    config = _config(tmp_path / "config.yaml", fault_proxy.host)
    # Every request for its last layer is held (the client's retries too).
    stall = fault_proxy.stall(rf"/blobs/{image.layers[-1].digest}$", method="GET", times=1000)
    seen = threading.Event()
    releaser = threading.Thread(
        target=_release_once_timed_out, args=(stall, f"convert {source}", seen), daemon=True
    )
    releaser.start()
    try:
        state = convert_image(source=str(source), config=str(config), return_state=True)
    finally:
        stall.release()
    releaser.join(10)

    assert stall.reached.is_set()
    assert seen.is_set(), "the run was not TimedOut while its pull was held"
    assert state.is_failed() and state.name == "TimedOut", state
    assert f"exceeded timeout of {float(TIMEOUT)} second(s)" in (state.message or ""), state.message
    with RegistryClient({fault_proxy.host: HostConfig()}) as client:
        assert client.list_tags(source) == ["v1"]  # no target tag pushed
