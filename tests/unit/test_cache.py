"""Conversion cache images against the real registry: layouts, import, update shapes, LRU, concurrency."""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest

from accel import cache
from accel import constants as mt
from accel import digest as dg
from accel import image as img
from accel.drivers import ConvertedLayer, Driver, DriverOptions, LayerInput, load_driver
from accel.drivers.base import LayerFacts
from accel.drivers.nydus import NydusDriver
from accel.drivers.nydus.facts import NydusLayerFacts, facts_of
from accel.errors import InvalidImage
from accel.model import SourceImage, SourceLayer
from accel.oci import Descriptor, ImageConfig, Index, Manifest, Platform, canonical_json
from accel.reference import Reference
from accel.registry import HostConfig, RegistryClient
from accel.registry.memory import MemoryRegistry
from accel.store import ContentStore
from tests.harness import imagegen, pushing
from tests.harness import nydus as nh

pytestmark = [pytest.mark.registry]

VERSION = "v1"
AMD64 = Platform(os="linux", architecture="amd64")
ARM64 = Platform(os="linux", architecture="arm64")
DRIVERS = [pytest.param("estargz"), pytest.param("nydus", marks=[nh.needs_builder, pytest.mark.nydus])]


@pytest.fixture(scope="module")
def source(registry, client, tmp_path_factory) -> tuple[SourceImage, ContentStore]:
    """A two-platform source (layers 0-1 shared, layer 2 per platform), resolved into a store."""
    store = ContentStore(tmp_path_factory.mktemp("cache-source"))
    amd = imagegen.standard_image(store, big_file_size=64 << 10)
    arm = imagegen.standard_image(store, arch="arm64", big_file_size=64 << 10)
    index = imagegen.build_index([amd, arm], store)
    ref = Reference.parse(f"{registry.host}/cache-unit/source:v1")
    pushing.push(client, store, ref, index)
    return img.resolve_source(client, ref, store), store


_converted: dict[str, tuple[Driver, dict[str, ConvertedLayer]]] = {}


@pytest.fixture(params=DRIVERS)
def conversion(request, source) -> tuple[Driver, dict[str, ConvertedLayer]]:
    """Each unique source layer converted once per driver (module-wide), keyed by source digest."""
    driver_type = request.param
    if driver_type not in _converted:
        image, store = source
        driver = load_driver(driver_type)
        _converted[driver_type] = (
            driver,
            {
                layer.descriptor.digest: driver.convert_layer(
                    LayerInput(layer.descriptor, layer.diff_id, store)
                )
                for layer in image.unique_layers()
            },
        )
    return _converted[driver_type]


def estargz(source) -> tuple[Driver, dict[str, ConvertedLayer]]:
    if "estargz" not in _converted:
        image, store = source
        driver = load_driver("estargz")
        layers = {
            layer.descriptor.digest: driver.convert_layer(LayerInput(layer.descriptor, layer.diff_id, store))
            for layer in image.unique_layers()
        }
        _converted["estargz"] = (driver, layers)
    return _converted["estargz"]


def cache_ref(registry) -> Reference:
    return Reference.parse(f"{registry.host}/cache-unit/{uuid.uuid4().hex[:10]}:accel-cache")


def records(
    source_image: SourceImage,
    driver: Driver,
    converted: dict[str, ConvertedLayer],
    store: ContentStore,
    platforms: tuple[Platform, ...] = (AMD64,),
    only: set[str] | None = None,
) -> list[cache.PlatformRecords]:
    wanted = [m for m in source_image.manifests if m.platform in platforms]
    sub = SourceImage(reference=source_image.reference, root=source_image.root, manifests=tuple(wanted))
    layers = [c for d, c in converted.items() if only is None or d in only]
    return cache.records_for(sub, {driver: layers}, store)


def push(client, ref, store, updates, size: int = 200, version: str = VERSION) -> Descriptor:
    return cache.push_cache(client, ref, store, updates, version=version, size=size)


