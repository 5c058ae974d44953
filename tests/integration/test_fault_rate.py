"""A 20% fault rate (issue 9): 503s, resets and truncated bodies on every kind of request, ten conversions,
every output byte-identical to the fault-free conversion."""

from __future__ import annotations

import uuid

import pytest

from accel.reference import Reference
from accel.registry import HostConfig, RegistryClient
from accel.store import ContentStore
from tests.harness import configs, imagegen, pushing

pytestmark = [pytest.mark.registry, pytest.mark.prefect]

DRIVERS = [configs.driver("estargz", compression_level=1), configs.driver("zstdchunked")]


def _convert(source: Reference, host: str, work: str, tmp_path, target_repository: str) -> dict[str, str]:
    from flows.convert_image import convert_image

    # A fresh work dir each time: nothing reused from an earlier run, every layer pulled and converted.
    config = configs.write_config(tmp_path / f"{work}.yaml", {host: {}}, DRIVERS, work_dir=tmp_path / work)
    result = convert_image(source=str(source), config=str(config), target_repository=target_repository)
    return {t.driver: t.digest for t in result.targets}


def test_ten_conversions_through_a_twenty_percent_fault_rate(prefect_api, registry, fault_proxy, tmp_path):
    store = ContentStore(tmp_path / "source")
    image = imagegen.generate_image(imagegen.standard_layers(256 << 10), store)
    source = Reference.parse(f"{fault_proxy.host}/faults/{uuid.uuid4().hex[:8]}:v1")
    with RegistryClient({fault_proxy.host: HostConfig()}) as client:
        source = source.with_digest(pushing.push(client, store, source, image))

    clean = _convert(source, fault_proxy.host, "clean", tmp_path, f"faults/clean-{uuid.uuid4().hex[:6]}")
    fault_proxy.fail_randomly(0.2, seed=20)
    outputs = [
        _convert(source, fault_proxy.host, f"run{i}", tmp_path, f"faults/run{i}-{uuid.uuid4().hex[:6]}")
        for i in range(10)
    ]
    injected = sum(1 for hit in fault_proxy.hits if hit.injected)
    fault_proxy.fail_randomly(0)
    assert injected > 20  # the faults really happened
    assert outputs == [clean] * 10
