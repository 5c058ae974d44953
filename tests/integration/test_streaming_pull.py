"""A layer's conversion reads the layer while its pull still downloads it (`ContentStore.open_following`),
and a pull that fails ends the conversions reading behind it."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from accel.reference import Reference
from accel.registry import HostConfig, RegistryClient
from accel.store import ContentStore
from tests.harness import configs, imagegen, pushing
from tests.harness.api import wait_until

pytestmark = [pytest.mark.registry, pytest.mark.prefect]


def _task_states(flow_run_id: Any) -> dict[str, str]:
    """Task run name → state type of the flow run's task runs, as the server has them now."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as prefect:
        runs = prefect.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r.state.type.value for r in runs if r.state is not None}


def _converting(name: str) -> bool:
    return name.startswith("convert ") and name.endswith(" (zstdchunked)")


def _source(fault_proxy: Any, tmp_path: Any) -> tuple[Reference, list[str]]:
    store = ContentStore(tmp_path / "source")
    image = imagegen.generate_image(imagegen.standard_layers(64 << 10), store)
    source = Reference.parse(f"{fault_proxy.host}/streaming/{uuid.uuid4().hex[:8]}:v1")
    with RegistryClient({fault_proxy.host: HostConfig()}) as client:
        pushing.push(client, store, source, image)
    return source, [layer.digest for layer in image.layers]


def test_a_conversion_runs_while_its_layer_is_still_being_pulled(prefect_api, fault_proxy, tmp_path):
    from flows.convert_image import convert_image

    source, layers = _source(fault_proxy, tmp_path)
    drivers = [configs.driver("zstdchunked")]

    def run(work: str, repository: str) -> Any:
        config = configs.write_config(
            tmp_path / f"{work}.yaml", {fault_proxy.host: {}}, drivers, work_dir=tmp_path / work
        )
        return convert_image(
            source=str(source), config=str(config), target_repository=repository, return_state=True
        )

    held = layers[-1]
    stall = fault_proxy.stall(f"/blobs/{held}$", method="GET")
    states: list[Any] = []
    name = f"streaming/held-{uuid.uuid4().hex[:6]}"
    flow = threading.Thread(target=lambda: states.append(run("held", name)), daemon=True)
    flow.start()
    try:
        assert stall.reached.wait(120), "the pull of the held layer never started"

        def running() -> bool | None:
            """The conversion of the held layer's batch (its run names every layer of the three) runs."""
            from prefect import get_client
            from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

            with get_client(sync_client=True) as prefect:
                runs = prefect.read_task_runs(
                    task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=held[:19]))
                )
            return (
                any(_converting(r.name) and r.state is not None and r.state.is_running() for r in runs)
                or None
            )

        # Its pull has not a byte yet (the last of its batch's pull) and its conversion runs already: it
        # waits on bytes, not on the task.
        wait_until(running, 60, "the held layer's conversion to run")
        assert not stall.released.is_set()
    finally:
        stall.release()
    flow.join(300)
    [held_state] = states
    assert held_state.is_completed(), held_state.message
    clean_state = run("clean", f"streaming/clean-{uuid.uuid4().hex[:6]}")
    assert clean_state.is_completed(), clean_state.message
    [held_target] = held_state.result().targets
    [clean_target] = clean_state.result().targets
    assert held_target.digest == clean_target.digest  # the same bytes as a conversion of a pulled layer


def test_a_failed_pull_fails_the_conversion_reading_behind_it(prefect_api, fault_proxy, tmp_path):
    from flows.convert_image import convert_image

    source, layers = _source(fault_proxy, tmp_path)
    config = configs.write_config(
        tmp_path / "config.yaml",
        {fault_proxy.host: {}},
        [configs.driver("zstdchunked")],
        work_dir=tmp_path / "w",
    )
    gone = layers[0]
    fault_proxy.fail(f"/blobs/{gone}$", method="GET", status=404, code="BLOB_UNKNOWN", times=100)

    state = convert_image(source=str(source), config=str(config), return_state=True)

    assert state.is_failed()
    assert gone[:19] in (state.message or "") or "BLOB_UNKNOWN" in (state.message or ""), state.message

    def settled() -> dict[str, str] | None:
        """The conversion of the batch holding the failed layer (its run's name lists it) failed."""
        found = _task_states(state.state_details.flow_run_id)
        failed = [
            n for n, s in found.items() if _converting(n) and gone[:19] in n and s in ("FAILED", "CRASHED")
        ]
        return found if failed else None

    wait_until(settled, 60, "the conversion behind the failed pull to fail")
