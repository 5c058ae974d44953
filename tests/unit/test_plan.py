"""ConversionPlan: the one routing decision (drivers, targets, cache, own outputs, idempotency key)."""

from __future__ import annotations

import pytest

from accel.config import load_settings
from accel.errors import ConfigError
from accel.plan import is_cache_tag, is_own_output, plan_conversion
from accel.reference import Reference
from tests.harness.configs import ROUTING_HOST, routing_settings

HOST = ROUTING_HOST
DIGEST = "sha256:" + "ab" * 32
HEX = "ab" * 32
LIBRARY_RULE = {"repository": f"{HOST}/library/*", "drivers": ["zstdchunked"], "target": "{repository}-lazy"}


def _ref(text: str) -> Reference:
    return Reference.parse(f"{HOST}/{text}")


def test_without_rules_every_configured_driver_runs_beside_the_source():
    plan = plan_conversion(routing_settings(), _ref("team/app:v1"))
    assert plan.drivers == ("estargz", "zstdchunked")
    assert plan.target_names() == {
        "estargz": f"{HOST}/team/app:v1-esgz",
        "zstdchunked": f"{HOST}/team/app:v1-zstdchunked",
    }
    assert plan.target_repository is None
    assert plan.cache is None
    assert plan.options == {
        "estargz": {"config": {"compression_level": 6}, "suffix": "-esgz"},
        "zstdchunked": {"config": {}, "suffix": "-zstdchunked"},
    }


def test_a_matching_rule_decides_drivers_and_target_repository():
    settings = routing_settings(LIBRARY_RULE)
    plan = plan_conversion(settings, _ref("library/app:v1"))
    assert plan.drivers == ("zstdchunked",)
    assert plan.target_repository == "library/app-lazy"
    assert plan.target_names() == {"zstdchunked": f"{HOST}/library/app-lazy:v1-zstdchunked"}
    assert list(plan.options) == ["zstdchunked"]
    # A source outside the rule's glob: every driver, same repository.
    assert plan_conversion(settings, _ref("other/app:v1")).drivers == ("estargz", "zstdchunked")


def test_explicit_drivers_and_target_repository_win_over_the_rule():
    plan = plan_conversion(routing_settings(LIBRARY_RULE), _ref("library/app:v1"), ["estargz"], "mirror/app")
    assert plan.drivers == ("estargz",)
    assert plan.target_repository == "mirror/app"
    assert plan.target_names() == {"estargz": f"{HOST}/mirror/app:v1-esgz"}
    # Explicit drivers alone keep the rule's target repository.
    plan = plan_conversion(routing_settings(LIBRARY_RULE), _ref("library/app:v1"), ["estargz"])
    assert plan.target_names() == {"estargz": f"{HOST}/library/app-lazy:v1-esgz"}


def test_an_unknown_driver_is_refused():
    with pytest.raises(ConfigError, match="driver 'nydus' is not configured"):
        plan_conversion(routing_settings(), _ref("team/app:v1"), ["nydus"])


def test_digest_only_source_gets_digest_named_targets():
    plan = plan_conversion(routing_settings(), _ref(f"team/app@{DIGEST}"))
    assert plan.target_names()["estargz"] == f"{HOST}/team/app:sha256-{HEX}-esgz"
    assert all(t.digest is None for t in plan.targets.values())  # pushed by tag, never pinned


def test_cache_reference_follows_cache_tag_or_cache_repository():
    assert plan_conversion(routing_settings({"cache_tag": "lazy-cache"}), _ref("team/app:v1")).cache == _ref(
        "team/app:lazy-cache"
    )
    shared = plan_conversion(
        routing_settings({"cache_tag": "c"}, cache_repository="caches/all"), _ref("team/app:v1")
    )
    assert shared.cache == _ref("caches/all:c")


def test_idempotency_key_covers_source_drivers_options_and_target():
    settings = routing_settings(LIBRARY_RULE)
    pinned = _ref(f"library/app:v1@{DIGEST}")
    key = plan_conversion(settings, pinned).idempotency_key
    assert key.startswith("accel-")
    assert plan_conversion(settings, pinned).idempotency_key == key  # deterministic
    # The same source by explicit equal choices is the same conversion.
    assert plan_conversion(settings, pinned, ["zstdchunked"], "library/app-lazy").idempotency_key == key
    others = {
        plan_conversion(settings, _ref(f"library/app:v2@{DIGEST}")).idempotency_key,
        plan_conversion(settings, pinned, ["estargz"]).idempotency_key,
        plan_conversion(settings, pinned, None, "mirror/app").idempotency_key,
        plan_conversion(routing_settings(), pinned).idempotency_key,
    }
    assert key not in others and len(others) == 4
    changed_options = load_settings(
        {
            "provider": {"source": {HOST: {}}},
            "converter": {
                "drivers": [{"type": "estargz", "tag_suffix": "-esgz"}, {"type": "zstdchunked"}],
                "rules": [LIBRARY_RULE],
            },
        }
    )
    assert (
        plan_conversion(changed_options, pinned, ["estargz"]).idempotency_key
        != plan_conversion(settings, pinned, ["estargz"]).idempotency_key
    )


def test_own_outputs_are_converted_tags_referrers_tags_and_cache_tags():
    settings = routing_settings({"cache_tag": "lazy-cache"})
    for tag in ("v1-esgz", "v1-zstdchunked", f"sha256-{HEX}", "lazy-cache"):
        assert is_own_output(settings, _ref(f"team/app:{tag}")), tag
    for tag in ("v1", "esgz", "latest"):
        assert not is_own_output(settings, _ref(f"team/app:{tag}")), tag
    assert not is_own_output(settings, _ref(f"team/app@{DIGEST}"))


def test_cache_tags_include_the_default_tag_of_a_cache_repository():
    settings = routing_settings(cache_repository="caches/all")
    # With only a cache repository, the cache tag is the default one, and pushes of it are ours.
    cache = plan_conversion(settings, _ref("team/app:v1")).cache
    assert cache is not None and cache.tag
    assert is_cache_tag(settings, _ref(f"team/app:{cache.tag}"))
    assert not is_cache_tag(settings, _ref("team/app:v1"))
    # A converted tag is not a cache tag.
    assert not is_cache_tag(routing_settings(), _ref("team/app:v1-esgz"))
