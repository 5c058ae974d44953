"""Mixed fleets: cache documents in Go's `encoding/json` form, so Go workers of acceld keep reading them.

A Go worker re-encodes the cache index it fetched (`json.MarshalIndent(ocispec.Index, "", "  ")`) and stores
the fetched bytes under the re-encoded digest, so it fails on any index whose bytes differ from that. The
expected bytes below are written by hand from Go's rules: image-spec v1.1.0 struct field order
(`architecture` before `os`), `omitempty` fields left out when empty, map keys sorted, 2-space indent, no
trailing newline, `<`, `>`, `&` escaped as `\\u003c`, `\\u003e`, `\\u0026`.
"""

from __future__ import annotations

import json

from accel import cache
from accel import constants as mt
from accel import digest as dg
from accel.drivers.base import ConvertedLayer
from accel.oci import Descriptor, Index, Manifest, Platform, go_json
from accel.reference import Reference
from accel.registry.memory import MemoryRegistry
from accel.store import ContentStore
from tests.harness.relabel import Relabel, RelabelOptions

REF = Reference.parse("registry.invalid/team/app:nydus-cache")
AMD64 = Platform(os="linux", architecture="amd64")
ARM64 = Platform(os="linux", architecture="arm64", variant="v8")
DRIVER = Relabel(RelabelOptions())


def test_go_form_of_an_index_by_hand() -> None:
    doc = {
        "manifests": [
            {
                "size": 7,
                "digest": "sha256:" + "a" * 64,
                "mediaType": mt.OCI_MANIFEST,
                "platform": {"os": "linux", "architecture": "arm64", "variant": "v8", "os.features": []},
                "annotations": {"z": "<b>&", "a": "é\u2028"},
                "urls": [],
                "unknownToGo": True,
            }
        ],
        "mediaType": mt.OCI_INDEX,
        "schemaVersion": 2,
        "annotations": {},
        "somethingElse": 1,
    }
    expected = """{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.index.v1+json",
  "manifests": [
    {
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "digest": "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
      "size": 7,
      "annotations": {
        "a": "é\\u2028",
        "z": "\\u003cb\\u003e\\u0026"
      },
      "platform": {
        "architecture": "arm64",
        "os": "linux",
        "variant": "v8"
      }
    }
  ]
}"""
    assert go_json(doc, mt.OCI_INDEX) == expected.encode()


def test_go_form_of_a_manifest_by_hand() -> None:
    doc = {
        "schemaVersion": 2,
        "layers": [],
        "config": {"mediaType": mt.OCI_CONFIG, "size": 2, "digest": dg.of_bytes(b"{}"), "data": "e30="},
        "subject": None,
    }
    expected = f"""{{
  "schemaVersion": 2,
  "config": {{
    "mediaType": "application/vnd.oci.image.config.v1+json",
    "digest": "{dg.of_bytes(b"{}")}",
    "size": 2,
    "data": "e30="
  }},
  "layers": []
}}"""
    assert go_json(doc, mt.OCI_MANIFEST) == expected.encode()


# --- a cache the Go service wrote, updated by accel ------------------------------------------------

GO_CONFIG = b"{}"  # Go's cache config: `ocispec.ImageConfig{}` marshalled

GO_MANIFEST = """{{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.manifest.v1+json",
  "config": {{
    "mediaType": "application/vnd.oci.image.config.v1+json",
    "digest": "{config}",
    "size": 2
  }},
  "layers": [
    {{
      "mediaType": "application/vnd.oci.image.layer.nydus.blob.v1",
      "digest": "{blob}",
      "size": {blob_size},
      "annotations": {{
        "containerd.io/snapshot/nydus-blob": "true",
        "containerd.io/snapshot/nydus-source-digest": "{source}"
      }}
    }}
  ],
  "annotations": {{
    "containerd.io/snapshot/nydus-cache-version": "v1"
  }}
}}"""

GO_INDEX = """{{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.index.v1+json",
  "manifests": [
    {{
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "digest": "{child}",
      "size": {child_size},
      "platform": {{
        "architecture": "amd64",
        "os": "linux"
      }}
    }}
  ]
}}"""

# What the root must be after accel's update: still Go's form, accel's version annotations added.
UPDATED_INDEX = """{{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.index.v1+json",
  "manifests": [
    {{
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "digest": "{amd64}",
      "size": {amd64_size},
      "platform": {{
        "architecture": "amd64",
        "os": "linux"
      }}
    }},
    {{
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "digest": "{arm64}",
      "size": {arm64_size},
      "platform": {{
        "architecture": "arm64",
        "os": "linux",
        "variant": "v8"
      }}
    }}
  ],
  "annotations": {{
    "containerd.io/snapshot/nydus-cache-version": "v1",
    "io.accel.cache.version": "v1"
  }}
}}"""


