"""Rules in real conversions: target repository mapping, digest-only sources, several drivers at once."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from accel import constants as mt
from accel.oci import Manifest
from accel.reference import Reference
from accel.registry import RegistryClient
from tests.harness import configs, imagegen, pushing

pytestmark = [pytest.mark.registry, pytest.mark.prefect]

FAST_ESTARGZ = {"type": "estargz", "config": {"compression_level": 1}}


def write_config(path: Path, host: str, drivers: list[dict[str, Any]], rules: list[dict[str, Any]]) -> str:
    return str(configs.write_config(path, {host: {}}, drivers, rules))


def _manifest(client: RegistryClient, ref: Reference) -> Manifest:
    _, raw = client.fetch_manifest(ref)
    return Manifest.parse(raw)


def test_rule_target_maps_to_another_repository_and_mounts_blobs(
    prefect_api, registry, fault_proxy, client, source_store, tmp_path
):
    from flows.convert_image import convert_image

    repo = f"rules/{uuid.uuid4().hex[:10]}"
    image = imagegen.standard_image(source_store, big_file_size=1024)
    pushing.push(client, source_store, Reference.parse(f"{registry.host}/{repo}:v1"), image)
    # accel talks to the registry through the proxy, which records every request it forwards.
    source = f"{fault_proxy.host}/{repo}:v1"
    in_place = write_config(tmp_path / "in-place.yaml", fault_proxy.host, [FAST_ESTARGZ], [])
    mapped = write_config(
        tmp_path / "mapped.yaml",
        fault_proxy.host,
        [FAST_ESTARGZ],
        [{"repository": f"{fault_proxy.host}/rules/*", "target": "{repository}-lazy"}],
    )

    beside = convert_image(source=source, config=in_place)
    [beside_target] = beside.targets
    assert beside_target.reference == f"{fault_proxy.host}/{repo}:v1-estargz"
    source_tags = set(client.list_tags(Reference.parse(f"{registry.host}/{repo}:v1")))
    assert "v1-estargz" in source_tags

    fault_proxy.clear()
    # No target parameter: the flow follows the rule, as accelctl and a run started from the UI do.
    result = convert_image(source=source, config=mapped)

    [target] = result.targets
    lazy = f"{repo}-lazy"
    assert target.reference == f"{fault_proxy.host}/{lazy}:v1-estargz"
    # The run records the plan it resolved, so readers (acceld's task list) show what actually ran.
    assert result.plan is not None
    assert result.plan.drivers == ["estargz"]
    assert result.plan.targets == {"estargz": target.reference}
    lazy_ref = Reference.parse(f"{registry.host}/{lazy}:v1-estargz")
    assert client.resolve(lazy_ref).digest == target.digest
    manifest = _manifest(client, lazy_ref)
    assert manifest.annotations[mt.ACCEL_SOURCE_DIGEST] == image.manifest.digest
    assert all(layer.media_type == mt.OCI_LAYER_GZIP for layer in manifest.layers)
    assert "v1-estargz" in client.list_tags(lazy_ref)
    # Nothing new beside the source: the mapped run pushed no tag there.
    assert set(client.list_tags(Reference.parse(f"{registry.host}/{repo}:v1"))) == source_tags

    # The same converted blobs already sit in the source repository (from the first run): the registry
    # linked every one of them into the target repository (201 on POST ?mount=&from=), none was uploaded.
    blobs = [manifest.config, *manifest.layers]
    assert all(client.blob_exists(lazy_ref, b.digest) for b in blobs)
    uploads = rf"^/v2/{lazy}/blobs/uploads/"
    mounts = [h for h in fault_proxy.hits if h.method == "POST" and re.match(uploads, h.path)]
    assert [h.status for h in mounts] == [201] * len(blobs)
    assert fault_proxy.count(uploads, method="PATCH") == 0
    assert fault_proxy.count(uploads, method="PUT") == 0


def test_digest_only_source_gets_a_tag_named_from_the_digest(
    prefect_api, registry, client, source_store, tmp_path
):
    from flows.convert_image import convert_image

    repo = f"rules/{uuid.uuid4().hex[:10]}"
    image = imagegen.standard_image(source_store, big_file_size=2048)
    source = Reference.parse(f"{registry.host}/{repo}@{image.digest}")
    pushing.push(client, source_store, source, image)  # by digest: the repository has no tag at all
    config = write_config(tmp_path / "config.yaml", registry.host, [FAST_ESTARGZ], [{"tag_suffix": "-esgz"}])

    result = convert_image(source=str(source), config=config)

    assert result.source_digest == image.digest
    [target] = result.targets
    hex_digest = image.digest.removeprefix("sha256:")
    expected_tag = f"sha256-{hex_digest}-esgz"
    assert target.reference == f"{registry.host}/{repo}:{expected_tag}"
    tags = client.list_tags(source)
    assert expected_tag in tags
    assert "latest" not in tags and not any(t.startswith("latest") for t in tags)
    target_ref = Reference.parse(target.reference)
    assert client.resolve(target_ref).digest == target.digest
    manifest = _manifest(client, target_ref)
    assert manifest.annotations[mt.ACCEL_SOURCE_DIGEST] == image.digest
    assert manifest.subject is not None and manifest.subject.digest == image.digest


def test_several_drivers_give_one_target_each_with_its_suffix(
    prefect_api, registry, client, source_store, tmp_path
):
    from flows.convert_image import convert_image

    repo = f"rules/{uuid.uuid4().hex[:10]}"
    only_zstd_repo = f"zstd-only/{uuid.uuid4().hex[:10]}"
    image = imagegen.standard_image(source_store, big_file_size=1024)
    for name in (repo, only_zstd_repo):
        pushing.push(client, source_store, Reference.parse(f"{registry.host}/{name}:v1"), image)
    config = write_config(
        tmp_path / "config.yaml",
        registry.host,
        [{**FAST_ESTARGZ, "tag_suffix": "-esgz"}, {"type": "zstdchunked", "tag_suffix": "-zst"}],
        [{"repository": f"{registry.host}/zstd-only/*", "drivers": ["zstdchunked"]}],
    )

    result = convert_image(source=f"{registry.host}/{repo}:v1", config=config)

    layer_types = {"estargz": mt.OCI_LAYER_GZIP, "zstdchunked": mt.OCI_LAYER_ZSTD}
    by_driver = {t.driver: t for t in result.targets}
    assert {d: t.reference for d, t in by_driver.items()} == {
        "estargz": f"{registry.host}/{repo}:v1-esgz",
        "zstdchunked": f"{registry.host}/{repo}:v1-zst",
    }
    assert len({t.digest for t in result.targets}) == 2
    for driver, t in by_driver.items():
        ref = Reference.parse(t.reference)
        assert client.resolve(ref).digest == t.digest
        manifest = _manifest(client, ref)
        assert manifest.annotations[mt.HARBOR_DRIVER_NAME] == driver
        assert {layer.media_type for layer in manifest.layers} == {layer_types[driver]}
    tags = set(client.list_tags(Reference.parse(f"{registry.host}/{repo}:v1")))
    assert {"v1", "v1-esgz", "v1-zst"} <= tags

    # A rule naming one driver narrows a matching repository to that driver.
    narrowed = convert_image(source=f"{registry.host}/{only_zstd_repo}:v1", config=config)
    assert [(t.driver, t.reference) for t in narrowed.targets] == [
        ("zstdchunked", f"{registry.host}/{only_zstd_repo}:v1-zst")
    ]
    assert "v1-esgz" not in client.list_tags(Reference.parse(f"{registry.host}/{only_zstd_repo}:v1"))
    assert narrowed.targets[0].layers == len(image.layers)
