"""What a run's conversion session does beyond the paths other flow tests take: a conversion answered by
Prefect's task cache whose blob has since left the content store is converted again (in the flow's thread,
with the run's slots and budgets), and the run pushes it."""

from __future__ import annotations

import pytest

from accel.store import ContentStore
from tests.harness import configs, pushing
from tests.harness.api import wait_until

pytestmark = [pytest.mark.registry, pytest.mark.prefect]


def _convert_runs(flow_run_id: object, expected: int) -> list[str]:
    """Names of the flow run's completed convert-layer task runs, once the server has all of them as final
    and at least `expected` (task runs reach the server through its event pipeline, some after the flow
    run has ended)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def final() -> list[str] | None:
        with get_client(sync_client=True) as prefect:
            runs = prefect.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        if not runs or any(r.state is None or not r.state.is_final() for r in runs):
            return None
        names = [r.name for r in runs if r.name.startswith("convert ") and r.state and r.state.is_completed()]
        return names if len(names) >= expected else None

    return wait_until(final, 60, "the task runs' final states")


def test_a_cached_conversion_whose_blob_left_the_store_is_converted_again(prefect_api, registry, tmp_path):
    from flows.convert_image import convert_image

    source_store = ContentStore(tmp_path / "source")
    image, source = pushing.push_standard_image(registry.host, source_store, "session")
    config = configs.write_config(
        tmp_path / "config.yaml", {registry.host: {}}, [configs.driver("estargz")], work_dir=tmp_path / "work"
    )
    [first] = convert_image(source=str(source), config=str(config)).targets
    store = ContentStore(tmp_path / "work" / "content")
    converted = [layer.target_digest for layer in first.layer_sizes]
    for digest in converted:
        store.path(digest).unlink()  # as garbage collection would

    state = convert_image(source=str(source), config=str(config), return_state=True)

    assert state.is_completed(), state.message
    [again] = state.result().targets
    assert [layer.target_digest for layer in again.layer_sizes] == converted  # the same conversion
    assert all(store.exists(digest) for digest in converted)
    # Each layer twice: its run answered by the task cache, then the conversion that refreshed it.
    expected = sorted(f"convert {d.digest[:19]} (estargz)" for d in image.layers for _ in (1, 2))
    runs = _convert_runs(state.state_details.flow_run_id, len(expected))
    assert sorted(runs) == expected
