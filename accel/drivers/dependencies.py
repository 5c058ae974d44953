"""Images drivers depend on (e.g. a Nydus `chunk_dict_ref`), resolved outside the drivers.

Drivers never see the registry. A driver names the image references it needs (`Driver.dependencies`);
`DependencyResolver` has the driver resolve each through a registry slice (`Driver.resolve_dependency`)
and hands the results to `Driver.bind`, which returns the driver to convert with. It re-resolves at most
every `RESOLVE_TTL_SECONDS`, so a long-running worker notices a re-pushed tag (a driver's version and cache
key name the images it depends on, so layers then convert again).

`stage_dependency_blobs` makes the blobs of those images that a converted image lists exist in its target
repository before the push: mounted from the dependency's repository, else copied through the store.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable

from accel import copy
from accel.drivers.base import DependencySource, Driver, ResolvedDependency
from accel.model import BuiltImage
from accel.oci import Descriptor, Platform
from accel.reference import Reference
from accel.store import ContentStore

RESOLVE_TTL_SECONDS = 60.0


@dataclasses.dataclass
class _Resolved:
    dependency: ResolvedDependency
    at: float


class DependencyResolver:
    """Binds drivers to their resolved dependencies; drivers without any pass through unchanged."""

    def __init__(
        self,
        client: Callable[[], DependencySource],
        store: ContentStore,
        platform: Platform | None = None,
        ttl: float = RESOLVE_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._store = store
        self._platform = platform
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._resolved: dict[tuple[str, str], _Resolved] = {}
        self._bound: dict[tuple[int, tuple[str, ...]], Driver] = {}
        # Every dependency this process used: a pushed image may name one a newer resolution replaced.
        self._used: dict[str, ResolvedDependency] = {}

    def bind(self, driver: Driver) -> Driver:
        references = driver.dependencies()
        if not references:
            return driver
        resolved = {reference: self.resolve(driver, reference) for reference in references}
        with self._lock:
            key = (id(driver), tuple(r.image_digest for r in resolved.values()))
            if key not in self._bound:
                self._bound[key] = driver.bind(resolved)
            return self._bound[key]

    def resolve(self, driver: Driver, reference: str) -> ResolvedDependency:
        # One resolution at a time: concurrent layer tasks all wait for the first one.
        with self._lock:
            cached = self._resolved.get((driver.name, reference))
            if cached is not None and self._clock() - cached.at < self._ttl:
                return cached.dependency
            dependency = driver.resolve_dependency(self._client(), reference, self._store, self._platform)
            self._resolved[(driver.name, reference)] = _Resolved(dependency, self._clock())
            self._used[dependency.image_digest] = dependency
            return dependency

    def resolved(self) -> list[ResolvedDependency]:
        """Every dependency resolved so far, older resolutions of a reference included."""
        with self._lock:
            return list(self._used.values())


def stage_dependency_blobs(
    client: DependencySource,
    target: Reference,
    image: BuiltImage,
    dependencies: Iterable[ResolvedDependency],
    store: ContentStore,
) -> list[Descriptor]:
    """Make the dependency blobs `image` lists available to its push; returns those it lists.

    Each is mounted from the dependency's repository (same registry), else fetched into the content
    store, from where the push uploads it like any other blob.
    """
    by_digest = {blob.digest: d for d in dependencies for blob in d.blobs}
    staged = []
    for blob in image.blobs():
        dependency = by_digest.get(blob.digest)
        if dependency is None:
            continue
        staged.append(blob)
        copy.stage_blob(client, target, blob, store, source=Reference.parse(dependency.reference))
    return staged
