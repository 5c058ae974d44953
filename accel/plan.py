"""The conversion plan: every routing decision about one source image, made in one place.

From the settings, the source reference and the optional explicit drivers / target repository, a
`ConversionPlan` says which drivers run (explicit → the matching rule's → every configured driver), where each
one's output goes, where the conversion cache lives, which options each driver runs with and the idempotency
key that makes a repeated request one conversion. The flow, acceld's API, the bulk planner and acceld's task
listing all read the same plan, so they cannot disagree about what a run does.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from accel.cache import cache_reference
from accel.config import Settings
from accel.digest import hex_of
from accel.drivers import driver_class
from accel.errors import ConfigError
from accel.reference import Reference
from accel.transports import OCI_LAYOUT, describe, is_local
from accel.transports.archive import DOCKER_LOADABLE_LAYERS
from accel.transports.names import DOCKER_ARCHIVE

# The OCI distribution spec's referrers tag schema: where clients keep a referrers index on registries
# without the referrers API. Such a tag names a list of artifacts, not an image.
_REFERRERS_TAG_RE = re.compile(r"^sha256-[0-9a-f]{64}$|^sha512-[0-9a-f]{128}$")

MAX_TAG_LENGTH = 128
_SHORTENED_MARK = "-12345678"  # what a shortened tag's end becomes: `-` and 8 hex digits of the tag's hash


def target_tag(source: Reference, suffix: str) -> str:
    """`v1` + `-nydus` → `v1-nydus`; a digest-only source gets a tag named from its digest, never `latest`.

    A legal source tag may leave no room for the suffix (tags have at most 128 characters): its end is then
    replaced by `-` and 8 hex digits of its digest, deterministically, so the target still ends with the
    suffix (and is known as accel's own output) and distinct long tags stay distinct.
    """
    if source.tag:
        base = source.tag
    else:
        assert source.digest is not None
        base = f"sha256-{hex_of(source.digest)}"
    tag = f"{base}{suffix}"
    if len(tag) <= MAX_TAG_LENGTH:
        return tag
    keep = MAX_TAG_LENGTH - len(suffix) - len(_SHORTENED_MARK)
    if keep < 1:
        raise ConfigError(
            f"tag suffix {suffix!r} leaves no room for a source tag in {MAX_TAG_LENGTH} characters"
        )
    short = hashlib.sha256(base.encode()).hexdigest()[: len(_SHORTENED_MARK) - 1]
    return f"{base[:keep]}-{short}{suffix}"


def target_reference(source: Reference, suffix: str, repository: str | None = None) -> Reference:
    """Where a converted image goes: the source's repository (or `repository`), tag + suffix."""
    target = Reference(registry=source.registry, repository=source.repository, tag=target_tag(source, suffix))
    if repository:
        target = target.with_repository(repository)
    return target


def is_converted_tag(tag: str | None, suffixes: Iterable[str]) -> bool:
    """Whether a tag is one accel itself pushes (so its push event must not start another conversion):
    a converted image (`<tag><suffix>`) or a referrers index kept under the referrers tag schema."""
    if not tag:
        return False
    return bool(_REFERRERS_TAG_RE.match(tag)) or any(s and tag.endswith(s) for s in suffixes)


def conversion_key(
    source: Reference,
    drivers: Sequence[str],
    options: Mapping[str, Any],
    target_repository: str | None,
) -> str:
    """Idempotency key of one conversion: the same pinned source, drivers, options and target → one run."""
    material = json.dumps(
        {
            "source": str(source),
            "drivers": sorted(drivers),
            "options": options,
            "target": target_repository,
        },
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return "accel-" + hashlib.sha256(material.encode()).hexdigest()


def attempt_key(key: str, attempt: int) -> str:
    """The idempotency key of the `attempt`-th run of one conversion. Attempt 0 is the plain key, so runs
    created before attempts existed still de-duplicate; a retry after a failed run takes the next attempt."""
    if attempt < 0:
        raise ValueError(f"attempt {attempt} is negative")
    return key if attempt == 0 else f"{key}-attempt-{attempt}"


def cache_tags(settings: Settings, source: Reference) -> set[str]:
    """Tags that name conversion caches in `source`'s repository: every rule's and the effective one."""
    converter, provider = settings.converter, settings.provider
    cache = cache_reference(source, converter.cache_tag, provider.cache_repository)
    return converter.cache_tags() | ({cache.tag} if cache is not None and cache.tag else set())


def is_cache_tag(settings: Settings, source: Reference) -> bool:
    return source.tag is not None and source.tag in cache_tags(settings, source)


def is_own_output(settings: Settings, source: Reference) -> bool:
    """A tag accel pushes itself (converted image, referrers index, conversion cache): converting it again
    would loop."""
    converter = settings.converter
    suffixes = [converter.suffix_for(d) for d in converter.all_drivers()]
    return is_converted_tag(source.tag, suffixes) or is_cache_tag(settings, source)


@dataclass(frozen=True)
class ConversionPlan:
    """What converting `source` means under one configuration. Build it with `plan_conversion`."""

    source: Reference
    drivers: tuple[str, ...]
    targets: Mapping[str, Reference]  # driver type → target reference, in `drivers` order
    target_repository: str | None
    cache: Reference | None  # the conversion cache image; None when no cache is configured
    options: Mapping[str, Mapping[str, Any]]  # driver type → {"config": ..., "suffix": ...}

    @property
    def idempotency_key(self) -> str:
        return conversion_key(self.source, self.drivers, self.options, self.target_repository)

    def target_names(self) -> dict[str, str]:
        """driver type → target reference text (what tasks and results carry)."""
        return {d: describe(t) for d, t in self.targets.items()}


def plan_conversion(
    settings: Settings,
    source: Reference,
    drivers: Sequence[str] | None = None,
    target_repository: str | None = None,
) -> ConversionPlan:
    """The plan for `source`. Unset drivers and target repository follow the first matching rule, else every
    configured driver beside the source. An unknown driver raises ConfigError before anything runs."""
    converter = settings.converter
    route = converter.route(source.registry, source.repository)
    chosen = tuple(drivers or route.drivers or [d.type for d in converter.all_drivers()])
    repository = target_repository or route.target_repository
    options: dict[str, dict[str, Any]] = {}
    targets: dict[str, Reference] = {}
    for driver_type in chosen:
        driver = converter.find_driver(driver_type)
        suffix = converter.suffix_for(driver)
        options[driver_type] = {"config": driver.driver_config(), "suffix": suffix}
        targets[driver_type] = target_reference(source, suffix, repository)
    cache = cache_reference(source, converter.cache_tag, settings.provider.cache_repository)
    return ConversionPlan(
        source=source,
        drivers=chosen,
        targets=targets,
        target_repository=repository,
        cache=cache,
        options=options,
    )


def _check_docker_archive_holds(drivers: Sequence[str], target: Reference) -> None:
    """A docker archive holds tar layers only (what `docker load` and skopeo apply): a driver that writes
    others is refused by name here, before anything is pulled or converted."""
    for driver_type in drivers:
        declared = driver_class(driver_type).layer_media_types
        if declared - DOCKER_LOADABLE_LAYERS:
            raise ConfigError(
                f"target {describe(target)}: a docker-archive cannot hold {driver_type} images (their "
                "layers are not tar layers, so docker load and skopeo could not read them back); write "
                "oci-archive: or oci: instead"
            )


def with_target(plan: ConversionPlan, target: Reference | None) -> ConversionPlan:
    """An explicit target (any transport): one driver writes exactly there, several add their suffix to its
    tag. Local sources and targets have no remote conversion cache. Without a target, a layout source gets
    its outputs as new tags in the same layout; an archive source needs a target."""
    if target is None:
        if is_local(plan.source) and plan.source.registry != OCI_LAYOUT:
            raise ConfigError(
                f"{plan.source.registry} source {plan.source.repository}: give a target to write to"
            )
        return replace(plan, cache=None) if is_local(plan.source) else plan
    if len(plan.drivers) > 1 and target.registry in ("oci-archive", "docker-archive"):
        raise ConfigError(f"a {target.registry} target holds one converted image: convert with one driver")
    if target.registry == DOCKER_ARCHIVE:
        _check_docker_archive_holds(plan.drivers, target)
    if len(plan.drivers) == 1:
        targets = {plan.drivers[0]: target}
    else:
        tag = target.tag or "latest"
        targets = {d: target.with_tag(f"{tag}{plan.options[d]['suffix']}") for d in plan.drivers}
    cache = None if is_local(plan.source) or is_local(target) else plan.cache
    return replace(plan, targets=targets, target_repository=None, cache=cache)