def layers_of(image: SourceImage, platform: Platform) -> list[SourceLayer]:
    return list(next(m for m in image.manifests if m.platform == platform).layers)


def restore(client, ref, driver, layers, tmp_path, platforms=(AMD64,)) -> tuple[cache.Restored, ContentStore]:
    """As a worker on another machine would: a fresh store, the target is the cache repository itself."""
    fresh = ContentStore(tmp_path / f"fresh-{uuid.uuid4().hex[:6]}")
    found = cache.fetch_cache(client, ref, fresh, VERSION, list(platforms))
    return cache.restore_hits(client, found, driver, layers, ref, fresh), fresh


def fetch_root(client, ref) -> tuple[Descriptor, bytes]:
    return client.fetch_manifest(ref)


def record_sources(client, ref, manifest_digest: str | None = None) -> list[str]:
    _desc, raw = client.fetch_manifest(ref.with_digest(manifest_digest) if manifest_digest else ref)
    return [
        layer.annotation(mt.ORIGINAL_CACHE_SOURCE_DIGEST)
        or layer.annotation(mt.ACCEL_LAYER_SOURCE_DIGEST)
        or ""
        for layer in Manifest.parse(raw).layers
        if layer.media_type != mt.ACCEL_CACHE_BLOB
    ]


def assert_pullable(client, ref: Reference, manifest: Manifest, platform: Platform) -> None:
    """The config is a real image config: platform, one diff_id per layer; every blob is fetchable."""
    config = ImageConfig.parse(client.fetch_blob_bytes(ref, manifest.config))
    assert config.platform == platform
    assert len(config.diff_ids) == len(manifest.layers)
    for layer in manifest.layers:
        assert client.blob_exists(ref, layer.digest)


# --- references and LRU ----------------------------------------------------------------------------


def test_cache_reference_default_dedicated_and_off() -> None:
    src = Reference.parse("reg.example.com/team/app:v1")
    assert cache.cache_reference(src, None, None) is None
    assert str(cache.cache_reference(src, "nydus-cache", None)) == "reg.example.com/team/app:nydus-cache"
    assert str(cache.cache_reference(src, None, "shared/cache")) == "reg.example.com/shared/cache:accel-cache"
    assert str(cache.cache_reference(src, "c", "other.io:5000/x/cache")) == "other.io:5000/x/cache:c"


def _entry(source: str, key: str = "k") -> cache.CacheEntry:
    layer = Descriptor(
        media_type=mt.OCI_LAYER_GZIP,
        digest=dg.of_bytes(f"{key}/{source}".encode()),
        size=1,
        annotations={mt.ACCEL_LAYER_SOURCE_DIGEST: dg.of_bytes(source.encode()), mt.ACCEL_CACHE_KEY: key},
    )
    return cache.CacheEntry(layer=layer, diff_id=layer.digest)


def test_merge_entries_puts_used_records_first_and_evicts_the_oldest() -> None:
    a, b, c, d = (_entry(x) for x in "abcd")
    assert cache.merge_entries([c], [a, b], size=2) == [c, a]
    assert cache.merge_entries([a], [c, a], size=2) == [a, c]  # used again: moves to the front, once
    assert cache.merge_entries([d, a], [a, b, c], size=3) == [d, a, b]
    other_key = _entry("a", key="other")
    assert cache.merge_entries([a], [other_key], size=5) == [a, other_key]  # per driver/options
    assert cache.merge_entries([a], [b, c], size=5, gone=frozenset({b.layer.digest})) == [a, c]


