"""Target naming: where a converted image goes."""

from __future__ import annotations

from accel.digest import hex_of
from accel.reference import Reference


def target_tag(source: Reference, suffix: str) -> str:
    """`v1` + `-nydus` → `v1-nydus`; a digest-only source gets a tag named from its digest, never `latest`."""
    if source.tag:
        base = source.tag
    else:
        assert source.digest is not None
        base = f"sha256-{hex_of(source.digest)}"
    tag = f"{base}{suffix}"
    if len(tag) > 128:
        raise ValueError(f"target tag {tag!r} is longer than 128 characters")
    return tag


def target_reference(source: Reference, suffix: str, repository: str | None = None) -> Reference:
    target = Reference(registry=source.registry, repository=source.repository, tag=target_tag(source, suffix))
    if repository:
        target = target.with_repository(repository)
    return target
