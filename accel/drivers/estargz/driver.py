"""`EStargzDriver` and its options."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, field_validator

from accel import constants as mt
from accel.drivers.base import (
    ACCELD_ONLY_KEYS,
    ConvertedLayer,
    Driver,
    DriverOptions,
    LayerInput,
    oci_unless_docker_kept,
)
from accel.drivers.estargz.builder import BlobBuilder
from accel.drivers.estargz.entries import clean_name, source_entries
from accel.drivers.estargz.reader import EStargzReader, is_estargz_layer
from accel.oci import Descriptor

# Bump when the bytes produced for the same input and options change.
IMPLEMENTATION_VERSION = "2"  # 2: incompressible members keep ISA-L's fast output (members.py)

DEFAULT_CHUNK_SIZE = 4 << 20  # the reference writer's default


# acceld runs zstd:chunked as `type: estargz` with `compression: zstdchunked` (`EStargzDriver.acceld_driver`).
_ACCELD_COMPRESSION = "compression"
_ACCELD_ZSTDCHUNKED = "zstdchunked"  # the value, and accel's driver that runs it
_KEYS_CARRIED_TO_ZSTDCHUNKED = frozenset({"docker2oci", "with_referrer"}) | ACCELD_ONLY_KEYS
# acceld's zstd:chunked came from stargz-snapshotter's converter: the zstdchunked driver's stargz variant.
_ZSTDCHUNKED_VARIANT = "variant"
_ACCELD_ZSTDCHUNKED_VARIANT = "stargz"


class EStargzOptions(DriverOptions):
    compression_level: int = 9
    chunk_size: int = DEFAULT_CHUNK_SIZE
    prioritized_files: list[str] = Field(default_factory=list)
    docker2oci: bool = True

    # acceld's compression switch, which `EStargzDriver.acceld_driver` takes out before the options exist.
    acceld_keys: ClassVar[frozenset[str]] = frozenset({_ACCELD_COMPRESSION})

    @field_validator("compression_level")
    @classmethod
    def _check_level(cls, value: int) -> int:
        if not 0 <= value <= 9:
            raise ValueError(f"compression_level must be a gzip level from 0 to 9, got {value}")
        return value

    @field_validator("chunk_size")
    @classmethod
    def _check_chunk_size(cls, value: int) -> int:
        if value <= 0:
            raise ValueError(f"chunk_size must be a positive number of bytes, got {value}")
        return value

    @field_validator("prioritized_files")
    @classmethod
    def _check_prioritized(cls, value: list[str]) -> list[str]:
        for name in value:
            if not clean_name(name):
                raise ValueError(f"prioritized_files entries must name a file, got {name!r}")
        return value


class EStargzDriver(Driver):
    name: ClassVar[str] = "estargz"
    options_model: ClassVar[type[DriverOptions]] = EStargzOptions
    implementation_version: ClassVar[str] = IMPLEMENTATION_VERSION
    reader: ClassVar[EStargzReader] = EStargzReader()  # how accel.verify reads a layer back
    layer_media_types: ClassVar[frozenset[str]] = frozenset({mt.OCI_LAYER_GZIP})
    options: EStargzOptions

    @classmethod
    def acceld_driver(cls, config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """acceld's `type: estargz` + `compression: zstdchunked` is accel's zstdchunked driver writing what
        acceld wrote: stargz-snapshotter's zstd:chunked (`variant: stargz`, with the stargz TOC digest, which
        containerd's stargz-snapshotter mounts lazily). `type: zstdchunked` alone writes the current format
        (podman, CRI-O, containers/storage >= 1.45).
        """
        config = dict(config)
        compression = config.pop(_ACCELD_COMPRESSION, None)
        if compression in (None, "", cls.name):
            return cls.name, config
        if compression != _ACCELD_ZSTDCHUNKED:
            raise ValueError(
                f"config.compression {compression!r} is not a compression of the estargz driver "
                "(acceld knows estargz, the default, and zstdchunked)"
            )
        others = sorted(set(config) - _KEYS_CARRIED_TO_ZSTDCHUNKED)
        if others:
            raise ValueError(
                f"config.{others[0]}: not an option of zstd:chunked (`compression: zstdchunked` runs accel's "
                "zstdchunked driver, `variant: stargz`; its options: level, docker2oci, with_referrer)"
            )
        return _ACCELD_ZSTDCHUNKED, {**config, _ZSTDCHUNKED_VARIANT: _ACCELD_ZSTDCHUNKED_VARIANT}

    def writes_oci(self, source_media_type: str) -> bool:
        # Layers are plain gzip tars, which Docker manifests can list too: `docker2oci` decides.
        return oci_unless_docker_kept(self.options.docker2oci, source_media_type)

    def __init__(self, options: DriverOptions) -> None:
        if not isinstance(options, EStargzOptions):
            raise TypeError(f"EStargzDriver needs EStargzOptions, got {type(options).__name__}")
        super().__init__(options)

    @classmethod
    def is_converted(cls, layers: list[Descriptor]) -> bool:
        return bool(layers) and all(is_estargz_layer(layer) for layer in layers)

    def convert_layer(self, layer: LayerInput) -> ConvertedLayer:
        opts = self.options
        # Source entries are read inside the writer block: a DiffID mismatch (raised when the source
        # stream ends) aborts the blob instead of committing it.
        with layer.store.writer() as out, source_entries(layer, opts.prioritized_files) as entries:
            builder = BlobBuilder(out, opts.compression_level, opts.chunk_size)
            try:
                for entry in entries:
                    builder.add(entry)
                result = builder.finish()
            finally:
                builder.close()
        assert out.digest is not None
        descriptor = Descriptor(
            media_type=mt.OCI_LAYER_GZIP,
            digest=out.digest,
            size=out.size,
            annotations={
                mt.ESTARGZ_TOC_DIGEST: result.toc_digest,
                mt.ESTARGZ_UNCOMPRESSED_SIZE: str(result.uncompressed_size),
            },
        )
        return ConvertedLayer(source=layer.descriptor, descriptor=descriptor, diff_id=result.diff_id)