def test_record_names_its_local_blobs_and_older_records_take_the_blobs_that_follow_them() -> None:
    source = Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=dg.of_bytes(b"source"), size=6)
    layer = Descriptor(media_type=mt.NYDUS_BLOB, digest=dg.of_bytes(b"blob"), size=4)
    local = Descriptor(media_type="application/octet-stream", digest=dg.of_bytes(b"bootstrap"), size=9)
    converted = ConvertedLayer(
        source=source, descriptor=layer, diff_id=layer.digest, facts=_Facts(k="v"), local_blobs=(local,)
    )

    class _Driver(Driver):
        name = "fake"
        facts_model = _Facts

        def cache_key(self) -> str:
            return "fake-key"

    class _Store:
        def exists(self, digest: str) -> bool:
            return True

        def size(self, digest: str) -> int:
            return local.size

    driver = _Driver(DriverOptions())
    entry = cache.cache_entry(driver, converted, _Store())  # type: ignore[arg-type]
    assert [(b.media_type, b.digest) for b in entry.blobs] == [(mt.ACCEL_CACHE_BLOB, local.digest)]
    assert entry.layer.annotation(mt.ACCEL_LAYER_SOURCE_DIGEST) == source.digest
    assert cache._converted_from_record(entry, source, driver) == converted
    # A record written before records named their local blobs: the blobs following it are they.
    record = json.loads(entry.layer.annotation(mt.ACCEL_CACHE_RECORD) or "")
    del record["localBlobs"]
    annotations = dict(entry.layer.annotations or {}) | {mt.ACCEL_CACHE_RECORD: json.dumps(record)}
    older = dataclasses.replace(entry, layer=entry.layer.with_(annotations=annotations))
    restored = cache._converted_from_record(older, source, driver)
    assert [(b.digest, b.size) for b in restored.local_blobs] == [(local.digest, local.size)]
    assert restored.facts == converted.facts


class _Facts(LayerFacts):
    version: Literal[1] = 1
    k: str


# A Nydus record as accel wrote it before typed layer facts (`extra`, a string map), byte for byte.
_OLD_NYDUS_RECORD = (
    '{"descriptor":{"mediaType":"application/vnd.oci.image.layer.nydus.blob.v1","digest":"sha256:fe1e0c7654ceaeec'
    'bbe32fba7848bd2f414ff9756c3b07ed71d1f1b3250ee849","size":10,"annotations":{"containerd.io/snapshot/nydus-blo'
    'b":"true"}},"diffID":"sha256:fe1e0c7654ceaeecbbe32fba7848bd2f414ff9756c3b07ed71d1f1b3250ee849","extra":{"boot'
    'strap":"sha256:333c04dd151a2a6831c039cb9a651df29198be8a04e16ce861d4b6a34a11c954","fs_version":"6","directori'
    'es":"sha256:0d4fc4a78d3706edccafb665a8b2fdd9309e82c78625bb0f2b8e7bb9e1c4d21c","blob_toc_digest":"sha256:4ebd'
    'e790877e2f92305cfb30ed1c0e2943dc00dfc24b49e3dc2a47889ca44151"},"localBlobs":[{"mediaType":"application/octet'
    '-stream","digest":"sha256:333c04dd151a2a6831c039cb9a651df29198be8a04e16ce861d4b6a34a11c954","size":9},{"medi'
    'aType":"application/vnd.accel.nydus.directory-table.v1+json","digest":"sha256:0d4fc4a78d3706edccafb665a8b2fd'
    'd9309e82c78625bb0f2b8e7bb9e1c4d21c","size":5}],"companions":[]}'
)


def _record_entry(record: str, source: bytes = b"source layer") -> cache.CacheEntry:
    """The record as a cache manifest lists it, followed by its local blobs."""
    described = json.loads(record)
    layer = Descriptor.model_validate(described["descriptor"]).with_(
        annotations=described["descriptor"]["annotations"]
        | {
            mt.ORIGINAL_CACHE_SOURCE_DIGEST: dg.of_bytes(source),
            mt.ACCEL_CACHE_KEY: "nydus-0123456789abcdef",
            mt.ACCEL_CACHE_RECORD: record,
        }
    )
    blobs = tuple(
        Descriptor.model_validate(b).with_(
            media_type=mt.ACCEL_CACHE_BLOB, annotations={mt.ACCEL_CACHE_BLOB_OF: layer.digest}
        )
        for b in described.get("localBlobs", ())
    )
    return cache.CacheEntry(layer=layer, diff_id=layer.digest, blobs=blobs)


