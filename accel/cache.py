"""Remote conversion cache images: converted layers that any worker on any machine can reuse.

A cache image lives at `<source repository>:<cache_tag>` (or `<cache_repository>:<cache_tag>`, shared by many
repositories). Its root is an image manifest (one platform) or an index of them (several platforms). Each
manifest lists *records*, most recently used first:

- a record is one converted layer descriptor annotated with the source layer digest (under the driver's
  `source_digest_annotation`: `containerd.io/snapshot/nydus-source-digest` for Nydus, as the original
  service writes it, `io.accel.layer.source-digest` otherwise), the driver's `cache_key()` (name, version
  and options: an eStargz layer never answers a Nydus request, a level-9 layer never a level-3 one) and
  `io.accel.cache.record`, a JSON copy of the `ConvertedLayer` (descriptor, diff_id, the driver's `facts`
  as its `facts_model` dumps them, local_blobs, companions), so a hit equals what conversion would have
  produced (records written before typed facts hold them as a string map, `extra`, which the driver's model
  reads too; facts its model refuses make the record unusable: that layer is converted again);
- blobs a record needs locally for `Driver.finish` (`ConvertedLayer.local_blobs`, e.g. a Nydus layer
  bootstrap) follow it as `application/vnd.accel.cache.blob.v1` layers annotated with
  `io.accel.cache.blob-of` (records written before `local_blobs` existed: those layers are its local blobs);
- the manifest carries `containerd.io/snapshot/nydus-cache-version` and `io.accel.cache.version`; a
  manifest whose version differs from `provider.cache_version` is ignored and rewritten on the next push;
- its config is a real image config (platform, `rootfs.diff_ids` matching the layers), so the cache image
  can be pulled and copied like any image (the original service's `{}` could not be: upstream issue #243).

Caches written by the original service (goharbor/acceleration-service `pkg/cache`: an index whose children
have a `{}` config, Nydus layers annotated with the source digest and no accel annotations) are read too.
Their records carry no driver options: a driver says whether they fit it (`Driver.accepts_original_records`,
only the Nydus driver with its default options) and turns the downloaded blob into its converted layer
(`Driver.restore_original_record`: Nydus pulls the bootstrap out of the blob trailer, as the original
stores no separate bootstrap); the next push stores the record in accel's own form.

Fetching accepts all four root media types through one import path (`_import_manifest`); pushing writes
the shape the update calls for (`plan_update`) and merges with whatever another worker pushed meanwhile
(`push_cache`). Nothing here knows Prefect.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from accel import constants as mt
from accel import copy, mutate
from accel import digest as dg
from accel.drivers.base import ConvertedLayer, Driver, LayerFacts
from accel.errors import AccelError, InvalidImage
from accel.model import SourceImage, SourceLayer
from accel.oci import Descriptor, Index, Manifest, Platform, canonical_json
from accel.reference import Reference
from accel.registry import NotFound, RegistryError
from accel.registry.interfaces import Registry
from accel.store import ContentStore

log = logging.getLogger(__name__)

DEFAULT_CACHE_TAG = "accel-cache"  # when only `provider.cache_repository` is configured
PUSH_ATTEMPTS = 6  # merges with concurrent writers before a cache push gives up
RETRY_JITTER = 0.1  # at most this many seconds between two attempts, so colliding writers drift apart
_ORIGINAL_SERVICE_KEY = "original-service"  # records written by the original service carry no driver key
_MANIFEST_BLOB_UNKNOWN = "MANIFEST_BLOB_UNKNOWN"
# One lock per cache reference: writers of this process take turns (see `push_cache`).
_WRITERS: dict[str, threading.RLock] = {}
_WRITERS_GUARD = threading.Lock()


class CacheConflict(AccelError):
    """The cache image kept changing under us; this conversion's records were not stored."""


class RecordGone(AccelError):
    """A cache record's blob is no longer in the registry."""


def cache_reference(
    source: Reference, cache_tag: str | None, cache_repository: str | None
) -> Reference | None:
    """Where `source`'s conversion cache lives; None when no cache is configured."""
    if not cache_tag and not cache_repository:
        return None
    tag = cache_tag or DEFAULT_CACHE_TAG
    if not cache_repository:
        return Reference(registry=source.registry, repository=source.repository, tag=tag)
    first, _, rest = cache_repository.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return Reference(registry=first, repository=rest, tag=tag)
    return Reference(registry=source.registry, repository=cache_repository, tag=tag)


