"""`merge_manifest`: the OCI variant of a source manifest that the merged index lists beside the Nydus one."""

from __future__ import annotations

from isal import igzip

from accel import constants as mt
from accel import digest as dg
from accel import mutate, oci
from accel.model import BuiltManifest, SourceManifest
from accel.store import ContentStore

# merge_manifest: the classic 32-byte gzip of an empty tar (1024 zero bytes), put first in the OCI manifests
# of the merged index as acceld does: it gives their layers chain IDs of their own, so a runtime never
# mixes up the unpacked layers of this OCI variant with those of the plain source image, while the file
# tree stays the same. Every runtime reads gzip tars (unlike `application/vnd.oci.empty.v1+json`).
EMPTY_GZIP_LAYER = bytes.fromhex("1f8b080000096e8800ff621805a360148c5800080000ffff2eafb5ef00040000")
EMPTY_GZIP_LAYER_DIFF_ID = dg.of_bytes(igzip.decompress(EMPTY_GZIP_LAYER))
EMPTY_LAYER_HISTORY = {"created_by": "Nydus Converter", "comment": "Empty layer of the merged OCI manifest"}


def _oci_variant(source: SourceManifest, store: ContentStore) -> BuiltManifest:
    """The source manifest with the empty gzip layer first, its config's diff_ids and history to match.

    Media types stay those of the source (a Docker manifest stays Docker); everything else in the
    manifest, annotations included, is kept.
    """
    docker = source.descriptor.media_type == mt.DOCKER_MANIFEST
    empty_layer = oci.Descriptor.of(mt.DOCKER_LAYER_GZIP if docker else mt.OCI_LAYER_GZIP, EMPTY_GZIP_LAYER)
    store.put_bytes(EMPTY_GZIP_LAYER, empty_layer.digest)

    config = oci.ImageConfig.parse(store.read_bytes(source.config.digest))
    history = config.doc.get("history")
    config = config.with_diff_ids(
        [EMPTY_GZIP_LAYER_DIFF_ID, *config.diff_ids],
        [dict(EMPTY_LAYER_HISTORY), *history] if history else None,
    )
    config_desc = oci.Descriptor.of(source.config.media_type, config.raw)
    store.put_bytes(config.raw, config_desc.digest)

    manifest = mutate.edit_manifest(
        store.read_bytes(source.descriptor.digest),
        source.descriptor.media_type,
        config=config_desc,
        layers=[empty_layer, *(layer.descriptor for layer in source.layers)],
    )
    descriptor = mutate.store_document(manifest, store, platform=source.platform)
    return BuiltManifest(
        descriptor=descriptor,
        config=config_desc,
        layers=(empty_layer, *(layer.descriptor for layer in source.layers)),
    )