def test_records_written_before_typed_facts_load_into_the_drivers_model() -> None:
    source = Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=dg.of_bytes(b"source layer"), size=12)
    nydus = load_driver("nydus")
    restored = cache._converted_from_record(_record_entry(_OLD_NYDUS_RECORD), source, nydus)
    assert restored.facts == NydusLayerFacts(
        bootstrap="sha256:333c04dd151a2a6831c039cb9a651df29198be8a04e16ce861d4b6a34a11c954",
        fs_version="6",
        directories="sha256:0d4fc4a78d3706edccafb665a8b2fdd9309e82c78625bb0f2b8e7bb9e1c4d21c",
        blob_toc_digest="sha256:4ebde790877e2f92305cfb30ed1c0e2943dc00dfc24b49e3dc2a47889ca44151",
    )
    assert [b.digest for b in restored.local_blobs] == [
        facts_of(restored).bootstrap,
        facts_of(restored).directories,
    ]
    # Written again, the record holds the typed facts, which read back the same.
    again = cache.cache_entry(_KeyedNydus(nydus.options), restored, _AllThere())  # type: ignore[arg-type]
    assert "extra" not in json.loads(again.layer.annotation(mt.ACCEL_CACHE_RECORD) or "")
    assert cache._converted_from_record(again, source, nydus) == restored
    # Records of drivers without facts carried an empty map.
    old_plain = json.loads(_OLD_NYDUS_RECORD) | {"extra": {}}
    assert cache._converted_from_record(_record_entry(json.dumps(old_plain)), source, nydus).facts is None


@pytest.mark.parametrize(
    "facts",
    [
        {"bootstrap": "not-a-digest", "fs_version": "6"},  # not what the Nydus driver wrote
        {"fs_version": "6"},  # a layer without its bootstrap
        {"version": 2, "bootstrap": dg.of_bytes(b"b"), "fs_version": "6"},  # a later shape of the facts
        {"bootstrap": dg.of_bytes(b"b"), "fs_version": "6", "unknown": "x"},
    ],
)
def test_records_whose_facts_the_driver_refuses_are_unusable_not_wrong(facts: dict[str, Any]) -> None:
    """restore_hits drops an unusable record with a warning: its layer is converted again (a miss)."""
    source = Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=dg.of_bytes(b"source layer"), size=12)
    record = json.loads(_OLD_NYDUS_RECORD)
    del record["extra"]
    record["facts"] = facts
    with pytest.raises(InvalidImage, match="is malformed"):
        cache._converted_from_record(_record_entry(json.dumps(record)), source, load_driver("nydus"))
    # Facts for a driver that keeps none.
    with pytest.raises(InvalidImage, match="does not keep"):
        cache._converted_from_record(_record_entry(_OLD_NYDUS_RECORD), source, load_driver("estargz"))


def test_through_the_registry_an_old_record_is_a_hit_and_one_with_refused_facts_a_miss(
    tmp_path: Path,
) -> None:
    registry = MemoryRegistry()
    writer = ContentStore(tmp_path / "writer")
    for data in (b"nydus blob", b"bootstrap", b"table"):  # the blobs the literal record names
        writer.put_bytes(data)
    later = json.loads(_OLD_NYDUS_RECORD)
    del later["extra"]
    later["facts"] = {"version": 2, "bootstrap": dg.of_bytes(b"bootstrap"), "fs_version": "6"}
    entries = (_record_entry(_OLD_NYDUS_RECORD), _record_entry(json.dumps(later), source=b"another layer"))
    ref = Reference.parse("registry.invalid/team/app:accel-cache")
    cache.push_cache(
        registry, ref, writer, [cache.PlatformRecords(AMD64, entries)], version=VERSION, size=200
    )

    reader = ContentStore(tmp_path / "reader")
    found = cache.fetch_cache(registry, ref, reader, VERSION, [AMD64])
    layers = [
        SourceLayer(
            descriptor=Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=dg.of_bytes(data), size=12),
            diff_id=dg.of_bytes(data),
        )
        for data in (b"source layer", b"another layer")
    ]
    driver = _KeyedNydus(load_driver("nydus").options)
    restored = cache.restore_hits(registry, found, driver, layers, ref, reader)
    assert list(restored.hits) == [dg.of_bytes(b"source layer")]  # the other layer is converted again
    assert restored.gone == frozenset()  # its record stays for the readers that know its facts
    hit = facts_of(restored.hits[dg.of_bytes(b"source layer")])
    assert reader.exists(hit.bootstrap_digest) and hit.directories and reader.exists(hit.directories)


