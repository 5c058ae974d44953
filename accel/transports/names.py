"""Transport-prefixed image names, as skopeo and containers/image spell them.

    docker://host/repo:tag  or  host/repo:tag      a registry (`accel.reference.Reference`)
    oci:DIR[:TAG]                                   an OCI image layout directory
    oci-archive:FILE[:TAG]                          a tar of an OCI image layout
    docker-archive:FILE[:REPO:TAG | :@N]            `docker save` output (read only)

As in containers/image, the path ends at the first ":" (paths containing ":" are not supported). A local
location also carries a `Reference` (registry = the transport name, repository = the absolute path), so code
written for registry references (tasks, naming, `with_digest`, `with_tag`) works on it unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from accel.errors import InvalidReference
from accel.reference import Reference

REGISTRY = "docker"
OCI_LAYOUT = "oci"
OCI_ARCHIVE = "oci-archive"
DOCKER_ARCHIVE = "docker-archive"
LOCAL_TRANSPORTS = (OCI_LAYOUT, OCI_ARCHIVE, DOCKER_ARCHIVE)
TRANSPORTS = (REGISTRY, *LOCAL_TRANSPORTS)

_DIGEST_SUFFIX_RE = re.compile(r"^(?P<path>.+)@(?P<digest>sha256:[a-f0-9]{64})$")


@dataclass(frozen=True)
class ImageLocation:
    """Where an image is read from or written to."""

    transport: str
    reference: Reference
    path: Path | None = None
    name: str | None = None  # the TAG / REPO:TAG / @N part of a local location, as written

    @property
    def is_registry(self) -> bool:
        return self.transport == REGISTRY

    def with_digest(self, digest: str) -> ImageLocation:
        return ImageLocation(self.transport, self.reference.with_digest(digest), self.path, self.name)

    def __str__(self) -> str:
        if self.is_registry:
            return f"docker://{self.reference}"
        suffix = f":{self.name}" if self.name else ""
        digest = f"@{self.reference.digest}" if self.reference.digest else ""
        return f"{self.transport}:{self.path}{suffix}{digest}"


def local_reference(
    transport: str, path: Path, name: str | None = None, digest: str | None = None
) -> Reference:
    """A local location as a `Reference`: registry = the transport, repository = the absolute path, so the
    location can be rebuilt from the reference alone (`location_of`), e.g. inside a task."""
    return Reference(registry=transport, repository=str(path.resolve()), tag=name, digest=digest)


def location_of(ref: Reference) -> ImageLocation:
    """The location a reference stands for (inverse of `parse_location(...).reference`)."""
    if ref.registry not in LOCAL_TRANSPORTS:
        return ImageLocation(REGISTRY, ref)
    return ImageLocation(ref.registry, ref, Path(ref.repository), ref.tag)


def is_local(ref: Reference) -> bool:
    return ref.registry in LOCAL_TRANSPORTS


def describe(ref: Reference) -> str:
    """A registry reference as it is, a local one in its transport syntax (`oci:DIR:TAG`)."""
    return str(location_of(ref)) if is_local(ref) else str(ref)


def parse_location(text: str) -> ImageLocation:
    """`oci:out/app:v1` → an OCI layout location; `docker://x/y:z` and `x/y:z` → a registry location."""
    transport, sep, rest = text.partition(":")
    if sep and transport == REGISTRY and rest.startswith("//"):
        return ImageLocation(REGISTRY, Reference.parse(rest[2:]))
    if not sep or transport not in LOCAL_TRANSPORTS:
        return ImageLocation(REGISTRY, Reference.parse(text))
    if not rest:
        raise InvalidReference(f"{text!r}: {transport}: needs a path")
    digest = None
    found = _DIGEST_SUFFIX_RE.match(rest)
    if found and transport != DOCKER_ARCHIVE:
        rest, digest = found["path"], found["digest"]
    path_text, _, name = rest.partition(":")
    if not path_text:
        raise InvalidReference(f"{text!r}: {transport}: needs a path")
    if transport == DOCKER_ARCHIVE and name.startswith("@") and not name[1:].isdigit():
        raise InvalidReference(f"{text!r}: @N must be the position of an image in manifest.json")
    path = Path(path_text)
    return ImageLocation(
        transport, local_reference(transport, path, name or None, digest), path, name or None
    )
