"""The image value types the engine passes around: the source image as resolved, the converted image as built.

They live here, not in `accel.image`, so drivers (`accel.drivers.base`) and image assembly can both
import them; `accel.image` re-exports them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from accel import constants as mt
from accel.oci import Descriptor, Platform


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class SourceLayer(_Frozen):
    descriptor: Descriptor
    diff_id: str


class SourceManifest(_Frozen):
    """One platform of the source; its manifest and config bytes are in the content store."""

    descriptor: Descriptor  # platform set when it came from an index
    config: Descriptor
    layers: tuple[SourceLayer, ...]
    annotations: dict[str, str] = {}

    @property
    def platform(self) -> Platform | None:
        return self.descriptor.platform


class SourceImage(_Frozen):
    reference: str  # as given, normalised
    root: Descriptor  # manifest or index
    manifests: tuple[SourceManifest, ...]
    annotations: dict[str, str] = {}  # of the root document

    @property
    def is_index(self) -> bool:
        return self.root.media_type in mt.INDEX_TYPES

    def unique_layers(self) -> list[SourceLayer]:
        seen: dict[str, SourceLayer] = {}
        for m in self.manifests:
            for layer in m.layers:
                seen.setdefault(layer.descriptor.digest, layer)
        return list(seen.values())


class BuiltManifest(_Frozen):
    descriptor: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    companions: tuple[Descriptor, ...] = ()  # pushed with the image, listed by no manifest


class BuiltImage(_Frozen):
    """A converted image whose every blob and document is in the content store."""

    root: Descriptor
    manifests: tuple[BuiltManifest, ...]

    def blobs(self) -> list[Descriptor]:
        seen: dict[str, Descriptor] = {}
        for m in self.manifests:
            for d in (m.config, *m.layers, *m.companions):
                seen.setdefault(d.digest, d)
        return list(seen.values())


__all__ = ["BuiltImage", "BuiltManifest", "SourceImage", "SourceLayer", "SourceManifest"]
