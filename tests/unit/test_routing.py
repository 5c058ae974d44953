"""Rules: tag suffixes, per-repository drivers and target repositories, digest-named targets — in the
config, in target naming and in what acceld submits for a webhook event."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from accel.config import Route, Settings, load_settings
from accel.errors import ConfigError
from accel.plan import is_converted_tag, target_reference, target_tag
from accel.reference import Reference
from service.api import create_app
from tests.harness.api import FakeBackend, harbor

# Webhooks without auth must be allowed explicitly (acceld is secure by default).
OPEN = {"webhook": {"allow_unauthenticated": True}}
HARBOR = "harbor.test:8443"
OTHER = "open.test"
DIGEST = "sha256:" + "ab" * 32
HEX = "ab" * 32
LIBRARY_RULE = {
    "repository": f"{HARBOR}/library/*",
    "drivers": ["zstdchunked"],
    "target": "{repository}-lazy",
}


def _settings(tmp_path, converter: dict[str, Any]) -> Settings:
    return load_settings(
        {
            "provider": {
                "source": {HARBOR: OPEN, OTHER: OPEN},
                "work_dir": str(tmp_path / "work"),
            },
            "converter": converter,
        }
    )


def _two_drivers(*rules: dict[str, Any]) -> dict[str, Any]:
    return {
        "drivers": [{"type": "estargz", "tag_suffix": "-esgz"}, {"type": "zstdchunked"}],
        "rules": list(rules),
    }


def _config_error(tmp_path, converter: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as exc:
        _settings(tmp_path, converter)
    return str(exc.value)


# --- config ---------------------------------------------------------------------------------------------


def test_single_driver_takes_the_rule_tag_suffix(tmp_path):
    converter = _settings(
        tmp_path, {"driver": {"type": "estargz"}, "rules": [{"tag_suffix": "-lazy"}]}
    ).converter
    suffix = converter.suffix_for(converter.find_driver("estargz"))
    assert suffix == "-lazy"
    source = Reference.parse(f"{HARBOR}/library/app:v1")
    assert str(target_reference(source, suffix)) == f"{HARBOR}/library/app:v1-lazy"


def test_without_any_suffix_the_driver_type_is_the_suffix(tmp_path):
    converter = _settings(tmp_path, {"driver": {"type": "zstdchunked"}}).converter
    assert converter.suffix_for(converter.find_driver("zstdchunked")) == "-zstdchunked"


def test_repository_rule_picks_drivers_and_target_repository(tmp_path):
    converter = _settings(tmp_path, _two_drivers(LIBRARY_RULE)).converter

    route = converter.route(HARBOR, "library/app")
    assert route == Route(drivers=["zstdchunked"], target_repository="library/app-lazy")
    # `*` spans path components, as the glob is over `host/repository`.
    assert converter.route(HARBOR, "library/team/app").target_repository == "library/team/app-lazy"
    # Another project, or the same path on another registry: every driver, beside the source.
    assert converter.route(HARBOR, "other/app") == Route()
    assert converter.route(OTHER, "library/app") == Route()

    source = Reference.parse(f"{HARBOR}/library/app:v1")
    suffix = converter.suffix_for(converter.find_driver("zstdchunked"))
    target = target_reference(source, suffix, route.target_repository)
    assert str(target) == f"{HARBOR}/library/app-lazy:v1-zstdchunked"


def test_first_deciding_rule_wins_and_suffix_only_rules_do_not_route(tmp_path):
    converter = _settings(
        tmp_path,
        _two_drivers(
            {"tag_suffix": "-ignored", "cache_tag": "lazy-cache"},  # decides no route
            {"repository": f"{HARBOR}/library/app", "target": "mirror/app"},
            LIBRARY_RULE,
        ),
    ).converter
    assert converter.route(HARBOR, "library/app") == Route(drivers=None, target_repository="mirror/app")
    assert converter.route(HARBOR, "library/web") == Route(
        drivers=["zstdchunked"], target_repository="library/web-lazy"
    )
    assert converter.cache_tags() == {"lazy-cache"}


def test_multi_driver_suffixes_are_distinct(tmp_path):
    converter = _settings(tmp_path, _two_drivers({"tag_suffix": "-lazy"})).converter
    # A rule's tag_suffix cannot serve two drivers: each keeps its own.
    suffixes = {d.type: converter.suffix_for(d) for d in converter.all_drivers()}
    assert suffixes == {"estargz": "-esgz", "zstdchunked": "-zstdchunked"}
    source = Reference.parse(f"{OTHER}/a/b:v2")
    assert sorted(target_tag(source, s) for s in suffixes.values()) == ["v2-esgz", "v2-zstdchunked"]


def test_colliding_suffixes_are_config_errors(tmp_path):
    message = _config_error(
        tmp_path,
        {
            "drivers": [
                {"type": "estargz", "tag_suffix": "-lazy"},
                {"type": "zstdchunked", "tag_suffix": "-lazy"},
            ]
        },
    )
    assert "distinct tag suffixes" in message and "-lazy, -lazy" in message
    # An explicit suffix equal to another driver's default collides as well.
    message = _config_error(
        tmp_path,
        {"drivers": [{"type": "estargz", "tag_suffix": "-zstdchunked"}, {"type": "zstdchunked"}]},
    )
    assert "distinct tag suffixes" in message


def test_a_driver_type_configured_twice_is_a_config_error(tmp_path):
    message = _config_error(
        tmp_path,
        {
            "driver": {"type": "estargz"},
            "drivers": [{"type": "estargz", "tag_suffix": "-fast", "config": {"compression_level": 1}}],
        },
    )
    assert "each driver type may be configured once" in message


def test_driver_tag_suffix_must_be_usable_in_a_tag(tmp_path):
    message = _config_error(tmp_path, {"drivers": [{"type": "estargz", "tag_suffix": "/lazy"}]})
    assert "converter.drivers.0.tag_suffix" in message and "not usable in a tag" in message


def test_rules_naming_unconfigured_drivers_are_config_errors(tmp_path):
    message = _config_error(
        tmp_path,
        {
            "driver": {"type": "estargz"},
            "rules": [{"repository": f"{HARBOR}/*", "drivers": ["nydus", "zstdchunked"]}],
        },
    )
    assert "rules: driver(s) nydus, zstdchunked are not configured (configured: estargz)" in message


def test_target_template_must_render_a_repository_name(tmp_path):
    message = _config_error(
        tmp_path, {"driver": {"type": "estargz"}, "rules": [{"target": "{repository}:lazy"}]}
    )
    assert "converter.rules.0.target" in message and "not a repository name" in message
    message = _config_error(tmp_path, {"driver": {"type": "estargz"}, "rules": [{"target": "{repo}-lazy"}]})
    assert "placeholder: {repository}" in message


# --- target naming ----------------------------------------------------------------------------------------


def test_digest_only_sources_get_digest_named_tags():
    source = Reference.parse(f"{HARBOR}/library/app@{DIGEST}")
    assert source.tag is None
    target = target_reference(source, "-esgz")
    assert target.tag == f"sha256-{HEX}-esgz"
    assert target.digest is None  # the target is pushed by tag, never pinned to the source digest
    assert str(target) == f"{HARBOR}/library/app:sha256-{HEX}-esgz"
    mapped = target_reference(source, "-esgz", "library/app-lazy")
    assert str(mapped) == f"{HARBOR}/library/app-lazy:sha256-{HEX}-esgz"


def test_tag_and_digest_sources_keep_the_tag():
    source = Reference.parse(f"{HARBOR}/library/app:v1@{DIGEST}")
    assert str(target_reference(source, "-esgz")) == f"{HARBOR}/library/app:v1-esgz"


def test_a_target_tag_past_128_characters_is_shortened_deterministically():
    source = Reference.parse(f"{OTHER}/a/b:{'t' * 124}")
    assert target_tag(source, "-abc") == "t" * 124 + "-abc"  # exactly 128: kept as it is
    tag = target_tag(source, "-esgz")
    assert len(tag) == 128 and tag.endswith("-esgz") and tag.startswith("t" * 114)
    assert re.fullmatch(r"t{114}-[0-9a-f]{8}-esgz", tag)
    assert target_tag(source, "-esgz") == tag  # the same source, the same target
    other = Reference.parse(f"{OTHER}/a/b:{'t' * 123}u")
    assert target_tag(other, "-esgz") != tag  # tags that share their first 114 characters stay apart
    assert is_converted_tag(tag, ["-esgz"])  # a push of it is known as accel's own output
    with pytest.raises(ConfigError, match="leaves no room"):
        target_tag(source, "-" + "s" * 126)


# --- acceld: what a webhook event submits ---------------------------------------------------------------


@pytest.fixture
def routed(tmp_path):
    settings = _settings(tmp_path, _two_drivers(LIBRARY_RULE, {"cache_tag": "c"}))
    backend = FakeBackend()
    with TestClient(create_app(settings, backend)) as client:
        yield settings, backend, client


def test_harbor_event_matching_a_rule_submits_its_drivers_and_target(routed):
    _, backend, client = routed
    r = client.post("/api/v1/conversions", json=harbor(f"{HARBOR}/library/app:v1"))
    assert r.status_code == 202, r.text
    [request] = backend.requests
    assert str(request.source) == f"{HARBOR}/library/app:v1@{DIGEST}"
    assert request.drivers == ("zstdchunked",)
    assert request.target_repository == "library/app-lazy"

    r = client.post("/api/v1/conversions", json=harbor(f"{HARBOR}/other/app:v1"))
    assert r.status_code == 202, r.text
    assert backend.requests[1].drivers == ("estargz", "zstdchunked")
    assert backend.requests[1].target_repository is None
    # The routed conversion is a different run from the unrouted one, even for the same digest.
    assert backend.requests[0].idempotency_key != backend.requests[1].idempotency_key


def test_digest_only_event_is_accepted_and_named_from_the_digest(routed):
    settings, backend, client = routed
    # Harbor reports a push by digest with no tag (or with the digest in `tag`).
    for tag in (None, DIGEST):
        r = client.post(
            "/api/v1/conversions", json=harbor(f"{HARBOR}/library/app@{DIGEST}", digest=DIGEST, tag=tag)
        )
        assert r.status_code == 202, r.text
        assert r.json()["tasks"][0]["source"] == f"{HARBOR}/library/app@{DIGEST}"
    assert len(backend.tasks) == 1  # the same push reported twice is one task
    request = backend.requests[0]
    assert request.source.tag is None and request.source.digest == DIGEST
    converter = settings.converter
    [driver] = request.drivers
    target = target_reference(
        request.source, converter.suffix_for(converter.find_driver(driver)), request.target_repository
    )
    assert str(target) == f"{HARBOR}/library/app-lazy:sha256-{HEX}-zstdchunked"


def test_pushes_of_our_own_outputs_are_ignored(routed):
    _, backend, client = routed
    for tag in ("v1-zstdchunked", "v1-esgz", f"sha256-{HEX}", "c"):
        r = client.post("/api/v1/conversions", json=harbor(f"{HARBOR}/library/app:{tag}", tag=tag))
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "ignored" and "accel's own output" in r.json()["reason"]
    assert backend.requests == []


# --- acceld: what the task list says a run does ----------------------------------------------------------


def test_a_run_is_listed_with_the_plan_acceld_submitted_it_with(tmp_path):
    """The task list shows what acceld asked the run to do (the plan recorded with the run when acceld
    created it), never a plan recomputed from acceld's current config, which may have changed since."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Failed, Running

    from service.api.prefect_backend import PLAN_LABEL, PrefectBackend

    settings = _settings(tmp_path, _two_drivers(LIBRARY_RULE))  # today's config: zstdchunked, `-lazy`
    backend = PrefectBackend(settings, str(tmp_path / "config.yaml"))
    source = f"{HARBOR}/library/app:v1@{DIGEST}"
    recorded = json.dumps(
        {"drivers": ["estargz"], "targets": {"estargz": f"{HARBOR}/library/app:v1-estargz"}}
    )
    for state in (Running(), Failed(message="Flow run encountered an exception: OSError: disk full")):
        run = FlowRun(
            flow_id=uuid.uuid4(), parameters={"source": source}, state=state, labels={PLAN_LABEL: recorded}
        )
        task = asyncio.run(backend._task(None, run))  # type: ignore[arg-type]  # a live run needs no client
        assert task.drivers == ["estargz"]
        assert task.targets == [f"{HARBOR}/library/app:v1-estargz"]
    assert task.status == "FAILED" and task.reason == "OSError: disk full"  # without Prefect's prefix
    # A run with no recorded plan (created before plans were recorded): its own parameters, no guessed target.
    run = FlowRun(
        flow_id=uuid.uuid4(), parameters={"source": source, "drivers": ["estargz"]}, state=Running()
    )
    task = asyncio.run(backend._task(None, run))  # type: ignore[arg-type]
    assert task.drivers == ["estargz"] and task.targets == []
