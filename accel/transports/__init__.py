"""Images outside registries: OCI layouts and archives as implementations of the registry verbs.

`parse_location` reads a transport-prefixed name; `open_location` gives the object that implements the
verbs of `accel.registry.interfaces` for it (the registry client itself for `docker://`), so
`accel.image.resolve_source`, `accel.copy.copy_image` and `accel.publish.push_image` work on any of them.
Use the result as a context manager when writing: an archive is written on a clean exit only.
`Transports` routes every verb by the reference itself (local references name their transport and path),
which is how the flow's tasks take any source and target.
"""

from __future__ import annotations

from typing import Any

from accel.transports.archive import DockerArchiveTarget, OCIArchive
from accel.transports.docker_archive import DockerArchive
from accel.transports.layout import LayoutReader, OCILayout
from accel.transports.names import (
    DOCKER_ARCHIVE,
    OCI_ARCHIVE,
    OCI_LAYOUT,
    TRANSPORTS,
    ImageLocation,
    describe,
    is_local,
    local_reference,
    location_of,
    parse_location,
)
from accel.transports.router import Transports

__all__ = [
    "TRANSPORTS",
    "DockerArchive",
    "DockerArchiveTarget",
    "ImageLocation",
    "LayoutReader",
    "OCIArchive",
    "OCILayout",
    "Transports",
    "describe",
    "is_local",
    "local_reference",
    "location_of",
    "open_location",
    "parse_location",
]


def open_location(location: ImageLocation, registry: Any = None, *, writable: bool = False) -> Any:
    """The verbs for `location`: `registry` (any `accel.registry.interfaces.Registry`) for a registry
    location, else a layout or archive object (a `LayoutReader`, usable as a context manager)."""
    if location.is_registry:
        if registry is None:
            raise ValueError(f"{location}: a registry location needs a registry client")
        return registry
    assert location.path is not None
    if location.transport == OCI_LAYOUT:
        return OCILayout(location.path)
    if location.transport == OCI_ARCHIVE:
        return OCIArchive(location.path, writable=writable)
    if location.transport == DOCKER_ARCHIVE:
        return DockerArchiveTarget(location.path) if writable else DockerArchive(location.path)
    raise ValueError(f"unknown transport {location.transport!r}")