# --- records ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """One record of a cache manifest: a converted layer and the blobs it needs locally."""

    layer: Descriptor  # as listed in the cache manifest, with the cache annotations
    diff_id: str  # what the cache config lists for it
    blobs: tuple[Descriptor, ...] = ()

    @property
    def source_digest(self) -> str:
        source = self.layer.annotation(mt.ORIGINAL_CACHE_SOURCE_DIGEST) or self.layer.annotation(
            mt.ACCEL_LAYER_SOURCE_DIGEST
        )
        assert source is not None  # entries are only made from layers that have one
        return source

    @property
    def key(self) -> str:
        return self.layer.annotation(mt.ACCEL_CACHE_KEY) or _ORIGINAL_SERVICE_KEY

    @property
    def identity(self) -> tuple[str, str]:
        return self.key, self.source_digest

    @property
    def is_original(self) -> bool:
        """Written by the original acceleration service (no accel record)."""
        return self.layer.annotation(mt.ACCEL_CACHE_KEY) is None

    def digests(self) -> list[str]:
        return [self.layer.digest, *(b.digest for b in self.blobs)]

    def matches(self, driver: Driver) -> bool:
        if not self.is_original:
            return self.key == driver.cache_key()
        return driver.accepts_original_records()


def cache_entry(driver: Driver, layer: ConvertedLayer, store: ContentStore) -> CacheEntry:
    """The record for one converted layer; its `local_blobs` travel with it."""
    blob_digests = dict.fromkeys(
        blob.digest
        for blob in layer.local_blobs
        if blob.digest != layer.descriptor.digest and store.exists(blob.digest)
    )
    blobs = tuple(
        Descriptor(
            media_type=mt.ACCEL_CACHE_BLOB,
            digest=digest,
            size=store.size(digest),
            annotations={mt.ACCEL_CACHE_BLOB_OF: layer.descriptor.digest},
        )
        for digest in blob_digests
    )
    record: dict[str, Any] = {
        "descriptor": layer.descriptor.to_dict(),
        "diffID": layer.diff_id,
        "localBlobs": [b.to_dict() for b in layer.local_blobs],
        "companions": [c.to_dict() for c in layer.companions],
    }
    if layer.facts is not None:
        record["facts"] = layer.facts.model_dump(mode="json")
    annotations = dict(layer.descriptor.annotations or {})
    annotations |= {
        driver.source_digest_annotation: layer.source.digest,
        mt.ACCEL_CACHE_KEY: driver.cache_key(),
        mt.ACCEL_CACHE_RECORD: canonical_json(record).decode(),
    }
    descriptor = layer.descriptor.with_(annotations=annotations, platform=None)
    return CacheEntry(layer=descriptor, diff_id=layer.diff_id, blobs=blobs)


def _facts_from_record(driver: Driver, record: dict[str, Any]) -> LayerFacts | None:
    """The record's facts as the driver's model; before typed facts they were the string map `extra`."""
    raw = record["facts"] if "facts" in record else record.get("extra") or None
    if raw is None:
        return None
    if driver.facts_model is None:
        raise ValueError(f"it has layer facts, which the {driver.name} driver does not keep")
    return driver.facts_model.model_validate(raw)