class _KeyedNydus(NydusDriver):
    def cache_key(self) -> str:
        return "nydus-0123456789abcdef"  # without asking the builder its version


class _AllThere:
    def exists(self, digest: str) -> bool:
        return True

    def size(self, digest: str) -> int:
        return 1


# --- the three upstream cases, per driver -----------------------------------------------------------


def test_new_single_platform_cache_is_a_manifest_and_hits_equal_conversion(
    registry, client, source, conversion, tmp_path
) -> None:
    image, store = source
    driver, converted = conversion
    ref = cache_ref(registry)
    pushed = push(client, ref, store, records(image, driver, converted, store))

    root, raw = fetch_root(client, ref)
    assert pushed.digest == root.digest and root.media_type == mt.OCI_MANIFEST
    manifest = Manifest.parse(raw)
    assert manifest.annotations[mt.ORIGINAL_CACHE_VERSION] == VERSION
    assert_pullable(client, ref, manifest, AMD64)

    layers = layers_of(image, AMD64)
    restored, fresh = restore(client, ref, driver, layers, tmp_path)
    assert restored.hits == {layer.descriptor.digest: converted[layer.descriptor.digest] for layer in layers}
    if driver.name == "nydus":  # what `finish` needs is local again: the layer bootstraps
        assert all(fresh.exists(facts_of(h).bootstrap) for h in restored.hits.values())
        assert all(
            layer.annotation(mt.ORIGINAL_CACHE_SOURCE_DIGEST)
            for layer in manifest.layers
            if layer.media_type == mt.NYDUS_BLOB
        )


def test_single_manifest_cache_is_updated_in_place(registry, client, source, conversion, tmp_path) -> None:
    image, store = source
    driver, converted = conversion
    ref = cache_ref(registry)
    first_two = {layer.descriptor.digest for layer in layers_of(image, AMD64)[:2]}
    push(client, ref, store, records(image, driver, converted, store, only=first_two))
    assert len(record_sources(client, ref)) == 2

    push(client, ref, store, records(image, driver, converted, store))
    root, raw = fetch_root(client, ref)
    assert root.media_type == mt.OCI_MANIFEST  # still a single manifest, not an index
    assert record_sources(client, ref) == [layer.descriptor.digest for layer in layers_of(image, AMD64)]
    assert_pullable(client, ref, Manifest.parse(raw), AMD64)


