"""`NydusLayerFacts`: what `NydusDriver.finish` needs to know of each converted layer besides its descriptor.

Conversion cache records carry it as JSON (`Driver.facts_model`). Records written before it existed kept
the same keys in a string map (`extra`): those validate into this model unchanged (`version` defaults to
1, `role` to "layer"). Change a field's meaning or name only with a new `version`; a record of another
version then fails validation, which the cache treats as a miss.
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from accel import digest as dg
from accel.drivers.base import ConvertedLayer, LayerFacts
from accel.errors import DriverError


class NydusLayerFacts(LayerFacts):
    version: Literal[1] = 1
    # layer: a converted source layer; bootstrap: the merged bootstrap layer `finish` adds; chunk-dict: a
    # chunk dictionary blob the merged bootstrap references (no source layer, no bootstrap of its own).
    role: Literal["layer", "bootstrap", "chunk-dict"] = "layer"
    bootstrap: str | None = None  # the layer's RAFS bootstrap in the store (for `bootstrap`: the merged one)
    fs_version: Literal["5", "6"] | None = None  # RAFS version of the bootstrap
    blob_toc_digest: str | None = None  # the blob's TOC entry (RAFS v6), which a zran merge names
    directories: str | None = None  # the layer's directory table in the store (`directories`)
    chunk_dict: str | None = None  # the chunk dictionary image the layer was built against

    @field_validator("bootstrap", "blob_toc_digest", "directories", "chunk_dict")
    @classmethod
    def _digest(cls, value: str | None) -> str | None:
        return None if value is None else dg.validate(value)

    @model_validator(mode="after")
    def _bootstrap_unless_dictionary(self) -> NydusLayerFacts:
        if self.role != "chunk-dict" and (self.bootstrap is None or self.fs_version is None):
            raise ValueError(f"a nydus {self.role} needs its bootstrap and fs_version")
        return self

    @property
    def bootstrap_digest(self) -> str:
        if self.bootstrap is None:
            raise DriverError(f"nydus {self.role} has no bootstrap")
        return self.bootstrap


def facts_of(layer: ConvertedLayer) -> NydusLayerFacts:
    """The Nydus facts of a converted layer; an error for a layer another driver converted."""
    if not isinstance(layer.facts, NydusLayerFacts):
        raise DriverError(f"layer {layer.descriptor.digest} was not converted by the nydus driver")
    return layer.facts