def _converted_from_record(entry: CacheEntry, source: Descriptor, driver: Driver) -> ConvertedLayer:
    try:
        record = json.loads(entry.layer.annotation(mt.ACCEL_CACHE_RECORD) or "")
        descriptor = Descriptor.model_validate(record["descriptor"])
        if "localBlobs" in record:
            local_blobs = tuple(Descriptor.model_validate(b) for b in record["localBlobs"])
        else:  # written before records named them: the blobs that follow the record are its local blobs
            local_blobs = tuple(
                Descriptor(media_type=b.media_type, digest=b.digest, size=b.size) for b in entry.blobs
            )
        converted = ConvertedLayer(
            source=source,
            descriptor=descriptor,
            diff_id=dg.validate(record["diffID"]),
            facts=_facts_from_record(driver, record),
            local_blobs=local_blobs,
            companions=tuple(Descriptor.model_validate(c) for c in record.get("companions") or ()),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidImage(f"cache record for {entry.layer.digest} is malformed: {exc}") from None
    if (descriptor.digest, descriptor.size) != (entry.layer.digest, entry.layer.size):
        raise InvalidImage(f"cache record for {entry.layer.digest} describes another blob")
    return converted


def _entries(layers: Sequence[Descriptor], where: str) -> tuple[CacheEntry, ...]:
    """Records from a manifest's layers: validated source digests, blobs attached to their record."""
    entries: list[CacheEntry] = []
    for layer in layers:
        owner = layer.annotation(mt.ACCEL_CACHE_BLOB_OF)
        if owner is not None:
            for i in range(len(entries) - 1, -1, -1):
                if entries[i].layer.digest == owner:
                    entries[i] = dataclasses.replace(entries[i], blobs=(*entries[i].blobs, layer))
                    break
            continue
        source = layer.annotation(mt.ORIGINAL_CACHE_SOURCE_DIGEST) or layer.annotation(
            mt.ACCEL_LAYER_SOURCE_DIGEST
        )
        if source is None or not dg.is_digest(source):
            log.warning(
                "cache %s: ignoring layer %s without a valid source digest (%r)", where, layer.digest, source
            )
            continue
        diff_id = layer.digest  # the original service's records: blobs that are their own diff_id
        if layer.annotation(mt.ACCEL_CACHE_KEY) is not None:
            try:
                diff_id = dg.validate(json.loads(layer.annotation(mt.ACCEL_CACHE_RECORD) or "")["diffID"])
            except (ValueError, KeyError, TypeError):
                log.warning("cache %s: ignoring layer %s with a malformed record", where, layer.digest)
                continue
        entries.append(CacheEntry(layer=layer, diff_id=diff_id))
    return tuple(entries)


# --- fetch -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CacheManifest:
    descriptor: Descriptor  # platform as in the index, or from the config for a manifest root
    entries: tuple[CacheEntry, ...]  # empty when `current` is False
    current: bool  # its version annotation equals the configured cache version

    @property
    def platform(self) -> Platform | None:
        return self.descriptor.platform


@dataclasses.dataclass(frozen=True)
class CacheImage:
    """What `fetch_cache` found: the root and the imported manifests (children matching the platforms)."""

    reference: Reference
    root: Descriptor | None  # None: there is no cache image yet
    manifests: tuple[CacheManifest, ...] = ()
    children: tuple[Descriptor, ...] = ()  # every entry of an index root, kept verbatim on push
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)  # of an index root

    @property
    def is_index(self) -> bool:
        return self.root is not None and self.root.media_type in mt.INDEX_TYPES

    def entries(self) -> Iterable[CacheEntry]:
        for manifest in self.manifests:
            yield from manifest.entries

    def find(self, driver: Driver, layers: Iterable[SourceLayer]) -> dict[str, CacheEntry]:
        """Records for `driver` by source layer digest (the first, most recently used, wins)."""
        wanted = {layer.descriptor.digest for layer in layers}
        found: dict[str, CacheEntry] = {}
        for entry in self.entries():
            if entry.source_digest in wanted and entry.source_digest not in found and entry.matches(driver):
                found[entry.source_digest] = entry
        return found


def same_platform(cached: Platform | None, wanted: Platform | None) -> bool:
    """A manifest without platform (a bare manifest root with an empty config) fits every platform."""
    if cached is None or wanted is None:
        return True
    if (cached.os, cached.architecture) != (wanted.os, wanted.architecture):
        return False
    return cached.variant is None or wanted.variant is None or cached.variant == wanted.variant


def _config_platform(
    client: Registry, ref: Reference, config: Descriptor, store: ContentStore
) -> Platform | None:
    if store.exists(config.digest):  # read moments ago by this conversion's lookup: no second GET
        raw = store.read_bytes(config.digest)
    else:
        raw = client.fetch_blob_bytes(ref, config)
        store.put_bytes(raw, config.digest)
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("os"), str) and isinstance(doc.get("architecture"), str):
        variant = doc.get("variant") if isinstance(doc.get("variant"), str) else None
        return Platform(os=doc["os"], architecture=doc["architecture"], variant=variant)
    return None


