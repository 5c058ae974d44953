"""The one small protocol every format driver implements.

A driver converts one layer at a time (`convert_layer`, pure function of the source layer and options, so
it can be cached and retried per layer), may touch each platform's image once at the end (`finish`, where
Nydus merges bootstraps) and may reshape the assembled image as a whole (`finish_image`, where Nydus merges
the OCI and Nydus manifests into one index). Drivers only see the content store, never the registry.

The engine asks drivers, never their names or options: `writes_oci` (media types of the output),
`source_digest_annotation`, `facts_model` (the typed facts a converted layer carries for `finish`, which
the conversion cache stores) and the `*_original_record` pair (conversion cache records), `acceld_driver`
(acceld's spelling of a driver in its config), `dependencies` / `resolve_dependency` / `bind` (images a
driver needs resolved through the registry before converting, such as a Nydus chunk dictionary; see
`accel.drivers.dependencies`), `ConvertedLayer.local_blobs` (blobs `finish` needs in the content store,
which the conversion cache carries with a record), `reader` (how its output is read back, beside its writer).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, SerializeAsAny

from accel import compression, progress
from accel import constants as mt
from accel.drivers.reader import FormatReader
from accel.model import BuiltImage, SourceImage
from accel.oci import Descriptor, ImageConfig, Platform
from accel.registry.interfaces import BlobStager, ManifestFetcher
from accel.store import ContentStore
from accel.tarstream import EntryLimit

# Keys of every acceld `converter.driver.config` that accel ignores: acceld put a per-driver scratch dir
# there, accel uses provider.work_dir for everything.
ACCELD_ONLY_KEYS = frozenset({"work_dir"})


class DriverOptions(BaseModel):
    """Base of each driver's options; unknown keys are config errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # OCI `subject` → the source manifest on converted manifests (`Driver.writes_subject`), so the target is
    # a referrer of its source (Harbor lists it as an accessory). acceld's Nydus option, for every driver
    # here; on by default (acceld: off, and its eStargz never wrote one).
    with_referrer: bool = True

    # Keys accepted besides the fields: acceld's aliases and acceld options refused by name.
    acceld_keys: ClassVar[frozenset[str]] = frozenset()
    # Options that never change a converted layer's bytes (where the builder lives, manifest-level choices):
    # left out of `Driver.cache_key()`, so records and cached results are shared across them.
    not_in_output: ClassVar[frozenset[str]] = frozenset({"docker2oci", "with_referrer"})

    @classmethod
    def accepted_keys(cls) -> frozenset[str]:
        return frozenset(cls.model_fields) | cls.acceld_keys

    def output_options(self) -> dict[str, Any]:
        """The options that decide a converted layer's bytes (JSON values)."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in self.not_in_output}


@dataclasses.dataclass(frozen=True)
class LayerInput:
    """A source layer whose compressed blob is in the content store, or on its way there: its pull in this
    process still writes it (`ContentStore.open_following`), and the conversion reads behind it."""

    descriptor: Descriptor  # as in the source manifest
    diff_id: str  # from the source config; checked while the tar is read
    store: ContentStore
    limits: compression.ExpansionLimits | None = None  # how far the tar may expand (decompression bombs)

    @property
    def path(self) -> Path:
        """The stored blob, once its pull committed it (for a builder that reads the file itself)."""
        return self.store.wait_for(self.descriptor.digest)

    @contextlib.contextmanager
    def open_tar(self, check_diff_id: bool = True) -> Iterator[BinaryIO]:
        """The uncompressed tar stream; its digest is verified against `diff_id` when the block ends, unless
        the caller hashes every byte itself and checks `diff_id` (`check_diff_id=False`)."""
        expected = self.diff_id if check_diff_id else None
        digest = self.descriptor.digest
        raw = self.store.open_following(digest)
        if (meter := progress.current()) is not None:
            # Counted on the thread that reads ahead (it does not see this context): bytes converted.
            raw = progress.CountingReader(raw, meter)  # type: ignore[assignment]
        with compression.open_uncompressed(
            self.store.path(digest),
            self.descriptor.media_type,
            expected,
            self.limits,
            raw=raw,
            compressed_size=self.descriptor.size,
        ) as f:
            yield f

    def entry_limit(self) -> EntryLimit | None:
        """converter.limits.max_entries for this layer, which every walk of its tar counts entries against
        (`TarScanner(..., limit)`, or `EntryLimit.check` where a driver walks the tar otherwise)."""
        return None if self.limits is None else self.limits.entry_limit(self.descriptor.digest)


class LayerFacts(BaseModel):
    """Base of a driver's own facts about a converted layer, which its `finish` needs beyond the descriptor
    (for example where the layer's metadata is in the store). A driver declares its subclass as
    `Driver.facts_model`; the conversion cache stores `model_dump(mode="json")` with the record and reads it
    back through `facts_model`, so a subclass keeps its field names (or reads older records itself) and
    carries a `version` field that says which shape it has: a record of another version is a cache miss."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConvertedLayer(BaseModel):
    """Result of `convert_layer`: small, JSON-serialisable, the blob itself stays in the store."""

    model_config = ConfigDict(frozen=True)

    source: Descriptor  # the source layer it came from
    descriptor: Descriptor  # the converted blob (digest, size, media type, annotations)
    diff_id: str  # digest of the converted layer's uncompressed content
    # The driver's facts for `finish` (an instance of its `facts_model`), None for a driver that needs none.
    # SerializeAsAny: dumps keep the subclass's fields.
    facts: SerializeAsAny[LayerFacts] | None = None
    # Blobs `finish` needs in the content store besides the layer itself (a Nydus layer bootstrap); a
    # conversion cache record carries them.
    local_blobs: tuple[Descriptor, ...] = ()
    # Blobs the target repository must hold although no manifest lists them (Nydus zran layers read their
    # data from the original gzip blobs).
    companions: tuple[Descriptor, ...] = ()


# Bump when ConvertedLayer gains or changes fields: results persisted by an older version must not be reused.
CONVERTED_LAYER_SCHEMA = "3"  # 3: `facts` (a driver's typed model) replaced the `extra` string map


@dataclasses.dataclass(frozen=True)
class PlatformDraft:
    """One platform's converted image before its manifest is written: the converted layers, the source config
    and what the manifest will add. `finish` may change it; `accel.image.assemble_manifest` writes it. (Not
    a plan: what it holds is already converted, only its manifest and config are still to be written.)"""

    source_manifest: Descriptor
    source_reference: str
    config: ImageConfig  # the *source* config; image assembly rewrites diff_ids/history from `layers`
    layers: tuple[ConvertedLayer, ...]
    history: tuple[dict[str, Any], ...] | None = None  # None = keep the source history
    manifest_annotations: dict[str, str] = dataclasses.field(default_factory=dict)
    config_annotations: dict[str, str] = dataclasses.field(default_factory=dict)
    artifact_type: str | None = None


class DependencySource(ManifestFetcher, BlobStager, Protocol):
    """The registry verbs that resolving a dependency and staging its blobs need."""


class ResolvedDependency(Protocol):
    """An image a driver depends on, resolved to one manifest."""

    @property
    def reference(self) -> str: ...  # as configured, normalised

    @property
    def image_digest(self) -> str: ...  # the manifest it resolved to

    @property
    def blobs(self) -> tuple[Descriptor, ...]: ...  # its blobs a converted image may list (staged on push)


def oci_unless_docker_kept(docker2oci: bool, source_media_type: str) -> bool:
    """`docker2oci` as acceld reads it: a Docker source stays Docker only when the option is off."""
    return docker2oci or source_media_type in (mt.OCI_MANIFEST, mt.OCI_INDEX)


class Driver:
    """Base class: subclasses set `name`, `options_model`, and implement `convert_layer`."""

    name: ClassVar[str]
    options_model: ClassVar[type[DriverOptions]]
    # Bump when the output bytes for the same input and options change.
    implementation_version: ClassVar[str] = "1"
    # Where a conversion cache record names its source layer.
    source_digest_annotation: ClassVar[str] = mt.ACCEL_LAYER_SOURCE_DIGEST
    # The model of `ConvertedLayer.facts` this driver writes (None: its layers carry none); the conversion
    # cache reads a record's facts back through it.
    facts_model: ClassVar[type[LayerFacts] | None] = None
    # How `accel.verify` reads this format's output back (`accel.drivers.reader_for` asks each driver); None:
    # its layers are read as plain layers.
    reader: ClassVar[FormatReader | None] = None
    # Every media type the layers of its converted manifests may have: a target that holds only some (a
    # docker-archive holds tar layers only) refuses the driver by name before anything is pulled. Empty:
    # not declared (such a target then refuses at the push).
    layer_media_types: ClassVar[frozenset[str]] = frozenset()
    # The most layers one platform image of this format holds, when its format or builder has a bound (below
    # converter.limits.max_layers): a deeper image is refused for this driver before anything is pulled.
    max_layers: ClassVar[int | None] = None

    def __init__(self, options: DriverOptions) -> None:
        self.options = options

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> Driver:
        return cls(cls.options_model.model_validate(config or {}))

    @classmethod
    def acceld_driver(cls, config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The driver type and config that acceld's `converter.driver` of this type with `config` stands for.

        Default: this driver, the same config. A driver whose acceld type also runs another format, picked
        by an option, routes that config to the other driver here; ValueError for a config acceld refuses.
        """
        return cls.name, config

    @property
    def version(self) -> str:
        """What produced the bytes; goes into cache keys and annotations."""
        return self.implementation_version

    def cache_key(self) -> str:
        """Stable across processes and machines: driver name, version and the options that change the output.

        Never a path: workers with the builder installed in different places share records.
        """
        blob = json.dumps(
            {"driver": self.name, "version": self.version, "options": self.options.output_options()},
            sort_keys=True,
        )
        return f"{self.name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"

    def writes_subject(self) -> bool:
        """Whether converted manifests carry `subject` (the source): the `with_referrer` option."""
        return self.options.with_referrer

    def writes_oci(self, source_media_type: str) -> bool:
        """Whether the converted manifest/index (of a source of this media type) uses OCI media types.

        Default: always; drivers with a `docker2oci` option let a Docker source stay Docker.
        """
        return True

    # --- dependencies: images resolved through the registry before converting ---------------------
    def dependencies(self) -> tuple[str, ...]:
        """Image references this driver needs resolved (`bind`) before it converts anything."""
        return ()

    def resolve_dependency(
        self, source: DependencySource, reference: str, store: ContentStore, platform: Platform | None
    ) -> ResolvedDependency:
        """Resolve one of `dependencies()`; what it needs of the image goes into `store`."""
        raise NotImplementedError(f"driver {self.name} declares no dependencies")

    def bind(self, resolved: Mapping[str, ResolvedDependency]) -> Driver:
        """This driver using its resolved dependencies (by reference); a driver without any is unchanged."""
        return self

    # --- conversion cache -------------------------------------------------------------------------
    def accepts_original_records(self) -> bool:
        """Whether records of the original acceleration service's cache (no driver key) fit this driver."""
        return False

    def restore_original_record(
        self, blob: Descriptor, source: Descriptor, store: ContentStore
    ) -> ConvertedLayer:
        """The converted layer an original-service record (its blob `blob` is in `store`) stands for."""
        raise NotImplementedError(f"driver {self.name} has no original-service cache records")

    # --- conversion -------------------------------------------------------------------------------
    def convert_layer(self, layer: LayerInput) -> ConvertedLayer:
        raise NotImplementedError

    def finish(self, draft: PlatformDraft, store: ContentStore) -> PlatformDraft:
        """Whole-image step after every layer is converted. Default: nothing to do."""
        return draft

    def finish_image(self, source: SourceImage, image: BuiltImage, store: ContentStore) -> BuiltImage:
        """Whole-image step after every manifest (and the index) is in the store. Default: unchanged."""
        return image

    def keeps_converted_blobs(self) -> bool:
        """Whether every converted layer's blob goes into the target repository as it is, whatever `finish`
        and `finish_image` do around it, so it may be uploaded as soon as it is converted. Default: when the
        driver has no whole-image step that could replace its layers."""
        kind = type(self)
        return kind.finish is Driver.finish and kind.finish_image is Driver.finish_image

    @classmethod
    def is_converted(cls, layers: list[Descriptor]) -> bool:
        """Whether an image with these layers already is in this driver's format (so it is skipped)."""
        return False
