"""bulk-reconvert against a real registry: converts what is missing or stale, then finds nothing to do."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from accel import constants as mt
from accel.oci import Manifest
from accel.reference import Reference
from accel.registry import RegistryClient
from accel.store import ContentStore
from tests.harness import configs, imagegen, pushing

pytestmark = [pytest.mark.registry, pytest.mark.prefect]

SUFFIX = "-esgz"
CACHE_TAG = "esgz-cache"


@pytest.fixture
def config(registry, tmp_path: Path) -> str:
    # The cache image's tag sits among the source tags: it must never count as stale.
    rules = [{"tag_suffix": SUFFIX}, {"cache_tag": CACHE_TAG}]
    fast = configs.driver("estargz", compression_level=1)
    return str(configs.write_config(tmp_path / "config.yaml", {registry.host: {}}, [fast], rules))


def _made_from(client: RegistryClient, ref: Reference) -> str:
    _, raw = client.fetch_manifest(ref)
    return Manifest.parse(raw).annotations[mt.ACCEL_SOURCE_DIGEST]


def test_bulk_converts_missing_then_nothing_then_only_the_new_tag(
    prefect_api, registry, client, config, store: ContentStore
):
    from flows.bulk_reconvert import bulk_reconvert

    repository = f"{registry.host}/bulk/{uuid.uuid4().hex[:10]}"
    base = Reference.parse(f"{repository}:latest")
    images = {
        "v1": imagegen.standard_image(store, big_file_size=1024),
        "v2": imagegen.standard_image(store, big_file_size=1536),
    }
    digests = {tag: pushing.push(client, store, base.with_tag(tag), image) for tag, image in images.items()}

    # Dry run: reports both tags, pinned to their digests, and converts nothing.
    planned = bulk_reconvert(config=config, repositories=[repository], dry_run=True)
    assert planned.repositories == 1 and planned.runs == []
    assert sorted(s.source for s in planned.stale) == [f"{repository}:{t}@{digests[t]}" for t in ("v1", "v2")]
    assert all(s.drivers == ["estargz"] and s.target_repository is None for s in planned.stale)
    assert sorted(r for s in planned.stale for r in s.reasons) == [
        f"estargz: v1{SUFFIX} missing",
        f"estargz: v2{SUFFIX} missing",
    ]
    assert sorted(client.list_tags(base)) == ["v1", "v2"]
    # The run's artifact lists each stale image, pinned, and why.
    markdown = _latest_bulk_artifact()
    assert markdown.startswith("# dry run: nothing converted")
    for tag in ("v1", "v2"):
        assert (
            f"| `{repository}:{tag}@{digests[tag]}` | estargz | estargz: {tag}{SUFFIX} missing |" in markdown
        )

    first = bulk_reconvert(config=config, repositories=[repository], use_deployment=False)
    assert sorted(first.runs) == [f"{repository}:v1{SUFFIX}", f"{repository}:v2{SUFFIX}"]
    for tag, digest in digests.items():
        assert _made_from(client, base.with_tag(f"{tag}{SUFFIX}")) == digest
    assert CACHE_TAG in client.list_tags(base)  # the conversions wrote their cache image

    again = bulk_reconvert(config=config, repositories=[repository], use_deployment=False)
    assert again.stale == [] and again.runs == []

    # A new tag, and v1 moved to another image: exactly those two are converted, v2 is left alone.
    images["v3"] = imagegen.standard_image(store, big_file_size=2048)
    digests["v3"] = pushing.push(client, store, base.with_tag("v3"), images["v3"])
    old_v1 = digests["v1"]
    v2_target = client.resolve(base.with_tag(f"v2{SUFFIX}")).digest
    digests["v1"] = pushing.push(client, store, base.with_tag("v1"), images["v3"])
    assert digests["v1"] != old_v1

    third = bulk_reconvert(config=config, repositories=[repository], use_deployment=False)
    reasons = {Reference.parse(s.source).tag: s.reasons for s in third.stale}
    assert reasons == {
        "v1": [f"estargz: {repository}:v1{SUFFIX} was made from {old_v1}, source is now {digests['v1']}"],
        "v3": [f"estargz: v3{SUFFIX} missing"],
    }
    assert sorted(third.runs) == [f"{repository}:v1{SUFFIX}", f"{repository}:v3{SUFFIX}"]
    assert _made_from(client, base.with_tag(f"v1{SUFFIX}")) == digests["v1"]
    assert _made_from(client, base.with_tag(f"v3{SUFFIX}")) == digests["v3"]
    assert client.resolve(base.with_tag(f"v2{SUFFIX}")).digest == v2_target

    final = bulk_reconvert(config=config, repositories=[repository], dry_run=True)
    assert final.stale == []


def test_bulk_without_a_deployment_falls_back_to_subflows(
    prefect_api, registry, client, config, store: ContentStore
):
    """The default asks for the `convert-image` deployment; when none is registered, it converts in-run."""
    from flows.bulk_reconvert import bulk_reconvert

    repository = f"{registry.host}/bulk/{uuid.uuid4().hex[:10]}"
    base = Reference.parse(f"{repository}:latest")
    digest = pushing.push(
        client, store, base.with_tag("v1"), imagegen.standard_image(store, big_file_size=1024)
    )

    result = bulk_reconvert(config=config, repositories=[repository])

    assert result.runs == [f"{repository}:v1{SUFFIX}"]
    assert _made_from(client, base.with_tag(f"v1{SUFFIX}")) == digest


def _latest_bulk_artifact() -> str:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from flows.bulk_reconvert import ARTIFACT_KEY

    with get_client(sync_client=True) as prefect:
        [artifact] = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[ARTIFACT_KEY])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    return str(artifact.data)


def test_a_failed_child_run_fails_the_bulk_run_and_shows_in_its_artifact(
    prefect_api, registry, client, config, store: ContentStore, monkeypatch
):
    """Children are real Prefect runs (only starting them from a deployment is stood in for): the bulk run
    waits for them and ends FAILED, naming the image whose conversion failed."""
    from prefect import get_client
    from prefect.states import Failed

    import flows.bulk_reconvert as bulk
    from flows.convert_image import convert_image

    repository = f"{registry.host}/bulk/{uuid.uuid4().hex[:10]}"
    base = Reference.parse(f"{repository}:latest")
    digest = pushing.push(
        client, store, base.with_tag("v1"), imagegen.standard_image(store, big_file_size=1024)
    )
    started = []

    def run_deployment(name, parameters, **options):
        assert name == "convert-image/convert-image" and "config" not in parameters
        with get_client(sync_client=True) as prefect:
            run = prefect.create_flow_run(
                convert_image, parameters=parameters, state=Failed(message="registry said no")
            )
        started.append(run)
        return run

    monkeypatch.setattr(bulk, "run_deployment", run_deployment)
    state = bulk.bulk_reconvert(config=config, repositories=[repository], return_state=True)

    assert state.is_failed()
    assert state.message == f"1 of 1 conversion(s) did not complete: {repository}:v1@{digest}"
    failure = state.result(raise_on_failure=False)
    assert isinstance(failure, bulk.BulkIncomplete) and str(failure) == state.message
    assert [image.source for image in failure.result.stale] == [f"{repository}:v1@{digest}"]
    [child] = started
    markdown = _latest_bulk_artifact()
    assert (
        f"| `{repository}:v1@{digest}` | estargz | estargz: v1{SUFFIX} missing | {child.id} | Failed |"
        in markdown
    )


def test_other_configs_outputs_are_never_stale_and_the_summary_counts_what_happened(
    prefect_api, registry, client, config, store: ContentStore, tmp_path
):
    """Three stale sources beside the outputs of two other configs (their suffixed tags and cache tags):
    exactly the three are converted, every other tag is reported as accel's output, and the artifact and
    the result count what was really converted (issue 23)."""
    from flows.bulk_reconvert import bulk_reconvert
    from flows.convert_image import convert_image

    repository = f"{registry.host}/bulk/{uuid.uuid4().hex[:10]}"
    base = Reference.parse(f"{repository}:latest")
    sizes = {"v1": 1024, "v2": 1536, "v3": 2048}
    digests = {
        tag: pushing.push(
            client, store, base.with_tag(tag), imagegen.standard_image(store, big_file_size=size)
        )
        for tag, size in sizes.items()
    }
    others = {
        "other-a": ([configs.driver("zstdchunked")], [{"tag_suffix": "-zz"}, {"cache_tag": "zz-cache"}]),
        "other-b": ([configs.driver("estargz", compression_level=1)], [{"tag_suffix": "-lazy"}]),
    }
    for name, (drivers, rules) in others.items():
        other = configs.write_config(tmp_path / name / "config.yaml", {registry.host: {}}, drivers, rules)
        convert_image(source=str(base.with_tag("v1")), config=str(other))
    walked = set(client.list_tags(base))
    assert {"v1-zz", "zz-cache", "v1-lazy"} <= walked

    result = bulk_reconvert(config=config, repositories=[repository], use_deployment=False)

    assert sorted(s.source for s in result.stale) == [f"{repository}:{t}@{d}" for t, d in digests.items()]
    by_tag = {Reference.parse(o.source).tag: o for o in result.outcomes}
    assert {t for t, o in by_tag.items() if o.outcome == "converted"} == {"v1", "v2", "v3"}
    assert {t for t, o in by_tag.items() if o.outcome == "accel output"} == walked - {"v1", "v2", "v3"}
    assert "converted image" in by_tag["v1-zz"].detail and "cache" in by_tag["zz-cache"].detail
    outputs = len(walked) - 3
    assert result.summary() == (
        f"3 converted, 0 skipped, 0 failed of 3 stale image(s); 0 up to date, {outputs} accel output(s)"
    )
    assert _latest_bulk_artifact().startswith(f"# {result.summary()}")
    again = bulk_reconvert(config=config, repositories=[repository], use_deployment=False)
    assert again.stale == [] and again.count("up to date") == 3