def _import_manifest(
    client: Registry,
    ref: Reference,
    desc: Descriptor,
    raw: bytes,
    store: ContentStore,
    version: str,
) -> CacheManifest:
    """The one import path for a cache manifest, whether it is the root or an index child."""
    manifest = Manifest.parse(raw, desc.media_type)
    store.put_bytes(raw, desc.digest)  # the bytes as fetched, under their real digest
    annotations = manifest.annotations
    found = {annotations[k] for k in (mt.ORIGINAL_CACHE_VERSION, mt.ACCEL_CACHE_VERSION) if k in annotations}
    if found != {version}:
        log.warning(
            "ignoring cache manifest %s in %s: version %s, expected %s",
            dg.short(desc.digest),
            ref,
            ", ".join(sorted(found)) or "(none)",
            version,
        )
        return CacheManifest(descriptor=desc, entries=(), current=False)
    if desc.platform is None:
        desc = desc.with_(platform=_config_platform(client, ref, manifest.config, store))
    return CacheManifest(descriptor=desc, entries=_entries(manifest.layers, str(ref)), current=True)


def fetch_cache(
    client: Registry,
    ref: Reference,
    store: ContentStore,
    version: str,
    platforms: Sequence[Platform | None] = (),
) -> CacheImage:
    """Read the cache image at `ref`; index children are imported when they match one of `platforms`."""
    try:
        root, raw = client.fetch_manifest(ref)
    except NotFound:
        return CacheImage(reference=ref, root=None)
    store.put_bytes(raw, root.digest)
    if root.media_type in mt.MANIFEST_TYPES:
        return CacheImage(
            reference=ref, root=root, manifests=(_import_manifest(client, ref, root, raw, store, version),)
        )
    index = Index.parse(raw, root.media_type)
    imported = []
    children = []
    for child in index.manifests:
        if child.media_type in mt.MANIFEST_TYPES and (
            not platforms or any(same_platform(child.platform, p) for p in platforms)
        ):
            try:
                _, child_raw = client.fetch_manifest(ref.with_digest(child.digest))
            except NotFound:
                log.warning("cache %s: child manifest %s is gone; dropping it", ref, child.digest)
                continue
            imported.append(_import_manifest(client, ref, child, child_raw, store, version))
        children.append(child)
    return CacheImage(
        reference=ref,
        root=root,
        manifests=tuple(imported),
        children=tuple(children),
        annotations=index.annotations,
    )


# --- hits ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Restored:
    """Hits made usable for one driver, and the layer digests of records found to be gone."""

    hits: dict[str, ConvertedLayer]
    gone: frozenset[str] = frozenset()
    in_target: frozenset[str] = frozenset()  # hits' blobs now in the target repository (the push needn't ask)


def _make_available(
    client: Registry, cache: Reference, target: Reference, layer: Descriptor, store: ContentStore
) -> bool:
    """The converted blob in the target repository: already there, mounted, else downloaded for the push.
    True when it is in the target repository now."""
    if target.registry == cache.registry and target.repository == cache.repository:
        if not client.blob_exists(cache, layer.digest):
            raise RecordGone(f"blob {layer.digest} is gone from {cache.name}")
        return True
    # The cache lists the blob, so a mount nearly always works: ask for it first, one request instead of a
    # HEAD that a fresh target repository answers 404 and then the mount (a 201 also when it was there).
    if target.registry == cache.registry and client.mount_blob(target, layer.digest, cache.repository):
        return True
    try:
        staged = copy.stage_blob(client, target, layer, store, source=cache)
    except NotFound:
        raise RecordGone(f"blob {layer.digest} is gone from {cache.name}") from None
    # A fetched blob is uploaded by the push; another registry's (or a local target's) answer is not vouched
    # for here.
    return target.registry == cache.registry and staged is not copy.BlobCopy.FETCHED


def _restore_original(
    client: Registry,
    cache: Reference,
    entry: CacheEntry,
    source: Descriptor,
    driver: Driver,
    store: ContentStore,
) -> ConvertedLayer:
    """An original-service record: its blob downloaded, turned into a converted layer by the driver."""
    try:
        client.fetch_blob(cache, entry.layer, store)
    except NotFound:
        raise RecordGone(f"blob {entry.layer.digest} is gone from {cache.name}") from None
    return driver.restore_original_record(entry.layer, source, store)