@pytest.mark.parametrize(
    ("root_type", "child_type"),
    [
        (mt.OCI_MANIFEST, None),
        (mt.DOCKER_MANIFEST, None),
        (mt.OCI_INDEX, mt.OCI_MANIFEST),
        (mt.DOCKER_MANIFEST_LIST, mt.DOCKER_MANIFEST),
    ],
)
def test_every_root_media_type_is_imported(registry, client, source, tmp_path, root_type, child_type) -> None:
    image, store = source
    driver, converted = estargz(source)
    ref = cache_ref(registry)
    entries = records(image, driver, converted, store)[0].entries
    manifest_desc, config = cache._write_manifest(child_type or root_type, AMD64, entries, VERSION, store)
    for blob in (config, *(e.layer for e in entries)):
        client.push_blob(ref, blob, store)
    raw = store.read_bytes(manifest_desc.digest)
    if child_type is None:
        client.push_manifest(ref, raw, root_type)
    else:
        client.push_manifest(ref.with_digest(manifest_desc.digest), raw, child_type)
        index_raw = canonical_json(
            {"schemaVersion": 2, "mediaType": root_type, "manifests": [manifest_desc.to_dict()]}
        )
        client.push_manifest(ref, index_raw, root_type)

    layers = layers_of(image, AMD64)
    fresh = ContentStore(tmp_path / "fresh")
    found = cache.fetch_cache(client, ref, fresh, VERSION, [AMD64])
    assert found.root is not None and found.root.media_type == root_type
    assert fresh.exists(found.root.digest)  # stored under the digest it was fetched by
    assert fresh.exists(manifest_desc.digest)
    hits = cache.restore_hits(client, found, driver, layers, ref, fresh).hits
    assert set(hits) == {layer.descriptor.digest for layer in layers}

    push(client, ref, store, records(image, driver, converted, store))  # the layout is kept on update
    assert fetch_root(client, ref)[0].media_type == root_type


# --- index caches ------------------------------------------------------------------------------------


def test_index_cache_multi_platform_create_update_and_selection(registry, client, source, tmp_path) -> None:
    image, store = source
    driver, converted = estargz(source)
    ref = cache_ref(registry)
    shared = {layer.descriptor.digest for layer in layers_of(image, AMD64)[:2]}
    push(client, ref, store, records(image, driver, converted, store, (AMD64, ARM64), only=shared))
    root, raw = fetch_root(client, ref)
    assert root.media_type == mt.OCI_INDEX
    children = Index.parse(raw).manifests
    assert [c.platform for c in children] == [AMD64, ARM64]
    for child in children:
        _, child_raw = client.fetch_manifest(ref.with_digest(child.digest))
        assert_pullable(client, ref, Manifest.parse(child_raw), child.platform)

    # A single-platform update of an index cache keeps the index and the other child untouched.
    push(client, ref, store, records(image, driver, converted, store, (AMD64,)))
    root, raw = fetch_root(client, ref)
    updated = Index.parse(raw).manifests
    assert root.media_type == mt.OCI_INDEX
    assert updated[1] == children[1] and updated[0].digest != children[0].digest
    assert record_sources(client, ref, updated[0].digest) == [
        layer.descriptor.digest for layer in layers_of(image, AMD64)
    ]

    arm_layers = layers_of(image, ARM64)
    restored, _ = restore(client, ref, driver, arm_layers, tmp_path, platforms=(ARM64,))
    assert set(restored.hits) == shared  # only the arm64 child was imported: its app layer is a miss
    fresh = ContentStore(tmp_path / "selection")
    found = cache.fetch_cache(client, ref, fresh, VERSION, [ARM64])
    assert [m.platform for m in found.manifests] == [ARM64]
    assert not fresh.exists(updated[0].digest)


def test_a_single_manifest_cache_becomes_an_index_when_another_platform_joins(
    registry, client, source
) -> None:
    image, store = source
    driver, converted = estargz(source)
    ref = cache_ref(registry)
    first = push(client, ref, store, records(image, driver, converted, store, (AMD64,)))
    push(client, ref, store, records(image, driver, converted, store, (ARM64,)))
    root, raw = fetch_root(client, ref)
    assert root.media_type == mt.OCI_INDEX
    children = Index.parse(raw).manifests
    assert [c.platform for c in children] == [AMD64, ARM64]
    assert children[0].digest == first.digest


# --- compatibility, versions, eviction, missing blobs, other options -----------------------------


def _without_directory_table(layer: ConvertedLayer) -> ConvertedLayer:
    table = facts_of(layer).directories
    return layer.model_copy(
        update={
            "facts": facts_of(layer).model_copy(update={"directories": None}),
            "local_blobs": tuple(b for b in layer.local_blobs if b.digest != table),
        }
    )


