"""The remote conversion cache in the convert-image flow: warm runs on a fresh machine, failures, races."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from accel import constants as mt
from accel.oci import Manifest
from accel.reference import Reference
from accel.registry import HostConfig, NotFound, RegistryClient
from accel.store import ContentStore
from tests.harness import configs, imagegen, pushing
from tests.harness import nydus as nh
from tests.harness.proof import assert_proven
from tests.harness.taskruns import named_layers

pytestmark = [pytest.mark.registry, pytest.mark.prefect]

CACHE_TAG = "accel-cache"


def write_config(path: Path, registry_host: str, work_dir: Path, drivers: list[str]) -> Path:
    drivers_config = [configs.driver(d) for d in drivers]
    rules = [{"cache_tag": CACHE_TAG}]
    return configs.write_config(path, {registry_host: {}}, drivers_config, rules, work_dir=work_dir)


def _client(host: str) -> RegistryClient:
    return RegistryClient({host: HostConfig()})


def convert_layer_runs(flow_run_id) -> list[str]:
    """Names of the flow run's `convert-layers` task runs (`convert 3 layers: sha256:..., ... (driver)`)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as prefect:
        runs = prefect.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [r.name for r in runs if r.task_key.startswith("convert_layer") or r.name.startswith("convert ")]


@nh.needs_builder
@pytest.mark.nydus
def test_warm_run_on_a_fresh_machine_converts_nothing_and_pushes_the_same_digests(
    prefect_api, registry, source_store, tmp_path
) -> None:
    from flows.convert_image import convert_image

    drivers = ["estargz", "nydus"]
    # nydus-image 2.2.0 orders a file's xattrs randomly; with at most one per file its output is reproducible.
    image = imagegen.standard_image(source_store, big_file_size=256 << 10, single_xattr_files=True)
    source = Reference.parse(f"{registry.host}/cache-flow/warm:v1")
    with _client(registry.host) as client:
        pushing.push(client, source_store, source, image)
        cold_config = write_config(tmp_path / "cold.yaml", registry.host, tmp_path / "cold-work", drivers)
        cold_state = convert_image(source=str(source), config=str(cold_config), return_state=True)
        cold = cold_state.result()
        assert [(t.driver, t.cached_layers, t.layers) for t in cold.targets] == [
            ("estargz", 0, 3),
            ("nydus", 0, 3),
        ]
        assert len(named_layers(convert_layer_runs(cold_state.state_details.flow_run_id))) == 6

        cache_root, raw = client.fetch_manifest(source.with_tag(CACHE_TAG))
        assert cache_root.media_type == mt.OCI_MANIFEST  # single-platform source: a manifest root
        keys = {layer.annotation(mt.ACCEL_CACHE_KEY) for layer in Manifest.parse(raw).layers}
        assert len(keys - {None}) == 2  # one record set per driver

        # Another machine: a new work dir, so neither the content store nor Prefect's task cache can help.
        warm_config = write_config(tmp_path / "warm.yaml", registry.host, tmp_path / "warm-work", drivers)
        warm_state = convert_image(source=str(source), config=str(warm_config), return_state=True)
        warm = warm_state.result()
        assert [(t.driver, t.cached_layers) for t in warm.targets] == [("estargz", 3), ("nydus", 3)]
        assert convert_layer_runs(warm_state.state_details.flow_run_id) == []
        assert [t.digest for t in warm.targets] == [t.digest for t in cold.targets]
        for target in warm.targets:
            assert client.resolve(Reference.parse(target.reference)).digest == target.digest
        assert "cache lookup" in warm.seconds and "cache merge" in warm.seconds


def test_a_failing_cache_push_still_pushes_the_target(
    prefect_api, fault_proxy, source_store, tmp_path
) -> None:
    from flows.convert_image import convert_image

    image = imagegen.standard_image(source_store, big_file_size=64 << 10)
    source = Reference.parse(f"{fault_proxy.host}/cache-flow/failing:v1")
    with _client(fault_proxy.host) as client:
        pushing.push(client, source_store, source, image)
        config = write_config(tmp_path / "c.yaml", fault_proxy.host, tmp_path / "work", ["estargz"])
        fault_proxy.fail(rf"/manifests/{CACHE_TAG}$", status=500, method="PUT", times=100)

        result = convert_image(source=str(source), config=str(config))

        assert fault_proxy.count(rf"/manifests/{CACHE_TAG}$", method="PUT") >= 1
        [target] = result.targets
        assert client.resolve(Reference.parse(target.reference)).digest == target.digest
        with pytest.raises(NotFound):
            client.resolve(source.with_tag(CACHE_TAG))


def test_concurrent_conversions_of_two_tags_both_leave_their_records(
    prefect_api, registry, source_store, tmp_path
) -> None:
    from flows.convert_image import convert_image

    first = imagegen.standard_image(source_store, big_file_size=64 << 10)
    second = imagegen.standard_image(source_store, big_file_size=96 << 10)  # another base layer
    repo = Reference.parse(f"{registry.host}/cache-flow/race:v1")
    config = write_config(tmp_path / "c.yaml", registry.host, tmp_path / "work", ["estargz"])
    with _client(registry.host) as client:
        pushing.push(client, source_store, repo, first)
        pushing.push(client, source_store, repo.with_tag("v2"), second)
        errors: list[BaseException] = []

        def run(tag: str) -> None:
            try:
                convert_image(source=str(repo.with_tag(tag)), config=str(config))
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(tag,)) for tag in ("v1", "v2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors

        _, raw = client.fetch_manifest(repo.with_tag(CACHE_TAG))
        recorded = {layer.annotation(mt.ACCEL_LAYER_SOURCE_DIGEST) for layer in Manifest.parse(raw).layers}
        wanted = {layer.digest for layer in (*first.layers, *second.layers)}
        assert wanted <= recorded


@nh.needs_builder
@pytest.mark.nydus
def test_nydus_cache_hits_bring_the_directory_tables_for_the_merge(
    prefect_api, registry, source_store, tmp_path
) -> None:
    """An upper layer without its parent directories: a warm run merges from cached records alone and must
    restore the lower directories' attributes exactly as the cold run did (same bootstrap, same digest)."""
    from flows.convert_image import convert_image

    image = imagegen.generate_image(imagegen.odd_layers(), source_store)
    source = Reference.parse(f"{registry.host}/cache-flow/odd:v1")
    with _client(registry.host) as client:
        pushing.push(client, source_store, source, image)
        cold_config = write_config(tmp_path / "cold.yaml", registry.host, tmp_path / "cold-work", ["nydus"])
        cold = convert_image(source=str(source), config=str(cold_config))
        warm_config = write_config(tmp_path / "warm.yaml", registry.host, tmp_path / "warm-work", ["nydus"])
        warm = convert_image(source=str(source), config=str(warm_config))
        assert [(t.cached_layers, t.layers) for t in warm.targets] == [(2, 2)]
        assert_proven(client, source, warm.targets[0].reference)  # built from cache records alone
        assert [t.digest for t in warm.targets] == [t.digest for t in cold.targets]

        target = Reference.parse(warm.targets[0].reference)
        _, raw = client.fetch_manifest(target)
        manifest = Manifest.parse(raw)
        store = ContentStore(tmp_path / "fetched")
        for layer in manifest.layers:
            client.fetch_blob(target, layer, store)
        bootstrap = tmp_path / "image.boot"
        nh.bootstrap_of_layer(store.path(manifest.layers[-1].digest), bootstrap)
        (app,) = nh.inspect_dir(bootstrap, "opt", ["app"])
        assert "Permissions:        40750" in app and "UID:                1001" in app
