"""`ZstdChunkedDriver` and its options."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from accel import constants as mt
from accel.drivers.base import ConvertedLayer, Driver, DriverOptions, LayerInput
from accel.drivers.zstdchunked.reader import ZstdChunkedReader
from accel.drivers.zstdchunked.writer import Variant, write_zstd_chunked
from accel.errors import DigestMismatch
from accel.oci import Descriptor


class ZstdChunkedOptions(DriverOptions):
    level: int = Field(default=3, ge=1, le=22)
    # Which readers pull the layer in part (writer.Variant): "containers-storage" (podman, CRI-O) or
    # "stargz" (containerd + stargz-snapshotter, podman 4.3). Changes the blob, so it is in the cache key.
    variant: Variant = "containers-storage"
    # zstd layers only exist in OCI manifests; the image assembler converts Docker manifests when set.
    docker2oci: bool = True

    def output_options(self) -> dict[str, Any]:
        options = super().output_options()
        # The default variant writes the bytes written before the option existed: keep their cache key.
        if options.get("variant") == "containers-storage":
            del options["variant"]
        return options


class ZstdChunkedDriver(Driver):
    name: ClassVar[str] = "zstdchunked"
    options_model: ClassVar[type[DriverOptions]] = ZstdChunkedOptions
    implementation_version: ClassVar[str] = "1"
    reader: ClassVar[ZstdChunkedReader] = ZstdChunkedReader()  # how accel.verify reads a layer back
    layer_media_types: ClassVar[frozenset[str]] = frozenset({mt.OCI_LAYER_ZSTD})

    @property
    def zstd_options(self) -> ZstdChunkedOptions:
        assert isinstance(self.options, ZstdChunkedOptions)
        return self.options

    def convert_layer(self, layer: LayerInput) -> ConvertedLayer:
        with layer.store.writer() as blob:
            # The writer hashes every byte it puts in the frames, the whole tar stream to its end, so one
            # check covers both the source (does it match its DiffID?) and the writer (does the blob
            # decompress to the source?): the reader need not hash the same bytes a second time.
            with layer.open_tar(check_diff_id=False) as tar_stream:
                result = write_zstd_chunked(
                    tar_stream,
                    blob,
                    self.zstd_options.level,
                    variant=self.zstd_options.variant,
                    limit=layer.entry_limit(),
                )
            if result.uncompressed_digest != layer.diff_id:
                raise DigestMismatch(
                    layer.diff_id,
                    result.uncompressed_digest,
                    f"layer {layer.descriptor.digest} (its tar, as the zstd:chunked blob holds it)",
                )
        assert blob.digest is not None
        descriptor = Descriptor(
            media_type=mt.OCI_LAYER_ZSTD, digest=blob.digest, size=blob.size, annotations=result.annotations
        )
        return ConvertedLayer(source=layer.descriptor, descriptor=descriptor, diff_id=layer.diff_id)

    @classmethod
    def is_converted(cls, layers: list[Descriptor]) -> bool:
        return bool(layers) and all(ZstdChunkedReader.is_zstd_chunked(layer) for layer in layers)