@nh.needs_builder
@pytest.mark.nydus
def test_original_service_layout_is_read_and_used(registry, client, source, tmp_path) -> None:
    """acceleration-service's layout: OCI index, `{}` config, source-digest-annotated Nydus layers."""
    image, store = source
    driver = load_driver("nydus")
    layers = layers_of(image, AMD64)
    converted = [driver.convert_layer(LayerInput(x.descriptor, x.diff_id, store)) for x in layers]
    ref = cache_ref(registry)
    empty_config = Descriptor.of(mt.OCI_CONFIG, b"{}")
    store.put_bytes(b"{}")
    original_layers = [
        c.descriptor.with_(
            annotations={mt.NYDUS_BLOB_ANNOTATION: "true", mt.ORIGINAL_CACHE_SOURCE_DIGEST: c.source.digest}
        )
        for c in converted
    ]
    for blob in (empty_config, *original_layers):
        client.push_blob(ref, blob, store)
    manifest_raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": empty_config.to_dict(),
            "layers": [d.to_dict() for d in original_layers],
            "annotations": {mt.ORIGINAL_CACHE_VERSION: VERSION},
        }
    ).encode()
    child = Descriptor.of(mt.OCI_MANIFEST, manifest_raw, platform=AMD64)
    client.push_manifest(ref.with_digest(child.digest), manifest_raw, mt.OCI_MANIFEST)
    index_raw = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [child.to_dict()]})
    client.push_manifest(ref, index_raw.encode(), mt.OCI_INDEX)

    restored, fresh = restore(client, ref, driver, layers, tmp_path)
    # Bootstraps are pulled out of the blobs; the original records have no directory table (accel's Nydus
    # layers carry one for the merge), so those images merge as the original service did.
    assert restored.hits == {c.source.digest: _without_directory_table(c) for c in converted}
    assert all(fresh.exists(facts_of(c).bootstrap) for c in restored.hits.values())
    # Other options than the defaults the original's records are taken to have: no hits.
    lz4 = load_driver("nydus", {"compressor": "lz4_block"})
    assert restore(client, ref, lz4, layers, tmp_path)[0].hits == {}

    # The next push rewrites the record in accel's form (once, not beside the original's) with a real config.
    push(client, ref, fresh, cache.records_for(image, {driver: list(restored.hits.values())}, fresh)[:1])
    root, raw = fetch_root(client, ref)
    assert root.media_type == mt.OCI_INDEX
    new_child = Index.parse(raw).manifests[0]
    _, child_raw = client.fetch_manifest(ref.with_digest(new_child.digest))
    manifest = Manifest.parse(child_raw)
    assert_pullable(client, ref, manifest, AMD64)
    records_now = [x for x in manifest.layers if x.media_type == mt.NYDUS_BLOB]
    assert [x.annotation(mt.ORIGINAL_CACHE_SOURCE_DIGEST) for x in records_now] == [
        x.descriptor.digest for x in layers
    ]
    assert all(x.annotation(mt.ACCEL_CACHE_KEY) == driver.cache_key() for x in records_now)


def test_version_mismatch_is_ignored_and_rewritten(registry, client, source, tmp_path) -> None:
    image, store = source
    driver, converted = estargz(source)
    ref = cache_ref(registry)
    layers = layers_of(image, AMD64)
    push(client, ref, store, records(image, driver, converted, store), version="v0")
    fresh = ContentStore(tmp_path / "v1")
    found = cache.fetch_cache(client, ref, fresh, VERSION, [AMD64])
    assert [m.current for m in found.manifests] == [False]
    assert cache.restore_hits(client, found, driver, layers, ref, fresh).hits == {}

    only_app = {layers[2].descriptor.digest}
    push(client, ref, store, records(image, driver, converted, store, only=only_app))
    _, raw = fetch_root(client, ref)
    assert Manifest.parse(raw).annotations[mt.ACCEL_CACHE_VERSION] == VERSION
    assert record_sources(client, ref) == [layers[2].descriptor.digest]  # the v0 records are gone


