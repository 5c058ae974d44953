"""Records in the original service's conversion cache (goharbor/acceleration-service `pkg/cache`).

Its records are bare nydus blobs annotated with the source layer digest: no driver options, no separate
bootstrap. They are taken to be what the Nydus driver produces with its default options, and the layer
bootstrap that `finish` needs is pulled out of the blob trailer, as conversion records it.
"""

from __future__ import annotations

from accel.drivers.base import ConvertedLayer
from accel.drivers.nydus.facts import NydusLayerFacts
from accel.drivers.nydus.trailer import ENTRY_BOOTSTRAP, bootstrap_blob, extract_trailer_entry, nydus_blob
from accel.errors import InvalidImage
from accel.oci import Descriptor
from accel.store import ContentStore


def converted_from_original_record(
    store: ContentStore, blob: Descriptor, source: Descriptor, fs_version: str
) -> ConvertedLayer:
    """The ConvertedLayer for an original-service record whose nydus blob `blob` is in the store."""
    bootstrap = extract_trailer_entry(store, blob.digest, ENTRY_BOOTSTRAP)
    if (fs_version == "6") != (bootstrap.toc_digest is not None):
        raise InvalidImage(f"cached Nydus blob {blob.digest} is not RAFS v{fs_version}")
    facts = NydusLayerFacts(
        bootstrap=bootstrap.digest, fs_version=fs_version, blob_toc_digest=bootstrap.toc_digest or None
    )
    return ConvertedLayer(
        source=source,
        descriptor=nydus_blob(blob.digest, blob.size),
        diff_id=blob.digest,
        facts=facts,
        local_blobs=(bootstrap_blob(store, bootstrap.digest),),
    )