def restore_hits(
    client: Registry,
    cache: CacheImage,
    driver: Driver,
    layers: Sequence[SourceLayer],
    target: Reference,
    store: ContentStore,
) -> Restored:
    """`driver`'s hits for `layers` as the ConvertedLayers conversion would return, ready to push to `target`.

    A record whose blobs are gone (or that cannot be used) is dropped with a warning: that layer is converted.
    """
    sources = {layer.descriptor.digest: layer.descriptor for layer in layers}
    hits: dict[str, ConvertedLayer] = {}
    gone: set[str] = set()
    in_target: set[str] = set()
    for source_digest, entry in cache.find(driver, layers).items():
        try:
            if entry.is_original:
                converted = _restore_original(
                    client, cache.reference, entry, sources[source_digest], driver, store
                )
            else:
                converted = _converted_from_record(entry, sources[source_digest], driver)
                for blob in entry.blobs:
                    try:
                        client.fetch_blob(cache.reference, blob, store)
                    except NotFound:
                        raise RecordGone(f"blob {blob.digest} is gone from {cache.reference.name}") from None
                missing = [b.digest for b in converted.local_blobs if not store.exists(b.digest)]
                if missing:
                    raise RecordGone(f"blobs {', '.join(missing)} are missing")
            if _make_available(client, cache.reference, target, entry.layer, store):
                in_target.add(entry.layer.digest)
        except RecordGone as exc:
            log.warning(
                "dropping cache record for layer %s (%s): %s", dg.short(source_digest), driver.name, exc
            )
            gone.update(entry.digests())
            continue
        except (RegistryError, AccelError) as exc:
            log.warning(
                "cache record for layer %s (%s) is unusable: %s", dg.short(source_digest), driver.name, exc
            )
            continue
        hits[source_digest] = converted
    return Restored(hits=hits, gone=frozenset(gone), in_target=frozenset(in_target))


# --- update ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PlatformRecords:
    """This conversion's records for one platform, in the order they were used."""

    platform: Platform | None
    entries: tuple[CacheEntry, ...]


def records_for(
    source: SourceImage, converted: Mapping[Driver, Sequence[ConvertedLayer]], store: ContentStore
) -> list[PlatformRecords]:
    """Records per source platform: each driver's converted layers (hits included) in layer order."""
    result = []
    for manifest in source.manifests:
        entries: dict[tuple[str, str], CacheEntry] = {}
        for driver, layers in converted.items():
            by_source = {c.source.digest: c for c in layers}
            for layer in manifest.layers:
                c = by_source.get(layer.descriptor.digest)
                if c is not None:
                    entry = cache_entry(driver, c, store)
                    entries.setdefault(entry.identity, entry)
        result.append(PlatformRecords(platform=manifest.platform, entries=tuple(entries.values())))
    return result


@dataclasses.dataclass(frozen=True)
class CacheUpdate:
    """Documents to push, children first: blobs, then `manifests` by digest, then `root` under the tag."""

    root: Descriptor
    manifests: tuple[Descriptor, ...]  # child manifests that changed (an index root only)
    blobs: tuple[Descriptor, ...]  # configs, this conversion's layers and their blobs
    entries: tuple[CacheEntry, ...]  # every record in the changed manifests


def merge_entries(
    ours: Sequence[CacheEntry], theirs: Sequence[CacheEntry], size: int, gone: frozenset[str] = frozenset()
) -> list[CacheEntry]:
    """LRU: records this conversion used first, then the others in their order, at most `size`."""
    merged: dict[tuple[str, str], CacheEntry] = {}
    used_blobs = set()
    for entry in ours:
        merged.setdefault(entry.identity, entry)
        used_blobs.add((entry.source_digest, entry.layer.digest))
    for entry in theirs:
        if (entry.source_digest, entry.layer.digest) in used_blobs or gone.intersection(entry.digests()):
            continue  # re-recorded by us (an original-service record) or its blob is gone
        merged.setdefault(entry.identity, entry)
    return list(merged.values())[:size]