def test_cache_size_evicts_least_recently_used(registry, client, source) -> None:
    image, store = source
    driver, converted = estargz(source)
    ref = cache_ref(registry)
    l0, l1, l2 = (layer.descriptor.digest for layer in layers_of(image, AMD64))
    for used in ([l0], [l1], [l2], [l0]):
        push(client, ref, store, records(image, driver, converted, store, only=set(used)), size=2)
    assert record_sources(client, ref) == [l0, l2]  # l1 was the least recently used


def test_record_with_a_missing_blob_is_dropped(registry, client, source, tmp_path, caplog) -> None:
    image, store = source
    driver, converted = estargz(source)
    ref = cache_ref(registry)
    layers = layers_of(image, AMD64)
    push(client, ref, store, records(image, driver, converted, store))
    lost = converted[layers[1].descriptor.digest].descriptor.digest
    resp = httpx.delete(f"http://{registry.host}/v2/{ref.repository}/blobs/{lost}")
    assert resp.status_code == 202

    restored, _fresh = restore(client, ref, driver, layers, tmp_path)
    assert set(restored.hits) == {layers[0].descriptor.digest, layers[2].descriptor.digest}
    assert lost in restored.gone
    assert "dropping cache record" in caplog.text

    # Merging drops it from the cache image too, as the flow merges: with the lookup's gone blobs (without
    # them this order would be the cache as it is, which is not pushed again; a push in another order is
    # refused by the registry and drops it too: test_cache_push).
    wanted = {layers[0].descriptor.digest}
    updates = records(image, driver, converted, store, only=wanted)
    cache.push_cache(client, ref, store, updates, version=VERSION, size=200, gone=restored.gone)
    assert record_sources(client, ref) == [layers[0].descriptor.digest, layers[2].descriptor.digest]


def test_other_options_do_not_hit(registry, client, source, tmp_path) -> None:
    image, store = source
    driver, converted = estargz(source)
    ref = cache_ref(registry)
    push(client, ref, store, records(image, driver, converted, store))
    level3 = load_driver("estargz", {"compression_level": 3})
    assert restore(client, ref, level3, layers_of(image, AMD64), tmp_path)[0].hits == {}


# --- concurrency -------------------------------------------------------------------------------------


class _Interleaving:
    """A client whose first `resolve` lets another writer push first: the race, made deterministic."""

    def __init__(self, inner: RegistryClient, before_first_resolve: Any) -> None:
        self._inner = inner
        self._hook = before_first_resolve

    def resolve(self, ref: Reference) -> Descriptor:
        hook, self._hook = self._hook, None
        if hook is not None:
            hook()
        return self._inner.resolve(ref)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_concurrent_updates_merge_instead_of_losing_records(registry, client, source) -> None:
    image, store = source
    driver, converted = estargz(source)
    ref = cache_ref(registry)
    l0, l1, l2 = (layer.descriptor.digest for layer in layers_of(image, AMD64))
    push(client, ref, store, records(image, driver, converted, store, only={l0}))

    def other_worker() -> None:
        push(client, ref, store, records(image, driver, converted, store, only={l1}))

    racing = _Interleaving(client, other_worker)
    cache.push_cache(
        racing,  # type: ignore[arg-type]
        ref,
        store,
        records(image, driver, converted, store, only={l2}),
        version=VERSION,
        size=200,
    )
    assert record_sources(client, ref) == [l2, l1, l0]


def test_parallel_writers_all_leave_their_records(registry, client, source) -> None:
    image, store = source
    driver, converted = estargz(source)
    ref = cache_ref(registry)
    digests = [layer.descriptor.digest for layer in layers_of(image, AMD64)]
    errors: list[BaseException] = []

    def writer(digest: str) -> None:
        try:
            with RegistryClient({registry.host: HostConfig()}) as own:
                push(own, ref, store, records(image, driver, converted, store, only={digest}))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(d,)) for d in digests]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(record_sources(client, ref)) == sorted(digests)
