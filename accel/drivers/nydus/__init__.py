"""Nydus (RAFS) driver, built with the real `nydus-image` builder; modelled on nydus-snapshotter's converter.

Per layer, the uncompressed tar is streamed through a FIFO into `nydus-image create --type tar-rafs
--blob-inline-meta`, which writes one "nydus blob": chunk data followed by a tar-like trailer holding the
layer's RAFS bootstrap (`image.boot`), blob metadata and, for RAFS v6, a TOC (`rafs.blob.toc`). The layer's
diff_id is the blob's own digest, as nydus-snapshotter records it. The bootstrap is pulled out of the trailer
into the content store so `finish` can `nydus-image merge` all of them (each named after its blob digest,
which merge uses as the blob id) into the image bootstrap, shipped as the last layer: a gzip tar holding
`image/image.boot`.

With `merge_manifest` the pushed root is one index holding, per platform, the source image (its manifest
rewritten with an empty gzip layer first, see `finish_image`) and then the Nydus manifest marked with
`artifactType: application/vnd.nydus.image.manifest.v1+json`, so one tag serves Nydus and plain clients.

Converted manifests carry `subject` (the source manifest) unless `with_referrer: false`, an option every
driver has here (`DriverOptions.with_referrer`; on by default, acceld's default is off).

With `oci_ref` (zran) the builder reads the *compressed* gzip source blob (`--type targz-ref`) and the Nydus
layer holds only metadata; its `containerd.io/snapshot/nydus-ref` annotation names the original gzip blob,
which the merged bootstrap uses as the data blob id, so that blob must stay in the target repository.

With `chunk_dict_ref` another Nydus image serves as chunk dictionary: `create` and `merge` get its image
bootstrap (`--chunk-dict bootstrap=PATH`) and store no chunk the dictionary already holds, pointing at the
dictionary's blobs instead. The reference is resolved outside the driver (`chunkdict`), which hands it a
`ChunkDict`. As in nydus-snapshotter, the manifest then lists the blobs the merged bootstrap
references, in its order: layer blobs and dictionary blobs, while a layer left without data of its own
(everything deduplicated, or only directories and whiteouts) is not listed.

Limits of nydus-image 2.2.0 worth knowing: it writes a file's xattrs in hash-map order, so a layer with a
file carrying two or more xattrs converts to different (equivalent) bytes on each run; its tar reader
rejects blank device numbers on FIFO headers, which this driver fills in on the way (not possible for
zran, which indexes the original bytes); `batch_size`, encryption and parent-bootstrap merges do not exist.
It also mishandles legal tars (issue 11): sparse entries, a directory after its child, a repeated path,
and it gives directories an upper layer only implies the defaults 0755 root mtime 0, which merge lets win
over the lower layer's. So the layer reaches it normalised (`accel.tarnormalize`: sparse files expanded,
parents first, the last entry of a path only; a hostile layer refused before it reads the entry showing
it), and `finish` merges a chunkless patch bootstrap after each layer with implied directories
(`directories`); zran layers that would need normalising are refused. Its merge keeps a directory's
children under the non-directory that replaces it, and brings them back when a later layer makes the path
a directory again (issue 20, case H): `finish` merges a chunkless patch emptying the path before such a
layer. Its panics are reported in one line (`builder.failure_message`).

Modules: `options` (NydusOptions), `tools` (locating nydus-image), `builder` (the nydus-image process),
`tar` (tar fix-ups for the builder), `trailer` (blob trailer entries, the bootstrap layer), `chunkdict`
(resolving `chunk_dict_ref`), `history`, `merge_manifest` (the OCI variant of `merge_manifest`), `original`
(original-service cache records), `directories` (merge patches for implied and returning directories),
`facts` (NydusLayerFacts, what `finish` needs of each converted layer), `driver` (NydusDriver), `readback`
(nydus-image check, listing and unpack) and `reader` (an image read back, one platform at a time, through
`readback`: what `accel.verify` asks).
"""

from accel.drivers.nydus.chunkdict import ChunkDict, resolve_chunk_dict
from accel.drivers.nydus.driver import NydusDriver
from accel.drivers.nydus.history import BOOTSTRAP_HISTORY, CHUNK_DICT_HISTORY
from accel.drivers.nydus.merge_manifest import EMPTY_GZIP_LAYER, EMPTY_LAYER_HISTORY
from accel.drivers.nydus.options import NydusOptions
from accel.drivers.nydus.trailer import (
    BOOTSTRAP_TAR_NAME,
    ENTRY_BOOTSTRAP,
    ENTRY_TOC,
    TrailerEntry,
    extract_trailer_entry,
)

# What `accel.drivers` looks up under this package's name.
DRIVER = NydusDriver

__all__ = [
    "BOOTSTRAP_HISTORY",
    "BOOTSTRAP_TAR_NAME",
    "CHUNK_DICT_HISTORY",
    "DRIVER",
    "EMPTY_GZIP_LAYER",
    "EMPTY_LAYER_HISTORY",
    "ENTRY_BOOTSTRAP",
    "ENTRY_TOC",
    "ChunkDict",
    "NydusDriver",
    "NydusOptions",
    "TrailerEntry",
    "extract_trailer_entry",
    "resolve_chunk_dict",
]
