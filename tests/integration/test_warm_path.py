"""Issue 25's warm path: a conversion the remote cache answers entirely costs a manifest fetch, a cache fetch,
mounts and a manifest push — what each driver's warm run asks of the registry and of Prefect."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from accel.oci import Manifest
from accel.reference import Reference
from accel.registry import HostConfig, RegistryClient
from tests.harness import configs, imagegen, pushing
from tests.harness import nydus as nh
from tests.harness.proof import assert_proven
from tests.harness.registry import FaultProxy
from tests.harness.taskruns import completed_task_runs

pytestmark = [pytest.mark.registry, pytest.mark.prefect]

CACHE_TAG = "accel-cache"
DRIVERS = ["estargz", "zstdchunked", "nydus"]


def _config(path: Path, host: str) -> Path:
    drivers = [configs.driver(d) for d in DRIVERS]
    return configs.write_config(
        path, {host: {}}, drivers, [{"cache_tag": CACHE_TAG}], work_dir=path.parent / "work"
    )


def _requests(proxy: FaultProxy) -> list[tuple[str, str]]:
    return [(h.method, h.path) for h in proxy.hits]


@nh.needs_builder
@pytest.mark.nydus
def test_a_warm_conversion_pulls_converts_and_rechecks_nothing(
    prefect_api, fault_proxy, source_store, tmp_path
) -> None:
    from flows.convert_image import convert_image

    # nydus-image 2.2.0 orders a file's xattrs randomly; with at most one per file its output is reproducible.
    image = imagegen.standard_image(source_store, big_file_size=256 << 10, single_xattr_files=True)
    repo = f"warm-path/{uuid.uuid4().hex[:8]}"
    source = Reference.parse(f"{fault_proxy.host}/{repo}:v1")
    with RegistryClient({fault_proxy.host: HostConfig()}) as client:
        pushing.push(client, source_store, source, image)
        convert_image(source=str(source), config=str(_config(tmp_path / "cold" / "c.yaml", fault_proxy.host)))

        # Another machine (no content store, no task cache), into a repository that holds nothing yet.
        fault_proxy.hits.clear()
        state = convert_image(
            source=str(source),
            config=str(_config(tmp_path / "warm" / "c.yaml", fault_proxy.host)),
            target_repository=f"{repo}-fresh",
            return_state=True,
        )
        warm = state.result()
        requests = _requests(fault_proxy)

        assert [(t.driver, t.cached_layers, t.layers) for t in warm.targets] == [(d, 3, 3) for d in DRIVERS]
        runs = completed_task_runs(state.state_details.flow_run_id, at_least=6)
        kinds = sorted(name.split(" ")[0] for name in runs)
        # Nothing pulled, converted or uploaded layer by layer: only the steps a warm run needs (build and
        # garbage collection run in the flow run itself, not as task runs).
        assert kinds == sorted(["resolve", "lookup", "merge", *["push"] * 3])

        source_layers = {layer.digest for layer in image.layers}
        assert not [r for r in requests if any(d in r[1] for d in source_layers)]  # no layer pulled
        hit_blobs = {layer.target_digest for t in warm.targets for layer in t.layer_sizes}
        fresh = f"/v2/{repo}-fresh/"
        # Each hit is mounted into the fresh repository once, and neither checked before nor after.
        assert not [
            r
            for r in requests
            if r[0] == "HEAD" and r[1].startswith(fresh) and r[1].split("/")[-1] in hit_blobs
        ]
        mounts = [r for r in requests if r[0] == "POST" and r[1] == f"{fresh}blobs/uploads/"]
        assert len(mounts) >= len(hit_blobs)
        # The cache is read once by the lookup and once by the merge, which finds it unchanged: no push.
        cache_repo = f"/v2/{repo}/"
        cache_requests = [r for r in requests if r[1] == f"{cache_repo}manifests/{CACHE_TAG}"]
        assert cache_requests == [("GET", f"{cache_repo}manifests/{CACHE_TAG}")] * 2
        assert not [r for r in requests if r[1].startswith(cache_repo) and r[0] in ("HEAD", "PUT", "POST")]

        # zstd:chunked's warm target, assembled from records alone, is a proven conversion of its source.
        [zstd] = [t for t in warm.targets if t.driver == "zstdchunked"]
        _, raw = client.fetch_manifest(Reference.parse(zstd.reference))
        assert {layer.digest for layer in Manifest.parse(raw).layers} == {
            layer.target_digest for layer in zstd.layer_sizes
        }
        assert_proven(client, source, zstd.reference)