def _write_manifest(
    media_type: str,
    platform: Platform | None,
    entries: Sequence[CacheEntry],
    version: str,
    store: ContentStore,
) -> tuple[Descriptor, Descriptor]:
    """A cache manifest and its (pullable) config in the store; returns (manifest, config) descriptors."""
    docker = media_type == mt.DOCKER_MANIFEST
    layers: list[Descriptor] = []
    diff_ids: list[str] = []
    for entry in entries:
        layers += [entry.layer, *entry.blobs]
        diff_ids += [entry.diff_id, *(b.digest for b in entry.blobs)]
    config_doc: dict[str, Any] = {
        "architecture": platform.architecture if platform else "unknown",
        "os": platform.os if platform else "linux",
    }
    if platform and platform.variant:
        config_doc["variant"] = platform.variant
    config_doc["config"] = {"Labels": {mt.ACCEL_CACHE_VERSION: version}}
    config_doc["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    config_doc["history"] = [{"created_by": "accel conversion cache", "comment": f"{len(entries)} records"}]
    config_raw = canonical_json(config_doc)
    config = Descriptor.of(mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG, config_raw)
    store.put_bytes(config_raw, config.digest)
    manifest = mutate.manifest(
        media_type,
        config,
        layers,
        annotations={mt.ORIGINAL_CACHE_VERSION: version, mt.ACCEL_CACHE_VERSION: version},
        go_form=True,  # Go workers rewrite cache manifests; their form keeps the documents comparable
    )
    return mutate.store_document(manifest, store, platform=platform), config


def plan_update(
    cache: CacheImage,
    updates: Sequence[PlatformRecords],
    *,
    size: int,
    version: str,
    store: ContentStore,
    gone: frozenset[str] = frozenset(),
    index_root: bool = False,
) -> CacheUpdate:
    """The new cache documents: a manifest root stays a manifest unless another platform joins; an index
    stays an index, its untouched children kept verbatim. With `index_root` the root is always an index
    (`provider.cache_index_root`: Go workers from before upstream's single-manifest cache read no other).

    Every document is written in Go's `encoding/json` form (`accel.oci.go_json`): a Go worker re-encodes
    the index it fetched and can only read one whose bytes are that re-encoding."""
    pending = list(updates)
    blobs: dict[str, Descriptor] = {}
    changed: list[Descriptor] = []
    all_entries: list[CacheEntry] = []

    def write(
        media_type: str, platform: Platform | None, ours: Sequence[CacheEntry], theirs: Sequence[CacheEntry]
    ) -> Descriptor:
        entries = merge_entries(ours, theirs, size, gone)
        desc, config = _write_manifest(media_type, platform, entries, version, store)
        blobs[config.digest] = config
        for entry in ours:
            for d in (entry.layer, *entry.blobs):
                blobs.setdefault(d.digest, d)
        all_entries.extend(entries)
        return desc

    def take(platform: Platform | None) -> PlatformRecords | None:
        for i, update in enumerate(pending):
            if same_platform(platform, update.platform):
                return pending.pop(i)
        return None

    docker = cache.root is not None and cache.root.media_type in (mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST_LIST)
    manifest_type = mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST
    index_type = mt.DOCKER_MANIFEST_LIST if docker else mt.OCI_INDEX

    if not cache.is_index and len(updates) == 1 and not index_root:
        existing = cache.manifests[0] if cache.root is not None else None
        if existing is None or same_platform(existing.platform, updates[0].platform):
            # No cache yet, or a single-manifest cache of this platform: the root stays a manifest.
            media_type = existing.descriptor.media_type if existing else manifest_type
            theirs = existing.entries if existing else ()
            platform = updates[0].platform or (existing.platform if existing else None)
            root = write(media_type, platform, updates[0].entries, theirs)
            return CacheUpdate(
                root=root.with_(platform=None),
                manifests=(),
                blobs=tuple(blobs.values()),
                entries=tuple(all_entries),
            )

    children: list[Descriptor] = []
    imported = {m.descriptor.digest: m for m in cache.manifests}
    existing_children = cache.children if cache.is_index else tuple(m.descriptor for m in cache.manifests)
    for child in existing_children:
        manifest = imported.get(child.digest)
        update = take(manifest.platform) if manifest is not None else None
        if manifest is None or update is None:
            children.append(child)
            continue
        desc = write(child.media_type, manifest.platform or update.platform, update.entries, manifest.entries)
        changed.append(desc)
        children.append(desc)
    for update in pending:
        desc = write(manifest_type, update.platform, update.entries, ())
        changed.append(desc)
        children.append(desc)
    annotations = dict(cache.annotations) | {
        mt.ORIGINAL_CACHE_VERSION: version,
        mt.ACCEL_CACHE_VERSION: version,
    }
    root = mutate.store_document(
        mutate.index(index_type, children, annotations=annotations, go_form=True), store
    )
    return CacheUpdate(
        root=root, manifests=tuple(changed), blobs=tuple(blobs.values()), entries=tuple(all_entries)
    )


# --- push ------------------------------------------------------------------------------------------


def _current_root(client: Registry, ref: Reference) -> str | None:
    try:
        return client.resolve(ref).digest
    except NotFound:
        return None


def _missing_blobs(client: Registry, ref: Reference, entries: Iterable[CacheEntry]) -> frozenset[str]:
    digests = dict.fromkeys(d for entry in entries for d in entry.digests())
    return frozenset(d for d in digests if not client.blob_exists(ref, d))


def _writer_lock(ref: Reference) -> threading.RLock:
    with _WRITERS_GUARD:
        return _WRITERS.setdefault(str(ref), threading.RLock())


def _records_present(
    client: Registry,
    ref: Reference,
    store: ContentStore,
    updates: Sequence[PlatformRecords],
    *,
    version: str,
    size: int,
) -> bool:
    """Re-read the cache at `ref`: does it hold every record of `updates` (as far as `size` keeps them)?"""
    platforms = [u.platform for u in updates]
    latest = fetch_cache(client, ref, store, version, platforms)
    have = {entry.identity for entry in latest.entries()}
    return all(entry.identity in have for u in updates for entry in u.entries[:size])


def push_cache(
    client: Registry,
    ref: Reference,
    store: ContentStore,
    updates: Sequence[PlatformRecords],
    *,
    version: str,
    size: int,
    mount_from: Sequence[str] = (),
    gone: frozenset[str] = frozenset(),
    attempts: int = PUSH_ATTEMPTS,
    index_root: bool = False,
) -> Descriptor:
    """Merge this conversion's records into the cache at `ref` and push it; returns the pushed root.

    Optimistic concurrency, checked by reading, never by waiting: each attempt reads the root, merges,
    pushes blobs and children, checks the root is still the one it read, pushes the new root, then reads
    the cache back and returns once our records are in it. Another writer's push in between sends us
    round again (at most `attempts` times, with a small random pause between attempts only).

    Writers in this process take turns per cache reference, so among them nothing is ever lost. Across
    processes the registry offers no conditional tag update: a writer that checked the root just before
    our push and pushes just after our read-back still replaces our records. Such records are only
    missing from the cache (those layers are converted again next time), never wrong.
    """
    with _writer_lock(ref):
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                time.sleep(random.uniform(0, RETRY_JITTER))  # de-synchronise writers that keep colliding
            cache = fetch_cache(client, ref, store, version, [u.platform for u in updates])
            update = plan_update(
                cache, updates, size=size, version=version, store=store, gone=gone, index_root=index_root
            )
            if cache.root is not None and update.root.digest == cache.root.digest:
                # A warm run that used the most recent records: the merge is the cache as it is.
                log.info("cache %s already holds these records in this order: nothing to push", ref)
                return cache.root
            # Blobs the cache lists are in its repository (a record whose blob went missing after all is
            # found by the push's MANIFEST_BLOB_UNKNOWN below, and copied on the next attempt): only the
            # others are checked and copied.
            listed = {digest for entry in cache.entries() for digest in entry.digests()} - gone
            new_blobs = [blob for blob in update.blobs if blob.digest not in listed]
            copy.copy_blobs(client, ref, new_blobs, store, mount_from)
            try:
                copy.push_manifests(client, ref, update.manifests, store)
                if _current_root(client, ref) != (cache.root.digest if cache.root else None):
                    log.info("cache %s changed while merging (attempt %d/%d)", ref, attempt, attempts)
                    continue
                raw = store.read_bytes(update.root.digest)
                pushed = client.push_manifest(ref, raw, update.root.media_type)
            except RegistryError as exc:
                if exc.code != _MANIFEST_BLOB_UNKNOWN or attempt == attempts:
                    raise
                # A record kept from the old cache lost its blob: find which and leave them out.
                missing = _missing_blobs(client, ref, update.entries)
                log.warning(
                    "cache %s: dropping records whose blobs are gone: %s", ref, ", ".join(sorted(missing))
                )
                gone = gone | missing
                continue
            if _current_root(client, ref) == pushed.digest or _records_present(
                client, ref, store, updates, version=version, size=size
            ):
                return pushed
            log.info("cache %s was replaced right after our push (attempt %d/%d)", ref, attempt, attempts)
    raise CacheConflict(f"cache {ref} kept changing; gave up after {attempts} merges")
