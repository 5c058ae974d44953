"""A stand-in format driver and a source image pushed to a MemoryRegistry, for assembly/publish tests.

`Relabel` "converts" a layer by writing a small blob naming the source layer, without reading it, so every
byte of a built image is decided by accel's assembly code, and tests run in milliseconds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

from accel import constants as mt
from accel import digest as dg
from accel import image as img
from accel.drivers.base import (
    ConvertedLayer,
    Driver,
    DriverOptions,
    LayerInput,
    PlatformDraft,
    oci_unless_docker_kept,
)
from accel.model import BuiltImage, SourceImage
from accel.oci import Descriptor, Platform, canonical_json
from accel.reference import Reference
from accel.registry.memory import MemoryRegistry
from accel.store import ContentStore

SOURCE = Reference.parse("registry.invalid/team/app:v1")
AMD64 = Platform(os="linux", architecture="amd64")
ARM64 = Platform(os="linux", architecture="arm64", variant="v8")
HISTORY = [
    {"created": "2024-01-01T00:00:00Z", "created_by": "layer 0"},
    {"created": "2024-01-01T00:00:00Z", "created_by": "ENV A=b", "empty_layer": True},
    {"created": "2024-01-01T00:00:00Z", "created_by": "layer 1"},
]


class RelabelOptions(DriverOptions):
    docker2oci: bool = True


class Relabel(Driver):
    """A stand-in format: the converted blob is "relabelled <source digest>", its own diff_id."""

    name: ClassVar[str] = "relabel"
    options_model: ClassVar[type[DriverOptions]] = RelabelOptions

    def writes_oci(self, source_media_type: str) -> bool:
        assert isinstance(self.options, RelabelOptions)
        return oci_unless_docker_kept(self.options.docker2oci, source_media_type)

    def convert_layer(self, layer: LayerInput) -> ConvertedLayer:
        data = f"relabelled {layer.descriptor.digest}".encode()
        digest = layer.store.put_bytes(data)
        desc = Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=digest, size=len(data))
        return ConvertedLayer(source=layer.descriptor, descriptor=desc, diff_id=digest)


class RelabelWithFinish(Relabel):
    """`finish` as Nydus uses it: one more layer, a history to match, annotations, an artifactType."""

    def finish(self, draft: PlatformDraft, store: ContentStore) -> PlatformDraft:
        extra = f"extra layer for {draft.source_manifest.digest}".encode()
        digest = store.put_bytes(extra)
        layer = ConvertedLayer(
            source=draft.source_manifest,
            descriptor=Descriptor(media_type=mt.OCI_LAYER_TAR, digest=digest, size=len(extra)),
            diff_id=digest,
        )
        history = (*draft.config.doc["history"], {"created_by": "finish"})
        return dataclasses.replace(
            draft,
            layers=(*draft.layers, layer),
            history=history,
            manifest_annotations={"io.accel.test.finished": "yes", mt.ACCEL_DRIVER: "overridden"},
            artifact_type="application/vnd.accel.test.artifact",
        )


def put(store: ContentStore, data: bytes) -> str:
    return store.put_bytes(data)


def source_manifest(store: ContentStore, platform: Platform, docker: bool) -> Descriptor:
    """A two-layer source manifest whose layers are opaque bytes (the driver never reads them)."""
    layers = [
        Descriptor(
            media_type=mt.DOCKER_LAYER_GZIP if docker else mt.OCI_LAYER_GZIP,
            digest=put(store, f"{platform} layer {i}".encode()),
            size=len(f"{platform} layer {i}"),
        )
        for i in range(2)
    ]
    config_doc: dict[str, Any] = {"architecture": platform.architecture, "os": platform.os}
    if platform.variant:
        config_doc["variant"] = platform.variant
    config_doc |= {
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [dg.of_bytes(f"diff {d.digest}".encode()) for d in layers]},
        "history": HISTORY,
    }
    config_raw = json.dumps(config_doc, indent=2).encode()  # not canonical: assembly must re-serialise
    config = Descriptor.of(mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG, config_raw)
    put(store, config_raw)
    media_type = mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": config.to_dict(),
            "layers": [d.to_dict() for d in layers],
        },
        indent=3,
    ).encode()
    put(store, raw)
    return Descriptor.of(media_type, raw)


def publish_source(registry: MemoryRegistry, store: ContentStore, *, docker: bool, index: bool) -> None:
    """Push the source with plain verbs (no accel code under test involved)."""
    platforms = (AMD64, ARM64) if index else (AMD64,)
    manifests = [source_manifest(store, p, docker).with_(platform=p) for p in platforms]
    for m in manifests:
        doc = json.loads(store.read_bytes(m.digest))
        for blob in (doc["config"], *doc["layers"]):
            registry.push_blob(SOURCE, Descriptor.model_validate(blob), store)
        ref = SOURCE.with_digest(m.digest) if index else SOURCE
        registry.push_manifest(ref, store.read_bytes(m.digest), m.media_type)
    if index:
        media_type = mt.DOCKER_MANIFEST_LIST if docker else mt.OCI_INDEX
        raw = canonical_json(
            {"schemaVersion": 2, "mediaType": media_type, "manifests": [m.to_dict() for m in manifests]}
        )
        registry.push_manifest(SOURCE, raw, media_type)


def build(
    tmp_path: Path,
    *,
    registry: MemoryRegistry | None = None,
    docker: bool = False,
    index: bool = False,
    driver: Driver | None = None,
    options: img.BuildOptions | None = None,
) -> tuple[SourceImage, BuiltImage, ContentStore]:
    """Push a source (to `registry`, else a fresh one), resolve it, convert with `driver`, build."""
    registry = registry if registry is not None else MemoryRegistry()
    publish_source(registry, ContentStore(tmp_path / "source"), docker=docker, index=index)
    store = ContentStore(tmp_path / "work")
    source = img.resolve_source(registry, SOURCE, store)
    for layer in source.unique_layers():
        registry.fetch_blob(SOURCE, layer.descriptor, store)
    driver = driver or Relabel(RelabelOptions())
    converted = {
        layer.descriptor.digest: driver.convert_layer(LayerInput(layer.descriptor, layer.diff_id, store))
        for layer in source.unique_layers()
    }
    built = img.build_image(source, converted, driver, store, options or img.BuildOptions())
    return source, built, store
