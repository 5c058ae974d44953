"""`with_target`: explicit targets of any transport, and what local sources and targets change in a plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from accel.errors import ConfigError
from accel.plan import plan_conversion, with_target
from accel.reference import Reference
from accel.transports import describe, location_of, parse_location
from tests.harness.configs import routing_settings


def test_registry_source_without_target_keeps_the_plan_and_its_cache() -> None:
    settings = routing_settings(cache_repository="team/cache")
    plan = plan_conversion(settings, Reference.parse("r.invalid/team/app:v1"), ["estargz"])
    assert with_target(plan, None) == plan and plan.cache is not None


def test_a_layout_source_writes_new_tags_into_the_same_layout_without_a_cache(tmp_path: Path) -> None:
    source = parse_location(f"oci:{tmp_path}/in:v1").reference
    plan = with_target(
        plan_conversion(routing_settings(cache_repository="team/cache"), source, ["estargz"]), None
    )
    [target] = plan.targets.values()
    assert plan.cache is None
    assert describe(target) == f"oci:{(tmp_path / 'in').resolve()}:v1{_suffix(plan, 'estargz')}"
    assert location_of(target).path == (tmp_path / "in").resolve()


def _suffix(plan, driver: str) -> str:
    return plan.options[driver]["suffix"]


def test_one_driver_writes_exactly_to_the_target_several_add_their_suffix(tmp_path: Path) -> None:
    source = Reference.parse("r.invalid/team/app:v1")
    target = parse_location(f"oci:{tmp_path}/out:release").reference
    one = with_target(plan_conversion(routing_settings(), source, ["zstdchunked"]), target)
    assert one.targets == {"zstdchunked": target} and one.cache is None
    both = with_target(plan_conversion(routing_settings(), source, ["estargz", "zstdchunked"]), target)
    assert {d: t.tag for d, t in both.targets.items()} == {
        d: f"release{_suffix(both, d)}" for d in ("estargz", "zstdchunked")
    }
    registry = with_target(
        plan_conversion(routing_settings(), source, ["estargz"]), Reference.parse("r.invalid/x/y:z")
    )
    assert str(registry.targets["estargz"]) == "r.invalid/x/y:z"


def test_refused_targets_and_sources(tmp_path: Path) -> None:
    archive = parse_location(f"oci-archive:{tmp_path}/a.tar:v1").reference
    saved = parse_location(f"docker-archive:{tmp_path}/saved.tar").reference
    registry = Reference.parse("r.invalid/team/app:v1")
    with pytest.raises(ConfigError, match="give a target"):
        with_target(plan_conversion(routing_settings(), archive, ["estargz"]), None)
    with pytest.raises(ConfigError, match="one driver"):
        with_target(plan_conversion(routing_settings(), registry, ["estargz", "zstdchunked"]), archive)
    with pytest.raises(ConfigError, match="one driver"):
        with_target(plan_conversion(routing_settings(), registry, ["estargz", "zstdchunked"]), saved)
    assert with_target(plan_conversion(routing_settings(), registry, ["estargz"]), saved).targets == {
        "estargz": saved
    }


def test_a_docker_archive_target_refuses_a_format_it_cannot_hold_before_anything_runs(tmp_path: Path) -> None:
    """Nydus layers are no tar layers: docker load and skopeo could not read the archive back. The plan
    refuses by the driver's name (what `accelctl convert` checks before any pull)."""
    from tests.harness.configs import load_settings

    settings = load_settings(
        {"provider": {"source": {}}, "converter": {"drivers": [{"type": "nydus"}, {"type": "zstdchunked"}]}}
    )
    saved = parse_location(f"docker-archive:{tmp_path}/saved.tar:app:v1").reference
    source = Reference.parse("r.invalid/team/app:v1")
    with pytest.raises(ConfigError, match="a docker-archive cannot hold nydus images") as refused:
        with_target(plan_conversion(settings, source, ["nydus"]), saved)
    assert str(saved.repository) in str(refused.value) and "oci-archive:" in str(refused.value)
    assert with_target(plan_conversion(settings, source, ["zstdchunked"]), saved).targets == {
        "zstdchunked": saved
    }
