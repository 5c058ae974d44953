"""The vertical slice: registry → convert-image flow → registry, judged by the formats' reference readers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from accel import constants as mt
from accel.compression import open_uncompressed
from accel.errors import InvalidImage
from accel.oci import Descriptor, ImageConfig, Index, Manifest
from accel.reference import Reference
from accel.referrers import referrers_tag
from accel.registry import RegistryClient
from accel.store import ContentStore
from tests.harness import configs, conformance, imagegen, pushing
from tests.harness.proof import assert_proven

pytestmark = [pytest.mark.registry, pytest.mark.prefect, pytest.mark.conformance]

REPO = Path(__file__).resolve().parents[2]
DRIVERS = ["estargz", "zstdchunked"]


@pytest.fixture(scope="module")
def config(registry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("flow")
    # Small chunks so the 5 MiB file spans several chunks in both formats.
    return configs.write_config(
        tmp / "config.yaml",
        {registry.host: {}},
        [configs.driver("estargz", chunk_size=1 << 20, compression_level=6), configs.driver("zstdchunked")],
    )


def _source_layer_tree(store: ContentStore, layer: Descriptor, diff_id: str) -> list[dict]:
    with open_uncompressed(store.path(layer.digest), layer.media_type, diff_id) as tar:
        return conformance.tar_tree(tar)


def _check_converted_manifest(
    client: RegistryClient,
    target: Reference,
    manifest_desc: Descriptor,
    source: imagegen.BuiltImage,
    source_store: ContentStore,
    driver: str,
    tmp: Path,
) -> None:
    _, raw = client.fetch_manifest(target.with_digest(manifest_desc.digest))
    manifest = Manifest.parse(raw)
    assert manifest.media_type == mt.OCI_MANIFEST
    assert manifest.annotations[mt.ACCEL_SOURCE_DIGEST] == source.manifest.digest
    assert manifest.annotations[mt.HARBOR_DRIVER_NAME] == driver
    assert manifest.subject is not None and manifest.subject.digest == source.manifest.digest
    config = ImageConfig.parse(client.fetch_blob_bytes(target, manifest.config))
    assert manifest.config.media_type == mt.OCI_CONFIG
    assert len(manifest.layers) == len(source.layers) == len(config.diff_ids)
    assert config.doc["history"] == json.loads(source.config_raw)["history"]
    assert config.platform == ImageConfig.parse(source.config_raw).platform
    store = ContentStore(tmp / "fetched")
    for layer, diff_id, src_layer, src_diff_id in zip(
        manifest.layers, config.diff_ids, source.layers, source.diff_ids, strict=True
    ):
        blob = client.fetch_blob(target, layer, store)  # digest-verified download
        want_tree = _source_layer_tree(source_store, src_layer, src_diff_id)
        if driver == "estargz":
            assert layer.media_type == mt.OCI_LAYER_GZIP
            verdict = conformance.check_estargz(
                blob,
                layer.annotation(mt.ESTARGZ_TOC_DIGEST),
                int(layer.annotation(mt.ESTARGZ_UNCOMPRESSED_SIZE)),
            )
        else:
            assert layer.media_type == mt.OCI_LAYER_ZSTD
            assert diff_id == src_diff_id  # zstd:chunked decompresses to the source tar, byte for byte
            verdict = conformance.check_zstd_chunked(blob, layer.annotations or {}, diff_id)
        assert verdict.ok, f"{driver} layer {layer.digest}: reference reader said: {verdict.error}"
        assert verdict.tree == want_tree
        # The config's diff_id is the digest of the converted layer's uncompressed stream.
        with open_uncompressed(blob, layer.media_type, diff_id) as f:
            while f.read(1 << 20):
                pass


def test_index_converts_to_index_per_driver(prefect_api, registry, client, config, source_store, tmp_path):
    from flows.convert_image import convert_image

    index = imagegen.standard_index(source_store)
    source = Reference.parse(f"{registry.host}/slice/multi:v1")
    pushing.push(client, source_store, source, index)

    result = convert_image(source=str(source), config=str(config))

    assert result.source_digest == index.digest
    for proven in result.targets:
        assert_proven(client, source, proven.reference)
    assert [t.driver for t in result.targets] == DRIVERS
    for target_result in result.targets:
        target = Reference.parse(target_result.reference)
        assert target.tag == f"v1-{target_result.driver}"
        root, raw = client.fetch_manifest(target)
        assert root.digest == target_result.digest
        converted_index = Index.parse(raw)
        assert converted_index.media_type == mt.OCI_INDEX
        platforms = [str(m.platform) for m in converted_index.manifests]
        assert platforms == [str(i.platform) for i in index.images] == ["linux/amd64", "linux/arm64"]
        for child, source_image in zip(converted_index.manifests, index.images, strict=True):
            _check_converted_manifest(
                client, target, child, source_image, source_store, target_result.driver, tmp_path
            )
            # distribution 2.8 has no referrers API: the children are listed in the tag-schema index.
            assert child.digest in _referrers_by_tag(client, source, source_image.manifest.digest)
    # Both converted indexes are referrers of the source index.
    listed = _referrers_by_tag(client, source, index.digest)
    assert sorted(listed) == sorted(t.digest for t in result.targets)
    assert {d.artifact_type for d in listed.values()} == {None}


def _referrers_by_tag(client: RegistryClient, repo: Reference, subject: str) -> dict[str, Descriptor]:
    assert client.referrers(repo, subject) is None  # no referrers API on distribution 2.8
    _, raw = client.fetch_manifest(repo.with_tag(referrers_tag(subject)))
    return {d.digest: d for d in Index.parse(raw).manifests}


def test_skips_own_outputs_cache_tags_and_accelerated_images(
    prefect_api, registry, client, config, source_store
):
    from flows.convert_image import convert_image

    image = imagegen.standard_image(source_store, big_file_size=1024)
    source = Reference.parse(f"{registry.host}/slice/skips:v1")
    pushing.push(client, source_store, source, image)
    first = convert_image(source=str(source), config=str(config))

    own = convert_image(source=first.targets[0].reference, config=str(config))
    assert own.targets == [] and own.skipped == "the image was produced by accel (estargz)"

    # The same eStargz layers under a manifest accel did not write: detected by layer annotations.
    target = Reference.parse(first.targets[0].reference)
    _, raw = client.fetch_manifest(target)
    foreign = json.loads(raw)
    del foreign["annotations"], foreign["subject"]
    foreign_ref = source.with_tag("foreign-esgz")
    client.push_manifest(foreign_ref, json.dumps(foreign).encode(), mt.OCI_MANIFEST)
    accelerated = convert_image(source=str(foreign_ref), config=str(config))
    assert accelerated.skipped == "the image already is estargz (layer annotations)"

    settings = yaml.safe_load(config.read_text())
    settings["converter"]["rules"] = [{"cache_tag": "accel-cache"}]
    cache_config = config.parent / "with-cache-tag.yaml"
    cache_config.write_text(yaml.safe_dump(settings))
    cache = convert_image(source=str(source.with_tag("accel-cache")), config=str(cache_config))
    assert cache.skipped == "tag 'accel-cache' is a conversion cache tag"


def test_docker_manifest_converts_to_single_oci_manifest_and_reruns_identically(
    prefect_api, registry, client, config, source_store, tmp_path
):
    from flows.convert_image import convert_image

    image = imagegen.standard_image(source_store, media="docker")
    source = Reference.parse(f"{registry.host}/slice/single:v2")
    pushing.push(client, source_store, source, image)

    first = convert_image(source=str(source), config=str(config))
    for target_result in first.targets:
        target = Reference.parse(target_result.reference)
        desc, _ = client.fetch_manifest(target)
        assert desc.media_type == mt.OCI_MANIFEST
        _check_converted_manifest(client, target, desc, image, source_store, target_result.driver, tmp_path)

    again = convert_image(source=str(source), config=str(config))
    assert [t.digest for t in again.targets] == [t.digest for t in first.targets]
    for proven in again.targets:
        assert_proven(client, source, proven.reference)

    # The run's artifact, keyed per image: every target and every layer's full digests and sizes.
    key = f"conversion-slice-single-{again.source_digest.removeprefix('sha256:')[:12]}"
    markdown = str(_latest_artifact(key=key).data)
    for t in again.targets:
        assert f"`{t.reference}` | `{t.digest}` |" in markdown
        assert [la.source_digest for la in t.layer_sizes] == [d.digest for d in image.layers]
        for la in t.layer_sizes:
            assert f"| `{la.source_digest}` | {la.source_size:,} | `{la.target_digest}` |" in markdown
    # Its JSON twin is the result itself, as acceld reads it.
    from flows.convert_image import RESULT_ARTIFACT_TYPE
    from service.api.prefect_backend import parse_result

    assert parse_result(_latest_artifact(kind=RESULT_ARTIFACT_TYPE).data) == again


def _latest_artifact(key: str | None = None, kind: str | None = None):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, ArtifactFilterType
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]) if key else None,
                type=ArtifactFilterType(any_=[kind]) if kind else None,
            ),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    return artifact


def test_bad_image_fails_with_the_cause(prefect_api, registry, client, config, source_store):
    from flows.convert_image import convert_image

    image = imagegen.standard_image(source_store, big_file_size=1024)
    broken_config = json.loads(image.config_raw)
    broken_config["rootfs"]["diff_ids"] = broken_config["rootfs"]["diff_ids"][:-1]
    raw_config = json.dumps(broken_config).encode()
    config_desc = Descriptor.of(mt.OCI_CONFIG, raw_config)
    source_store.put_bytes(raw_config)
    manifest = json.loads(image.manifest_raw)
    manifest["config"] = config_desc.to_dict()
    raw_manifest = json.dumps(manifest).encode()
    source = Reference.parse(f"{registry.host}/slice/broken:v1")
    for layer in image.layers:
        client.push_blob(source, layer, source_store)
    client.push_blob(source, config_desc, source_store)
    client.push_manifest(source, raw_manifest, mt.OCI_MANIFEST)

    state = convert_image(source=str(source), config=str(config), return_state=True)
    assert state.is_failed()
    with pytest.raises(InvalidImage, match="3 layers but its config lists 2 diff_ids"):
        state.result()


def test_accelctl_convert_one_time_mode(prefect_api, registry, client, config, source_store):
    image = imagegen.standard_image(source_store, big_file_size=1024)
    source = Reference.parse(f"{registry.host}/slice/cli:v1")
    pushing.push(client, source_store, source, image)
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    cmd = [sys.executable, "-m", "service.accelctl", "convert", "--config", str(config)]

    ok = subprocess.run(
        [*cmd, "-v", str(source)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert ok.returncode == 0, ok.stderr
    for layer in image.layers:  # -v: the run's logs, each layer's conversion (in its batch) ended per driver
        for d in DRIVERS:
            finished = rf"Task run 'convert [^']*{layer.digest[:19]}[^']* \({d}\)' - Finished in state"
            assert re.search(finished, ok.stderr), ok.stderr
    lines = [line.split("\t") for line in ok.stdout.splitlines()]
    assert [(d, ref) for d, ref, _ in lines] == [(d, f"{source.name}:v1-{d}") for d in DRIVERS]
    for _, ref, digest in lines:
        assert client.resolve(Reference.parse(ref)).digest == digest

    missing = subprocess.run(
        [*cmd, f"{registry.host}/slice/nope:v1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 4  # ExitCode.NOT_FOUND, in one line
    assert "slice/nope:v1" in missing.stderr and "failed" in missing.stderr
    assert len(missing.stderr.splitlines()) == 1 and "Traceback" not in missing.stderr
