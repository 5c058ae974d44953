"""Configs in the shape of acceld's sample configs (its misc/config/*.yaml), written out from the keys its
config struct and samples document (our own text, not copies): `SAMPLES` names each after its sample file."""

# The shape of acceld's misc/config samples: server, metric, provider (two sources, one with every key
# commented out), converter with one driver and two rules.
COMMON = """
server:
  name: API
  host: 0.0.0.0
  port: 2077
metric:
  enabled: true
provider:
  source:
    hub.harbor.com:
      insecure: false
      webhook:
        auth_header: header
    localhost:
  work_dir: /tmp
  gcpolicy:
      threshold: 1000MB
  cache_size: 200
  cache_version: v1
converter:
  worker: 5
  harbor_annotation: true
"""

ESTARGZ = (
    COMMON
    + """
  driver:
    type: estargz
    config:
      docker2oci: true
  rules:
    - tag_suffix: -esgz
"""
)

ESTARGZ_ZSTDCHUNKED = (
    COMMON
    + """
  driver:
    type: estargz
    config:
      docker2oci: true
      compression: zstdchunked
  rules:
    - tag_suffix: -estargz-zstdchunked
"""
)

NYDUS_REF = (
    COMMON
    + """
  driver:
    type: nydus
    config:
      work_dir: /tmp
      oci_ref: true
      with_referrer: true
  rules:
    - tag_suffix: -nydus-oci-ref
    - cache_tag: nydus-cache
"""
)

# Every option the nydus sample lists, with the values its comments give.
NYDUS_ALL = (
    COMMON
    + """
  driver:
    type: nydus
    config:
      work_dir: /tmp
      builder: nydus-image
      oci_ref: false
      with_referrer: true
      fs_version: 6
      compressor: zstd
      merge_manifest: false
      chunk_dict_ref: ""
      docker2oci: false
      fs_align_chunk: false
      fs_chunk_size: 0x100000
      prefetch_patterns: /
      backend_force_push: false
      backend_type: localfs
      backend_config: '{"dir":"/path/to/dir"}'
  rules:
    - tag_suffix: -nydus
    - cache_tag: nydus-cache
"""
)

# The plain Nydus sample: a Nydus image with `with_referrer`, the other options left at their defaults.
NYDUS = (
    COMMON
    + """
  driver:
    type: nydus
    config:
      work_dir: /tmp
      with_referrer: true
  rules:
    - tag_suffix: -nydus
    - cache_tag: nydus-cache
"""
)

SAMPLES = {
    "config.estargz.yaml": ESTARGZ,
    "config.estargz.zstdchunked.yaml": ESTARGZ_ZSTDCHUNKED,
    "config.nydus.ref.yaml": NYDUS_REF,
    "config.nydus.yaml": NYDUS,
}
