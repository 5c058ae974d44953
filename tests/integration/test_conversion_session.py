"""What a run's conversion session does beyond the paths other flow tests take: a conversion answered by
Prefect's task cache whose blob has since left the content store is converted again (in the flow's thread,
with the run's slots and budgets), and the run pushes it."""

from __future__ import annotations

import pytest

from accel.store import ContentStore
from tests.harness import configs, pushing
from tests.harness.taskruns import completed_task_runs, named_layers

pytestmark = [pytest.mark.registry, pytest.mark.prefect]


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
    # Each layer twice: in its batch's run answered by the task cache, then in the conversion that refreshed
    # the layers whose blobs were gone (here all of them, in one batch: the same name).
    runs = completed_task_runs(state.state_details.flow_run_id, "convert ", at_least=2)
    assert all(run.endswith(" (estargz)") for run in runs)
    assert sorted(named_layers(runs)) == sorted(d.digest[:19] for d in image.layers for _ in (1, 2))