def _go_written_cache(registry: MemoryRegistry, store: ContentStore) -> tuple[Descriptor, str]:
    """The Go service's cache at REF: an index, one amd64 child with one Nydus record; (record, source)."""
    blob = Descriptor(media_type=mt.NYDUS_BLOB, digest=store.put_bytes(b"go nydus blob"), size=13)
    source = dg.of_bytes(b"go source layer")
    config = Descriptor(media_type=mt.OCI_CONFIG, digest=store.put_bytes(GO_CONFIG), size=2)
    for d in (blob, config):
        registry.push_blob(REF, d, store)
    child_raw = GO_MANIFEST.format(
        config=config.digest, blob=blob.digest, blob_size=blob.size, source=source
    ).encode()
    child = registry.push_manifest(REF.with_digest(dg.of_bytes(child_raw)), child_raw, mt.OCI_MANIFEST)
    index_raw = GO_INDEX.format(child=child.digest, child_size=child.size).encode()
    registry.push_manifest(REF, index_raw, mt.OCI_INDEX)
    return blob, source


def _records(store: ContentStore, platform: Platform, *names: str) -> cache.PlatformRecords:
    entries = []
    for name in names:
        data = f"accel layer {name}".encode()
        converted = ConvertedLayer(
            source=Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=dg.of_bytes(name.encode()), size=1),
            descriptor=Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=store.put_bytes(data), size=len(data)),
            diff_id=dg.of_bytes(data),
        )
        entries.append(cache.cache_entry(DRIVER, converted, store))
    return cache.PlatformRecords(platform=platform, entries=tuple(entries))


def test_a_go_written_root_updated_by_accel_stays_in_go_form_with_both_records(tmp_path) -> None:
    registry = MemoryRegistry()
    store = ContentStore(tmp_path / "store")
    go_blob, go_source = _go_written_cache(registry, store)
    # Its bytes are what Go's re-encoding gives: the fixture follows the rule it tests.
    assert go_json(json.loads(registry.manifest(REF) or b""), mt.OCI_INDEX) == registry.manifest(REF)

    updates = [_records(store, AMD64, "one", "two"), _records(store, ARM64, "three")]
    cache.push_cache(registry, REF, store, updates, version="v1", size=200)

    raw = registry.manifest(REF)
    assert raw is not None
    amd64, arm64 = Index.parse(raw).manifests
    assert (
        raw
        == UPDATED_INDEX.format(
            amd64=amd64.digest, amd64_size=amd64.size, arm64=arm64.digest, arm64_size=arm64.size
        ).encode()
    )
    # Records of both: accel's first (just used), the Go service's record kept as it wrote it.
    amd64_raw = registry.manifest(REF.with_digest(amd64.digest))
    assert amd64_raw is not None and go_json(json.loads(amd64_raw), mt.OCI_MANIFEST) == amd64_raw
    layers = Manifest.parse(amd64_raw).layers
    assert [x.annotation(mt.ACCEL_LAYER_SOURCE_DIGEST) for x in layers[:2]] == [
        dg.of_bytes(b"one"),
        dg.of_bytes(b"two"),
    ]
    assert layers[2] == go_blob.with_(
        annotations={mt.NYDUS_BLOB_ANNOTATION: "true", mt.ORIGINAL_CACHE_SOURCE_DIGEST: go_source}
    )
    # And accel reads its own update back: every record of both writers.
    found = cache.fetch_cache(registry, REF, ContentStore(tmp_path / "again"), "v1", [AMD64, ARM64])
    sources = {entry.source_digest for entry in found.entries()}
    assert sources == {go_source, *(dg.of_bytes(n.encode()) for n in ("one", "two", "three"))}


def test_new_single_platform_cache_is_a_manifest_unless_index_roots_are_kept(tmp_path) -> None:
    store = ContentStore(tmp_path / "store")
    seed_layout = MemoryRegistry()
    cache.push_cache(seed_layout, REF, store, [_records(store, AMD64, "a")], version="v1", size=200)
    assert Manifest.parse(seed_layout.manifest(REF) or b"").media_type == mt.OCI_MANIFEST

    for existing in (False, True):  # a new cache, and an existing single-manifest one
        registry = MemoryRegistry()
        if existing:
            cache.push_cache(registry, REF, store, [_records(store, AMD64, "a")], version="v1", size=200)
        cache.push_cache(
            registry, REF, store, [_records(store, AMD64, "b")], version="v1", size=200, index_root=True
        )
        raw = registry.manifest(REF)
        assert raw is not None
        [child] = Index.parse(raw).manifests  # what Go workers before the single-manifest change read
        assert child.platform == AMD64
        assert go_json(json.loads(raw), mt.OCI_INDEX) == raw
        found = cache.fetch_cache(registry, REF, ContentStore(tmp_path / f"read{existing}"), "v1", [AMD64])
        expected = {dg.of_bytes(b"b")} | ({dg.of_bytes(b"a")} if existing else set())
        assert {e.source_digest for e in found.entries()} == expected
