"""Every externally visible name (media types, annotation keys) lives here, once."""

# --- media types -----------------------------------------------------------------------------------
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

NYDUS_BLOB = "application/vnd.oci.image.layer.nydus.blob.v1"
NYDUS_ARTIFACT_TYPE = "application/vnd.nydus.image.manifest.v1+json"
# accel's conversion cache: a blob a cached record needs locally besides its layer (a Nydus layer bootstrap)
ACCEL_CACHE_BLOB = "application/vnd.accel.cache.blob.v1"

MANIFEST_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEX_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
ALL_MANIFEST_TYPES = MANIFEST_TYPES | INDEX_TYPES

# --- annotations -----------------------------------------------------------------------------------
# eStargz (stargz-snapshotter docs/estargz.md)
ESTARGZ_TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
ESTARGZ_UNCOMPRESSED_SIZE = "io.containers.estargz.uncompressed-size"
# eStargz in-blob names: the TOC tar entry and the prefetch landmark files.
ESTARGZ_TOC_TAR_NAME = "stargz.index.json"
ESTARGZ_PREFETCH_LANDMARK = ".prefetch.landmark"
ESTARGZ_NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"

# zstd:chunked (containers/storage pkg/chunked)
ZSTD_CHUNKED_MANIFEST_CHECKSUM = "io.github.containers.zstd-chunked.manifest-checksum"
ZSTD_CHUNKED_MANIFEST_POSITION = "io.github.containers.zstd-chunked.manifest-position"
ZSTD_CHUNKED_TARSPLIT_POSITION = "io.github.containers.zstd-chunked.tarsplit-position"
# The older zstd:chunked keys: containers/storage <= 1.44 (podman 4.3) and stargz-snapshotter's
# estargz/zstdchunked package, which also puts ESTARGZ_TOC_DIGEST on the layer.
ZSTD_CHUNKED_LEGACY_MANIFEST_CHECKSUM = "io.containers.zstd-chunked.manifest-checksum"
ZSTD_CHUNKED_LEGACY_MANIFEST_POSITION = "io.containers.zstd-chunked.manifest-position"

# Nydus (nydus-snapshotter converter)
NYDUS_BLOB_ANNOTATION = "containerd.io/snapshot/nydus-blob"
NYDUS_BOOTSTRAP_ANNOTATION = "containerd.io/snapshot/nydus-bootstrap"
NYDUS_FS_VERSION_ANNOTATION = "containerd.io/snapshot/nydus-fs-version"
# zran (oci_ref) layers: the original gzip blob the Nydus meta blob points into (`sha256:...`)
NYDUS_REF_ANNOTATION = "containerd.io/snapshot/nydus-ref"

# accel's own provenance annotations
ACCEL_SOURCE_DIGEST = "io.accel.source.digest"
ACCEL_SOURCE_REFERENCE = "io.accel.source.reference"
ACCEL_DRIVER = "io.accel.driver"
ACCEL_DRIVER_VERSION = "io.accel.driver.version"
ACCEL_LAYER_SOURCE_DIGEST = "io.accel.layer.source-digest"
ACCEL_NYDUS_BUILDER_VERSION = "io.accel.nydus.builder.version"
# Conversion cache images (accel/cache.py). A record names its source layer under its driver's
# `source_digest_annotation`: ACCEL_LAYER_SOURCE_DIGEST, or ORIGINAL_CACHE_SOURCE_DIGEST for the driver
# whose records the original service's cache holds too.
ACCEL_CACHE_VERSION = "io.accel.cache.version"
ACCEL_CACHE_KEY = "io.accel.cache.key"  # Driver.cache_key(): driver, version and options
ACCEL_CACHE_RECORD = "io.accel.cache.record"  # JSON: the converted layer (descriptor, diff_id, facts, ...)
ACCEL_CACHE_BLOB_OF = "io.accel.cache.blob-of"  # on an ACCEL_CACHE_BLOB layer: its record's layer digest

# The original acceleration service's conversion cache (goharbor/acceleration-service `pkg/cache`), whose
# records are Nydus layers and so carry nydus-snapshotter's names.
ORIGINAL_CACHE_SOURCE_DIGEST = "containerd.io/snapshot/nydus-source-digest"
ORIGINAL_CACHE_VERSION = "containerd.io/snapshot/nydus-cache-version"

# Harbor accessory annotations (rule harbor_annotation)
HARBOR_DRIVER_NAME = "io.goharbor.artifact.v1alpha1.acceleration.driver.name"
HARBOR_DRIVER_VERSION = "io.goharbor.artifact.v1alpha1.acceleration.driver.version"
HARBOR_SOURCE_DIGEST = "io.goharbor.artifact.v1alpha1.acceleration.source.digest"
