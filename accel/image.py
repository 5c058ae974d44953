"""Source image resolution and converted image assembly.

`resolve_source` reads the source root (manifest or index), the selected platforms' manifests and configs
into the content store, byte-exact. `assemble_manifest` turns one platform's `PlatformDraft` into a manifest
and config; `assemble_index` wraps several into an index. Nothing here speaks HTTP except through the client
passed in, and nothing here knows a layer format.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from accel import constants as mt
from accel import mutate
from accel.drivers.base import ConvertedLayer, Driver, PlatformDraft
from accel.errors import InvalidImage, UnsupportedMediaType
from accel.model import BuiltImage, BuiltManifest, SourceImage, SourceLayer, SourceManifest
from accel.oci import Descriptor, ImageConfig, Index, Manifest, Platform, detect_media_type
from accel.reference import Reference
from accel.registry.interfaces import ManifestSource
from accel.store import ContentStore

log = logging.getLogger(__name__)

# Docker buildx attaches attestations as index children with this annotation; they are not images.
_DOCKER_REFERENCE_TYPE = "vnd.docker.reference.type"


def _is_image_child(desc: Descriptor) -> bool:
    if desc.media_type not in mt.MANIFEST_TYPES:
        return False
    if desc.annotation(_DOCKER_REFERENCE_TYPE):
        return False
    return not (desc.platform and desc.platform.os == "unknown")


def _load_manifest(
    client: ManifestSource, ref: Reference, desc: Descriptor, raw: bytes, store: ContentStore
) -> SourceManifest:
    manifest = Manifest.parse(raw, desc.media_type)
    store.put_bytes(raw, desc.digest)
    config_desc = manifest.config
    config_raw = client.fetch_blob_bytes(ref, config_desc)
    store.put_bytes(config_raw, config_desc.digest)
    config = ImageConfig.parse(config_raw)
    layers = manifest.layers
    if len(layers) != len(config.diff_ids):
        raise InvalidImage(
            f"manifest {desc.digest} has {len(layers)} layers but its config lists "
            f"{len(config.diff_ids)} diff_ids"
        )
    platform = desc.platform or config.platform
    return SourceManifest(
        descriptor=desc.with_(platform=platform),
        config=config_desc,
        layers=tuple(
            SourceLayer(descriptor=d, diff_id=i) for d, i in zip(layers, config.diff_ids, strict=True)
        ),
        annotations=manifest.annotations,
    )


def resolve_source(
    client: ManifestSource, ref: Reference, store: ContentStore, platforms: Sequence[Platform] = ()
) -> SourceImage:
    root_desc, raw = client.fetch_manifest(ref)
    media_type = detect_media_type(raw, root_desc.media_type)
    root_desc = root_desc.with_(media_type=media_type)
    if media_type in mt.MANIFEST_TYPES:
        m = _load_manifest(client, ref, root_desc, raw, store)
        if platforms and m.platform and not any(p.matches(m.platform) for p in platforms):
            raise InvalidImage(
                f"{ref} is {m.platform}, which is not among converter.platforms "
                f"({', '.join(map(str, platforms))})"
            )
        return SourceImage(reference=str(ref), root=root_desc, manifests=(m,), annotations=m.annotations)
    if media_type not in mt.INDEX_TYPES:
        raise UnsupportedMediaType(f"{ref}: unsupported root media type {media_type}")
    index = Index.parse(raw, media_type)
    store.put_bytes(raw, root_desc.digest)
    selected = []
    for child in index.manifests:
        if not _is_image_child(child):
            continue
        if platforms and not (child.platform and any(p.matches(child.platform) for p in platforms)):
            continue
        child_desc, child_raw = client.fetch_manifest(ref.with_digest(child.digest))
        selected.append(_load_manifest(client, ref, child.with_(size=child_desc.size), child_raw, store))
    if not selected:
        wanted = ", ".join(map(str, platforms)) or "any"
        raise InvalidImage(f"{ref}: no image manifest in the index matches platforms {wanted}")
    return SourceImage(
        reference=str(ref), root=root_desc, manifests=tuple(selected), annotations=index.annotations
    )


def _layer_media_type(layer: ConvertedLayer, oci: bool) -> str:
    if not oci and layer.descriptor.media_type == mt.OCI_LAYER_GZIP:
        return mt.DOCKER_LAYER_GZIP
    return layer.descriptor.media_type


def draft_for(
    source: SourceImage, manifest: SourceManifest, layers: Sequence[ConvertedLayer], store: ContentStore
) -> PlatformDraft:
    config = ImageConfig.parse(store.read_bytes(manifest.config.digest))
    return PlatformDraft(
        source_manifest=manifest.descriptor,
        source_reference=source.reference,
        config=config,
        layers=tuple(layers),
    )


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    harbor_annotation: bool = False  # Harbor's acceleration accessory annotations
    subject: bool = True  # OCI `subject` → the source manifest, so the target is a referrer of it


def _provenance(
    source: Descriptor, source_reference: str, driver: Driver, options: BuildOptions
) -> dict[str, str]:
    return mutate.provenance(
        source.digest, source_reference, driver.name, driver.version, harbor=options.harbor_annotation
    )


def assemble_manifest(
    draft: PlatformDraft, driver: Driver, store: ContentStore, options: BuildOptions = BuildOptions()
) -> BuiltManifest:
    """Write the converted config and manifest for one platform into the store."""
    oci = driver.writes_oci(draft.source_manifest.media_type)
    history = list(draft.history) if draft.history is not None else draft.config.doc.get("history")
    config = draft.config.with_diff_ids([layer.diff_id for layer in draft.layers], history)
    config_desc = Descriptor.of(mt.OCI_CONFIG if oci else mt.DOCKER_CONFIG, config.raw)
    store.put_bytes(config.raw, config_desc.digest)

    layers = [
        layer.descriptor.with_(media_type=_layer_media_type(layer, oci), platform=None)
        for layer in draft.layers
    ]
    if oci:
        manifest = mutate.manifest(
            mt.OCI_MANIFEST,
            config_desc,
            layers,
            artifact_type=draft.artifact_type or None,
            subject=draft.source_manifest if options.subject and driver.writes_subject() else None,
            annotations=_provenance(draft.source_manifest, draft.source_reference, driver, options)
            | draft.manifest_annotations,
        )
    else:
        manifest = mutate.manifest(mt.DOCKER_MANIFEST, config_desc, layers)
    descriptor = mutate.store_document(manifest, store, platform=draft.source_manifest.platform)
    companions = tuple(c for layer in draft.layers for c in layer.companions)
    return BuiltManifest(
        descriptor=descriptor, config=config_desc, layers=tuple(layers), companions=companions
    )


def assemble_index(
    source: SourceImage,
    manifests: Sequence[BuiltManifest],
    driver: Driver,
    store: ContentStore,
    options: BuildOptions = BuildOptions(),
) -> Descriptor:
    entries = [m.descriptor for m in manifests]
    if driver.writes_oci(source.root.media_type):
        index = mutate.index(
            mt.OCI_INDEX,
            entries,
            subject=source.root if options.subject and driver.writes_subject() else None,
            annotations=_provenance(source.root, source.reference, driver, options),
        )
    else:
        index = mutate.index(mt.DOCKER_MANIFEST_LIST, entries)
    return mutate.store_document(index, store)


def build_image(
    source: SourceImage,
    converted: dict[str, ConvertedLayer],
    driver: Driver,
    store: ContentStore,
    options: BuildOptions = BuildOptions(),
) -> BuiltImage:
    """Every platform: draft → driver.finish → manifest; then an index when the source was one; then
    driver.finish_image, which may reshape the whole image."""
    built = []
    for manifest in source.manifests:
        layers = [converted[layer.descriptor.digest] for layer in manifest.layers]
        draft = driver.finish(draft_for(source, manifest, layers, store), store)
        built.append(assemble_manifest(draft, driver, store, options))
    root = (
        assemble_index(source, built, driver, store, options)
        if source.is_index
        else built[0].descriptor.with_(platform=None)
    )
    return driver.finish_image(source, BuiltImage(root=root, manifests=tuple(built)), store)


def produced_by_accel(source: SourceImage) -> str | None:
    """The driver name when the source itself is one of our outputs (a push event caused by our own push)."""
    for found in (source.annotations, *(m.annotations for m in source.manifests)):
        if mt.ACCEL_DRIVER in found:
            return found[mt.ACCEL_DRIVER]
    return None
