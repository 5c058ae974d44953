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

Every converted manifest carries `subject` (the source manifest) whatever the driver, so `with_referrer`
is accepted for compatibility with acceld configs and is always on.

With `oci_ref` (zran) the builder reads the *compressed* gzip source blob (`--type targz-ref`) and the Nydus
layer holds only metadata; its `containerd.io/snapshot/nydus-ref` annotation names the original gzip blob,
which the merged bootstrap uses as the data blob id, so that blob must stay in the target repository.

With `chunk_dict_ref` another Nydus image serves as chunk dictionary: `create` and `merge` get its image
bootstrap (`--chunk-dict bootstrap=PATH`) and store no chunk the dictionary already holds, pointing at the
dictionary's blobs instead. The reference is resolved outside the driver (`accel.nydus_chunkdict`), which
hands it a `ChunkDict`. As in nydus-snapshotter, the manifest then lists the blobs the merged bootstrap
references, in its order: layer blobs and dictionary blobs, while a layer left without data of its own
(everything deduplicated, or only directories and whiteouts) is not listed.

Limits of nydus-image 2.2.0 worth knowing: it writes a file's xattrs in hash-map order, so a layer with a
file carrying two or more xattrs converts to different (equivalent) bytes on each run; its tar reader
rejects blank device numbers on FIFO headers, which this driver fills in on the way (not possible for
zran, which indexes the original bytes); `batch_size`, encryption and parent-bootstrap merges do not exist.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import struct
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal

import zstandard
from isal import igzip
from pydantic import field_validator, model_validator

from accel import constants as mt
from accel import digest as dg
from accel import oci, tools
from accel.drivers.base import ConvertedLayer, Driver, DriverOptions, ImagePlan, LayerInput
from accel.errors import ConfigError, DriverError
from accel.errors import InvalidReference as ReferenceError_  # renamed; the alias keeps this edit to imports
from accel.image import BuiltImage, BuiltManifest, SourceImage, SourceManifest
from accel.reference import Reference
from accel.store import ContentStore

log = logging.getLogger(__name__)

COPY_SIZE = 1 << 20
STDERR_TAIL_LINES = 40

# Names inside the nydus blob trailer (nydus-snapshotter pkg/converter/convert_unix.go).
ENTRY_BOOTSTRAP = "image.boot"
ENTRY_TOC = "rafs.blob.toc"
BOOTSTRAP_TAR_DIR = "image"
BOOTSTRAP_TAR_NAME = f"{BOOTSTRAP_TAR_DIR}/{ENTRY_BOOTSTRAP}"

# A TOC entry is 128 bytes, little endian: flags, reserved, name[16], sha256 of the uncompressed data,
# compressed offset, compressed size, uncompressed size, reserved.
_TOC_ENTRY = struct.Struct("<II16s32sQQQ44x")
_TOC_ENTRY_SIZE = 128
_TOC_MAX_SIZE = 1 << 20
_TOC_COMPRESSOR_MASK = 0x0F
_TOC_COMPRESSOR_NONE = 0x01
_TOC_COMPRESSOR_ZSTD = 0x02

_TAR_BLOCK = 512
_MIN_CHUNK_SIZE = 0x1000
_MAX_CHUNK_SIZE = 0x1000000

# Options of acceld/nydusify that the pinned builder (nydus-rs 2.2.0) cannot do.
_UNSUPPORTED_OPTIONS = {
    "batch_size": "--batch-size",
    "encrypt": "blob encryption",
    "merge_parent_bootstrap": "merging onto a parent bootstrap",
}

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")

BOOTSTRAP_HISTORY = {"created_by": "Nydus Converter", "comment": "Nydus Bootstrap Layer"}

# merge_manifest: the classic 32-byte gzip of an empty tar (1024 zero bytes), put first in the OCI manifests
# of the merged index as acceld does: it gives their layers chain IDs of their own, so a runtime never
# mixes up the unpacked layers of this OCI variant with those of the plain source image, while the file
# tree stays the same. Every runtime reads gzip tars (unlike `application/vnd.oci.empty.v1+json`).
EMPTY_GZIP_LAYER = bytes.fromhex("1f8b080000096e8800ff621805a360148c5800080000ffff2eafb5ef00040000")
EMPTY_GZIP_LAYER_DIFF_ID = dg.of_bytes(igzip.decompress(EMPTY_GZIP_LAYER))
EMPTY_LAYER_HISTORY = {"created_by": "Nydus Converter", "comment": "Empty layer of the merged OCI manifest"}


class NydusOptions(DriverOptions):
    """acceld's `converter.driver.config` for `type: nydus`."""

    builder: str | None = None
    fs_version: Literal["5", "6"] = "6"
    compressor: Literal["none", "lz4_block", "zstd"] = "zstd"
    chunk_size: str | None = None  # normalised to hex, e.g. "0x100000"; None = builder default (1 MiB)
    fs_align_chunk: bool = False
    prefetch_patterns: str = ""  # newline-separated absolute paths; empty = prefetch nothing in particular
    chunk_dict_ref: str | None = None  # a Nydus image whose chunks new layers reuse (see ChunkDict)
    oci_ref: bool = False
    docker2oci: bool = True
    # Accepted for acceld compatibility: every converted manifest carries `subject` anyway.
    with_referrer: bool = True
    merge_manifest: bool = False  # one index with the (empty-layer-prefixed) OCI and the Nydus manifests

    @model_validator(mode="before")
    @classmethod
    def _reject_unsupported(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key, feature in _UNSUPPORTED_OPTIONS.items():
            if key not in data:
                continue
            value = data.pop(key)
            # acceld configs often carry these switched off ("0", false); only a request to use them fails.
            if value not in (None, False, 0, "", "0", "0x0", "false"):
                raise ConfigError(
                    f"nydus option {key!r} ({feature}) is not supported by nydus-image "
                    f"{tools.NYDUS_RS_VERSION}, the builder accel uses; "
                    "remove it from converter.driver.config"
                )
        return data

    @field_validator("fs_version", mode="before")
    @classmethod
    def _fs_version_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("chunk_size", mode="before")
    @classmethod
    def _chunk_size_hex(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            raise ValueError("chunk_size must be a power of two like 0x100000")
        if isinstance(value, str):
            try:
                size = int(value.strip(), 0)
            except ValueError:
                raise ValueError(f"chunk_size {value!r} is not a number (use hex like 0x100000)") from None
        elif isinstance(value, int):
            size = value
        else:
            raise ValueError("chunk_size must be a hex string like 0x100000 or an integer")
        if size & (size - 1) or not _MIN_CHUNK_SIZE <= size <= _MAX_CHUNK_SIZE:
            raise ValueError(
                f"chunk_size {value!r} must be a power of two "
                f"between {_MIN_CHUNK_SIZE:#x} and {_MAX_CHUNK_SIZE:#x}"
            )
        return f"{size:#x}"

    @field_validator("chunk_dict_ref")
    @classmethod
    def _parsable_reference(cls, value: str | None) -> str | None:
        if not value or not value.strip():
            return None
        try:
            return str(Reference.parse(value))
        except ReferenceError_ as exc:
            raise ValueError(str(exc)) from None

    @field_validator("prefetch_patterns")
    @classmethod
    def _absolute_patterns(cls, value: str) -> str:
        for line in value.splitlines():
            if line.strip() and not line.strip().startswith("/"):
                raise ValueError(f"prefetch pattern {line.strip()!r} must be an absolute path")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> NydusOptions:
        if self.fs_align_chunk and self.fs_version != "5":
            raise ValueError("fs_align_chunk is only valid with fs_version 5")
        if self.oci_ref and self.fs_version != "6":
            raise ValueError("oci_ref (zran) needs fs_version 6")
        if self.oci_ref and not self.docker2oci:
            # acceld turns docker2oci on silently here; saying so is clearer.
            raise ValueError(
                "oci_ref (zran) needs docker2oci: Docker manifests cannot carry its layer annotations"
            )
        if self.oci_ref and self.chunk_dict_ref:
            # nydus-snapshotter builds zran layers without a dictionary too: they hold no chunk data.
            raise ValueError("chunk_dict_ref cannot be combined with oci_ref (zran layers hold no chunks)")
        return self

    @property
    def prefetch_input(self) -> str:
        """What the builder reads on stdin with `--prefetch-policy fs` ("/" when nothing is configured)."""
        lines = [line.strip() for line in self.prefetch_patterns.splitlines() if line.strip()]
        return "\n".join(lines or ["/"]) + "\n"


@dataclasses.dataclass(frozen=True)
class TrailerEntry:
    """Facts about one entry pulled out of a nydus blob trailer."""

    digest: str  # of the extracted (uncompressed) data, as stored
    size: int
    toc_digest: str | None  # sha256 of the TOC data, which zran merges need; None without a TOC


@dataclasses.dataclass(frozen=True)
class ChunkDict:
    """A resolved `chunk_dict_ref`: one platform of a Nydus image whose chunks new layers reuse."""

    reference: str  # as configured, normalised
    image_digest: str  # the dictionary's image manifest
    bootstrap_digest: str  # its merged RAFS bootstrap (`image/image.boot`), in the content store
    blobs: tuple[oci.Descriptor, ...]  # its Nydus blob layers, which hold the chunks
    fs_version: str | None = None  # from its bootstrap layer annotation, when it has one

    def blob(self, blob_id: str) -> oci.Descriptor | None:
        """The dictionary blob with this id (a hex digest), as a manifest layer lists it."""
        return next((b for b in self.blobs if dg.hex_of(b.digest) == blob_id), None)


CHUNK_DICT_HISTORY = {"created_by": "Nydus Converter", "comment": "Nydus chunk dictionary blob"}


class NydusDriver(Driver):
    name = "nydus"
    options_model = NydusOptions
    implementation_version = "1"
    requires_oci = False  # `docker2oci` decides, as in acceld

    options: NydusOptions

    def __init__(self, options: DriverOptions, chunk_dict: ChunkDict | None = None) -> None:
        super().__init__(options)
        self._builder_path: Path | None = None
        self.chunk_dict = chunk_dict

    def with_chunk_dict(self, chunk_dict: ChunkDict) -> NydusDriver:
        """This driver using `chunk_dict`, the resolved `chunk_dict_ref`."""
        if chunk_dict.fs_version and chunk_dict.fs_version != self.options.fs_version:
            raise DriverError(
                f"nydus chunk_dict_ref {chunk_dict.reference} is RAFS v{chunk_dict.fs_version}, "
                f"the driver builds v{self.options.fs_version}: they must match"
            )
        bound = NydusDriver(self.options, chunk_dict)
        bound._builder_path = self._builder_path
        return bound

    def _required_chunk_dict(self) -> ChunkDict | None:
        if self.options.chunk_dict_ref and self.chunk_dict is None:
            raise DriverError(
                f"nydus chunk_dict_ref {self.options.chunk_dict_ref} is not resolved: "
                "drivers get their chunk dictionary from accel.nydus_chunkdict (Context.driver does this)"
            )
        return self.chunk_dict

    # --- builder -----------------------------------------------------------------------------------
    @property
    def builder(self) -> Path:
        if self._builder_path is None:
            self._builder_path = tools.nydus_builder(self.options.builder)
        return self._builder_path

    @property
    def builder_version(self) -> str:
        return tools.tool_version(self.builder)

    @property
    def version(self) -> str:
        """Builder version, and the dictionary image when there is one: a new dictionary, new bytes."""
        version = f"{self.implementation_version}+nydus-image-{self.builder_version}"
        if self.chunk_dict is not None:
            version += f"+chunk-dict-{dg.hex_of(self.chunk_dict.image_digest)[:16]}"
        return version

    def _run_builder(
        self,
        args: list[str],
        *,
        what: str,
        stdin_text: str | None = None,
        fifo: Path | None = None,
        source: BinaryIO | None = None,
    ) -> None:
        """Run the builder; optionally feed `source` into `fifo` (its input path) while it runs."""
        command = [str(self.builder), *args]
        log.debug("running %s", " ".join(command))
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert proc.stdout is not None
        tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        threads = [threading.Thread(target=_pump_log, args=(proc.stdout, tail, what), daemon=True)]
        if stdin_text is not None:
            assert proc.stdin is not None
            threads.append(threading.Thread(target=_write_text, args=(proc.stdin, stdin_text), daemon=True))
        for thread in threads:
            thread.start()
        try:
            if fifo is not None and source is not None:
                _feed_fifo(fifo, source, proc)
            returncode = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            for thread in threads:
                thread.join()
        if returncode != 0:
            detail = "\n".join(tail) or "(no output)"
            raise DriverError(f"nydus-image {what} failed with exit code {returncode}:\n{detail}")

    # --- per layer ---------------------------------------------------------------------------------
    def _create_args(
        self, blob_path: Path, source_path: Path, store: ContentStore, chunk_dict: ChunkDict | None
    ) -> list[str]:
        opts = self.options
        args = [
            "create",
            "--log-level", "warn",
            "--type", "tar-rafs",
            "--blob-inline-meta",
            "--fs-version", opts.fs_version,
            "--whiteout-spec", "none",
            "--prefetch-policy", "fs",
            "--compressor", opts.compressor,
            "--blob", str(blob_path),
        ]  # fmt: skip
        if opts.fs_version == "6":
            # 2.2.0 refuses the TOC for v5; nydus-snapshotter adds it for v6 only as well.
            args += ["--features", "blob-toc"]
        if opts.chunk_size:
            args += ["--chunk-size", opts.chunk_size]
        if opts.fs_align_chunk:
            args.append("--aligned-chunk")
        if chunk_dict is not None:
            args += _chunk_dict_args(store, chunk_dict)
        args.append(str(source_path))
        return args

    def convert_layer(self, layer: LayerInput) -> ConvertedLayer:
        chunk_dict = self._required_chunk_dict()
        if self.options.oci_ref:
            return self._convert_layer_ref(layer)
        store = layer.store
        with _scratch_dir(store) as work:
            blob_path = work / "layer.blob"
            fifo = work / "layer.tar"
            os.mkfifo(fifo, 0o600)
            with layer.open_tar() as tar_stream:
                self._run_builder(
                    self._create_args(blob_path, fifo, store, chunk_dict),
                    what=f"create for layer {dg.short(layer.descriptor.digest)}",
                    stdin_text=self.options.prefetch_input,
                    fifo=fifo,
                    source=tar_stream,
                )
            # Only now, after the source tar matched its diff_id, does the blob enter the store.
            blob_digest, blob_size = store.commit_file(blob_path)
        bootstrap = extract_trailer_entry(store, blob_digest, ENTRY_BOOTSTRAP)
        extra = {"bootstrap": bootstrap.digest, "fs_version": self.options.fs_version}
        if bootstrap.toc_digest:
            extra["blob_toc_digest"] = bootstrap.toc_digest
        if chunk_dict is not None:
            # The layer bootstrap may point at this dictionary's blobs; `finish` must merge with the same one.
            extra["chunk_dict"] = chunk_dict.image_digest
        descriptor = oci.Descriptor(
            media_type=mt.NYDUS_BLOB,
            digest=blob_digest,
            size=blob_size,
            annotations={mt.NYDUS_BLOB_ANNOTATION: "true"},
        )
        # nydus-snapshotter labels a nydus blob's uncompressed digest as the blob digest itself.
        return ConvertedLayer(
            source=layer.descriptor, descriptor=descriptor, diff_id=blob_digest, extra=extra
        )

    def _convert_layer_ref(self, layer: LayerInput) -> ConvertedLayer:
        """zran: index the original gzip blob; the Nydus layer keeps only RAFS and zran metadata."""
        if not oci.is_gzip_layer(layer.descriptor.media_type):
            raise DriverError(
                f"oci_ref needs gzip layers, layer {layer.descriptor.digest} is {layer.descriptor.media_type}"
            )
        store = layer.store
        with _scratch_dir(store) as work:
            blob_path = work / "layer.ref.blob"
            args = [
                "create",
                "--log-level", "warn",
                "--type", "targz-ref",
                "--blob-inline-meta",
                "--features", "blob-toc",
                "--blob", str(blob_path),
                str(layer.path),
            ]  # fmt: skip
            # The source blob is already verified by digest in the store; the builder reads it directly.
            try:
                self._run_builder(args, what=f"create (zran) for layer {dg.short(layer.descriptor.digest)}")
            except DriverError as exc:
                if "device_major" not in str(exc):
                    raise
                # Python's tarfile leaves FIFO device numbers blank; zran indexes the original bytes,
                # so unlike a normal conversion the headers cannot be fixed on the way in.
                raise DriverError(
                    f"{exc}\nhint: the layer has a FIFO or device header with blank device numbers, which "
                    f"nydus-image {tools.NYDUS_RS_VERSION} cannot index in place; convert without oci_ref"
                ) from None
            blob_digest, blob_size = store.commit_file(blob_path)
        bootstrap = extract_trailer_entry(store, blob_digest, ENTRY_BOOTSTRAP)
        if not bootstrap.toc_digest:
            raise DriverError(f"zran blob {blob_digest} has no {ENTRY_TOC}")
        descriptor = oci.Descriptor(
            media_type=mt.NYDUS_BLOB,
            digest=blob_digest,
            size=blob_size,
            annotations={mt.NYDUS_BLOB_ANNOTATION: "true", mt.NYDUS_REF_ANNOTATION: layer.descriptor.digest},
        )
        extra = {"bootstrap": bootstrap.digest, "fs_version": "6", "blob_toc_digest": bootstrap.toc_digest}
        return ConvertedLayer(
            source=layer.descriptor,
            descriptor=descriptor,
            diff_id=blob_digest,
            extra=extra,
            companions=(layer.descriptor,),  # the data stays in the original gzip blob
        )

    # --- whole image -------------------------------------------------------------------------------
    def finish(self, plan: ImagePlan, store: ContentStore) -> ImagePlan:
        layers = [layer for layer in plan.layers if layer.descriptor.annotation(mt.NYDUS_BLOB_ANNOTATION)]
        if not layers:
            raise DriverError("nydus finish: the plan has no nydus blob layers to merge")
        if len(layers) != len(plan.layers):
            raise DriverError("nydus finish: the plan mixes nydus blob layers with other layers")
        fs_version = "6" if self.options.oci_ref else self.options.fs_version
        chunk_dict = self._required_chunk_dict()
        used = {layer.extra.get("chunk_dict") for layer in layers}
        wanted = chunk_dict.image_digest if chunk_dict else None
        if used != {wanted}:
            # The dictionary moved (its tag was pushed again) between converting layers and merging them.
            raise DriverError(
                f"nydus finish: layers were converted with chunk dictionaries {sorted(map(str, used))}, "
                f"the merge would use {wanted}; convert again"
            )

        with _scratch_dir(store) as work:
            merged = work / "image.boot"
            output_json = work / "merge-output.json"
            sources, blob_ids = self._stage_bootstraps(layers, store, work / "bootstraps")
            args = [
                "merge",
                "--log-level", "warn",
                "--prefetch-policy", "fs",
                "--output-json", str(output_json),
                "--bootstrap", str(merged),
                *[str(s) for s in sources],
            ]  # fmt: skip
            if self.options.oci_ref:
                # The bootstraps are named after the gzip blobs (the data); these describe the meta blobs.
                args += [
                    "--blob-digests",
                    ",".join(dg.hex_of(layer.descriptor.digest) for layer in layers),
                    "--blob-sizes",
                    ",".join(str(layer.descriptor.size) for layer in layers),
                    "--blob-toc-digests",
                    ",".join(dg.hex_of(layer.extra["blob_toc_digest"]) for layer in layers),
                ]
            if chunk_dict is not None:
                # 2.2.0 refuses layer bootstraps that point at dictionary blobs without it.
                args += _chunk_dict_args(store, chunk_dict)
            self._run_builder(args, what="merge", stdin_text=self.options.prefetch_input)
            merged_blobs = json.loads(output_json.read_text()).get("blobs") or []
            if self.options.oci_ref:
                if merged_blobs != blob_ids:
                    raise DriverError(
                        f"nydus merge references blobs {merged_blobs}, "
                        f"expected the layer blobs {blob_ids} in order"
                    )
                blob_layers, positions = list(layers), list(range(len(layers)))
            else:
                blob_layers, positions = _layers_in_merge_order(layers, blob_ids, merged_blobs, chunk_dict)
            merged_digest, _ = store.commit_file(merged)

        bootstrap_layer = self._bootstrap_layer(plan, store, merged_digest, fs_version)
        annotations = dict(plan.manifest_annotations)
        annotations.update(
            {
                mt.ACCEL_SOURCE_DIGEST: plan.source_manifest.digest,
                mt.ACCEL_SOURCE_REFERENCE: plan.source_reference,
                mt.NYDUS_FS_VERSION_ANNOTATION: fs_version,
                mt.ACCEL_NYDUS_BUILDER_VERSION: self.builder_version,
            }
        )
        return dataclasses.replace(
            plan,
            layers=(*blob_layers, bootstrap_layer),
            history=_history_with_bootstrap(plan, positions),
            manifest_annotations=annotations,
            artifact_type=mt.NYDUS_ARTIFACT_TYPE if self.options.merge_manifest else plan.artifact_type,
        )

    def finish_image(self, source: SourceImage, image: BuiltImage, store: ContentStore) -> BuiltImage:
        """merge_manifest: one index with every platform's OCI manifest first, then the Nydus manifests.

        Clients that pick the first manifest matching their platform get the OCI image; Nydus-aware ones
        find the entries marked with the Nydus artifactType. The index keeps `subject` and annotations of
        the converted root.
        """
        if not self.options.merge_manifest:
            return image
        oci_manifests = [_oci_variant(m, store) for m in source.manifests]
        nydus_entries = [m.descriptor.with_(artifact_type=mt.NYDUS_ARTIFACT_TYPE) for m in image.manifests]
        # The converted root (an index, or the single manifest) hands over its subject and annotations.
        converted_root = json.loads(store.read_bytes(image.root.digest))
        merged_doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX}
        merged_doc["manifests"] = [
            e.to_dict() for e in (*(m.descriptor for m in oci_manifests), *nydus_entries)
        ]
        merged_doc |= {
            key: converted_root[key] for key in ("subject", "annotations") if key in converted_root
        }
        raw = oci.canonical_json(merged_doc)
        root = oci.Descriptor.of(mt.OCI_INDEX, raw)
        store.put_bytes(raw, root.digest)
        nydus_manifests = [
            m.model_copy(update={"descriptor": entry})
            for m, entry in zip(image.manifests, nydus_entries, strict=True)
        ]
        return BuiltImage(root=root, manifests=(*oci_manifests, *nydus_manifests))

    def _stage_bootstraps(
        self, layers: list[ConvertedLayer], store: ContentStore, directory: Path
    ) -> tuple[list[Path], list[str]]:
        """Link each layer bootstrap under its data blob id: merge takes the blob id from the file name."""
        directory.mkdir()
        paths: list[Path] = []
        blob_ids: list[str] = []
        for index, layer in enumerate(layers):
            data_blob = layer.descriptor.annotation(mt.NYDUS_REF_ANNOTATION) or layer.descriptor.digest
            blob_id = dg.hex_of(data_blob)
            if blob_id in blob_ids:
                # The same layer twice in one image: merge needs distinct paths with the same name.
                target = directory / str(index) / blob_id
                target.parent.mkdir()
            else:
                target = directory / blob_id
            source = store.path(layer.extra["bootstrap"])
            try:
                os.link(source, target)
            except OSError:
                target.symlink_to(source)
            paths.append(target)
            blob_ids.append(blob_id)
        return paths, blob_ids

    def _bootstrap_layer(
        self, plan: ImagePlan, store: ContentStore, merged_digest: str, fs_version: str
    ) -> ConvertedLayer:
        digest, size, diff_id = _pack_bootstrap(store, merged_digest)
        docker_source = plan.source_manifest.media_type == mt.DOCKER_MANIFEST
        media_type = (
            mt.DOCKER_LAYER_GZIP if docker_source and not self.options.docker2oci else mt.OCI_LAYER_GZIP
        )
        descriptor = oci.Descriptor(
            media_type=media_type,
            digest=digest,
            size=size,
            annotations={mt.NYDUS_BOOTSTRAP_ANNOTATION: "true", mt.NYDUS_FS_VERSION_ANNOTATION: fs_version},
        )
        # The bootstrap layer has no source layer: it is derived from the whole source manifest.
        return ConvertedLayer(
            source=plan.source_manifest,
            descriptor=descriptor,
            diff_id=diff_id,
            extra={"role": "bootstrap", "bootstrap": merged_digest, "fs_version": fs_version},
        )

    @classmethod
    def is_converted(cls, layers: list[oci.Descriptor]) -> bool:
        return any(
            layer.annotation(mt.NYDUS_BOOTSTRAP_ANNOTATION) is not None
            or layer.annotation(mt.NYDUS_BLOB_ANNOTATION) is not None
            for layer in layers
        )


# --- helpers ---------------------------------------------------------------------------------------
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

    doc = json.loads(store.read_bytes(source.descriptor.digest))
    doc["config"] = config_desc.to_dict()
    doc["layers"] = [empty_layer.to_dict(), *doc["layers"]]
    # The media type comes from the descriptor: an OCI manifest need not name its own.
    raw = oci.canonical_json(doc)
    descriptor = oci.Descriptor.of(source.descriptor.media_type, raw, platform=source.platform)
    store.put_bytes(raw, descriptor.digest)
    return BuiltManifest(
        descriptor=descriptor,
        config=config_desc,
        layers=(empty_layer, *(layer.descriptor for layer in source.layers)),
    )


@contextlib.contextmanager
def _scratch_dir(store: ContentStore) -> Iterator[Path]:
    # Inside the store's ingest area, so finished files move into blobs/ with a rename.
    with tempfile.TemporaryDirectory(prefix="nydus-", dir=store.root / "ingest") as name:
        yield Path(name)


def _pump_log(stream: IO[bytes], tail: collections.deque[str], what: str) -> None:
    for raw in stream:
        line = _ANSI_ESCAPE.sub("", raw.decode("utf-8", "replace")).rstrip()
        if line:
            tail.append(line)
            log.info("nydus-image %s: %s", what, line)
    stream.close()


def _write_text(stream: IO[bytes], text: str) -> None:
    # The builder may exit without reading stdin; that is its business, not an error here.
    with contextlib.suppress(BrokenPipeError, OSError):
        stream.write(text.encode())
    with contextlib.suppress(BrokenPipeError, OSError):
        stream.close()


def _open_fifo_writer(fifo: Path, proc: subprocess.Popen[bytes]) -> int | None:
    """Open the FIFO once the builder opened it for reading; None when the builder exited first."""
    delay = 0.001
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
            if proc.poll() is not None:
                return None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
            continue
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return fd


def _feed_fifo(fifo: Path, source: BinaryIO, proc: subprocess.Popen[bytes]) -> None:
    fd = _open_fifo_writer(fifo, proc)
    if fd is None:
        return
    with os.fdopen(fd, "wb", buffering=0) as sink:
        try:
            for chunk in _builder_compatible_tar(source):
                view = memoryview(chunk)
                while view:
                    written = sink.write(view)
                    view = view[written or 0 :]
        except BrokenPipeError:
            # The builder stopped reading (it failed); its exit code and output tell why.
            pass


# ustar header fields (offset, length) and the types whose header is not followed by data (as Go reads them).
_TAR_SIZE = (124, 12)
_TAR_CHECKSUM = (148, 8)
_TAR_TYPEFLAG = 156
_TAR_DEVMAJOR = (329, 8)
_TAR_DEVMINOR = (337, 8)
_TAR_HEADER_ONLY_TYPES = frozenset(b"123456")
_TAR_DEVICE_TYPES = frozenset(b"346")
_TAR_ZERO_DEVICE = b"0000000\0"


def _tar_checksum(header: bytes | bytearray) -> int:
    start, length = _TAR_CHECKSUM
    return sum(header[:start]) + 32 * length + sum(header[start + length :])


def _tar_number(field: bytes | bytearray) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        return int.from_bytes(bytes([field[0] & 0x7F]) + bytes(field[1:]), "big")
    text = bytes(field).replace(b"\0", b" ").strip()
    return int(text, 8) if text else 0


def _fix_header(header: bytes) -> bytes:
    """Fill empty device numbers of char/block/fifo headers with zeros.

    Python's tarfile (and some other writers) leave them blank for FIFOs; nydus-image 2.2.0's tar reader
    then fails with "numeric field was not a number". Zero is what Go's archive/tar writes.
    """
    if header[_TAR_TYPEFLAG] not in _TAR_DEVICE_TYPES:
        return header
    fixed = bytearray(header)
    changed = False
    for start, length in (_TAR_DEVMAJOR, _TAR_DEVMINOR):
        if not fixed[start : start + length].strip(b"\0 "):
            fixed[start : start + length] = _TAR_ZERO_DEVICE
            changed = True
    if not changed:
        return header
    start, length = _TAR_CHECKSUM
    fixed[start : start + length] = b"%06o\0 " % _tar_checksum(fixed)
    return bytes(fixed)


def _read_exactly(source: BinaryIO, size: int) -> bytes:
    data = source.read(size)
    while data and len(data) < size:
        more = source.read(size - len(data))
        if not more:
            break
        data += more
    return data


def _builder_compatible_tar(source: BinaryIO) -> Iterator[bytes]:
    """The tar stream in chunks, headers fixed up for the builder where needed (see `_fix_header`)."""
    while True:
        header = _read_exactly(source, _TAR_BLOCK)
        if len(header) < _TAR_BLOCK:
            if header:
                yield header
            return
        start, length = _TAR_CHECKSUM
        stored = header[start : start + length]
        try:
            valid = header.count(0) != _TAR_BLOCK and _tar_number(stored) == _tar_checksum(header)
        except ValueError:
            valid = False
        if not valid:  # end-of-archive zeros or trailing bytes: pass through untouched
            yield header
            continue
        yield _fix_header(header)
        if header[_TAR_TYPEFLAG] in _TAR_HEADER_ONLY_TYPES:
            continue
        offset, size_length = _TAR_SIZE
        remaining = -(-_tar_number(header[offset : offset + size_length]) // _TAR_BLOCK) * _TAR_BLOCK
        while remaining > 0:
            chunk = source.read(min(COPY_SIZE, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk


def _find_tar_entry(f: BinaryIO, size: int, name: str) -> tuple[int, int] | None:
    """(offset, size) of `name` in the blob trailer, walking `data | header` pairs from the end."""
    cursor = size - _TAR_BLOCK
    while cursor >= 0:
        f.seek(cursor)
        try:
            header = tarfile.TarInfo.frombuf(f.read(_TAR_BLOCK), "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            return None
        if header.size > cursor:
            return None
        if header.name == name:
            return cursor - header.size, header.size
        cursor -= header.size + _TAR_BLOCK
    return None


def _copy_range(f: BinaryIO, offset: int, length: int, sink: Any) -> None:
    f.seek(offset)
    while length > 0:
        chunk = f.read(min(COPY_SIZE, length))
        if not chunk:
            raise DriverError("nydus blob is truncated")
        sink.write(chunk)
        length -= len(chunk)


def extract_trailer_entry(store: ContentStore, blob_digest: str, name: str) -> TrailerEntry:
    """Copy entry `name` (e.g. the bootstrap) out of a nydus blob in the store into its own blob.

    Like nydus-snapshotter: via the TOC when there is one (the entry may be zstd-compressed and its
    uncompressed sha256 is checked), else by walking the tar headers of the trailer (RAFS v5).
    """
    path = store.path(blob_digest)
    size = path.stat().st_size
    with path.open("rb") as f:
        toc = _find_tar_entry(f, size, ENTRY_TOC)
        if toc is not None and toc[1] <= _TOC_MAX_SIZE and toc[1] % _TOC_ENTRY_SIZE == 0:
            f.seek(toc[0])
            toc_data = f.read(toc[1])
            for start in range(0, len(toc_data), _TOC_ENTRY_SIZE):
                flags, _, raw_name, sha, offset, compressed, uncompressed = _TOC_ENTRY.unpack_from(
                    toc_data, start
                )
                if raw_name.split(b"\0", 1)[0].decode("utf-8", "replace") != name:
                    continue
                digest = _extract_toc_entry(
                    store, f, flags, offset, compressed, uncompressed, sha.hex(), name
                )
                return TrailerEntry(digest=digest, size=uncompressed, toc_digest=dg.of_bytes(toc_data))
            raise DriverError(f"nydus blob {blob_digest} has a TOC without {name}")
        found = _find_tar_entry(f, size, name)
        if found is None:
            raise DriverError(f"nydus blob {blob_digest} has no {name} in its trailer")
        with store.writer() as w:
            _copy_range(f, found[0], found[1], w)
        assert w.digest is not None
        return TrailerEntry(digest=w.digest, size=w.size, toc_digest=None)


def _extract_toc_entry(
    store: ContentStore,
    f: BinaryIO,
    flags: int,
    offset: int,
    compressed: int,
    uncompressed: int,
    sha: str,
    name: str,
) -> str:
    compressor = flags & _TOC_COMPRESSOR_MASK
    expected = f"sha256:{sha}"
    with store.writer(expected) as w:
        if compressor == _TOC_COMPRESSOR_NONE:
            _copy_range(f, offset, compressed, w)
        elif compressor == _TOC_COMPRESSOR_ZSTD:
            f.seek(offset)
            # Bound the reader to the entry: the zstd frame is followed by other trailer data.
            reader = zstandard.ZstdDecompressor().stream_reader(_BoundedReader(f, compressed))
            while chunk := reader.read(COPY_SIZE):
                w.write(chunk)
        else:
            raise DriverError(f"{name} in the nydus blob TOC uses unsupported compressor flags {flags:#x}")
    if w.size != uncompressed:
        raise DriverError(f"{name}: extracted {w.size} bytes, the TOC says {uncompressed}")
    assert w.digest is not None
    return w.digest


class _BoundedReader:
    """Reads at most `remaining` bytes from the current position of `f`."""

    def __init__(self, f: BinaryIO, remaining: int) -> None:
        self._f = f
        self._remaining = remaining

    def read(self, n: int = -1) -> bytes:
        if self._remaining <= 0:
            return b""
        n = self._remaining if n < 0 else min(n, self._remaining)
        data = self._f.read(n)
        self._remaining -= len(data)
        return data


class _HashingSink:
    """Write-through wrapper hashing the uncompressed tar (the bootstrap layer's diff_id)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, data: bytes) -> int:
        self._inner.write(data)
        self._hash.update(data)
        self._size += len(data)
        return len(data)

    def tell(self) -> int:
        return self._size

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def _pack_bootstrap(store: ContentStore, merged_digest: str) -> tuple[str, int, str]:
    """gzip tar of `image/` + `image/image.boot`, like nydus-snapshotter; returns (digest, size, diff_id)."""
    bootstrap_path = store.path(merged_digest)
    with store.writer() as w:
        gz = igzip.IGzipFile(fileobj=w, mode="wb", mtime=0)  # fixed mtime: same bootstrap, same digest
        sink = _HashingSink(gz)
        with tarfile.open(fileobj=sink, mode="w", format=tarfile.USTAR_FORMAT) as tar:  # type: ignore[call-overload]
            directory = tarfile.TarInfo(BOOTSTRAP_TAR_DIR)
            directory.type = tarfile.DIRTYPE
            directory.mode = 0o755
            tar.addfile(directory)
            member = tarfile.TarInfo(BOOTSTRAP_TAR_NAME)
            member.mode = 0o444
            member.size = bootstrap_path.stat().st_size
            with bootstrap_path.open("rb") as boot:
                tar.addfile(member, boot)
        gz.close()
    assert w.digest is not None
    return w.digest, w.size, sink.digest()


def _history_with_bootstrap(
    plan: ImagePlan, positions: list[int | None]
) -> tuple[dict[str, Any], ...] | None:
    """History whose non-empty entries still match the layers: the source's, then the bootstrap's.

    `positions` are the manifest's blob layers as indexes into `plan.layers` (None: a dictionary blob).
    A source layer left out of the manifest keeps its entry, marked `empty_layer`; a dictionary blob gets
    an entry of its own where it is listed.
    """
    history = plan.history
    if history is None:
        source_history = plan.config.doc.get("history")
        if not source_history:
            return None  # no history to keep consistent
        history = tuple(source_history)
    bootstrap = dict(BOOTSTRAP_HISTORY)
    if positions == list(range(len(plan.layers))):
        return (*history, bootstrap)
    # Each source layer's entries: its own non-empty one and the empty ones just before it.
    groups: list[list[dict[str, Any]]] = [[]]
    for entry in history:
        groups[-1].append(dict(entry))
        if not entry.get("empty_layer"):
            groups.append([])
    *layer_groups, trailing = groups
    if len(layer_groups) != len(plan.layers):  # the source history does not match its layers anyway
        return (*history, bootstrap)

    def without_layer(group: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [*group[:-1], group[-1] | {"empty_layer": True}]

    result: list[dict[str, Any]] = []
    emitted = 0
    for position in positions:
        if position is None:
            result.append(dict(CHUNK_DICT_HISTORY))
            continue
        result += [entry for group in layer_groups[emitted:position] for entry in without_layer(group)]
        result += layer_groups[position]
        emitted = position + 1
    result += [entry for group in layer_groups[emitted:] for entry in without_layer(group)]
    return (*result, *trailing, bootstrap)


def _chunk_dict_args(store: ContentStore, chunk_dict: ChunkDict) -> list[str]:
    return ["--chunk-dict", f"bootstrap={store.path(chunk_dict.bootstrap_digest)}"]


def _layers_in_merge_order(
    layers: list[ConvertedLayer],
    blob_ids: list[str],
    merged_blobs: list[str],
    chunk_dict: ChunkDict | None,
) -> tuple[list[ConvertedLayer], list[int | None]]:
    """The blob layers the merged bootstrap references, in its order, with their indexes in `layers`.

    Like nydus-snapshotter, the manifest lists what the bootstrap references: layer blobs in layer order,
    with dictionary blobs among them. A layer whose bootstrap holds no chunk of its own (all deduplicated,
    or only directories, links and whiteouts) is not referenced and so not listed; anything else is an error.
    """
    result: list[ConvertedLayer] = []
    positions: list[int | None] = []
    next_index = 0
    for blob_id in merged_blobs:
        index = next((i for i in range(next_index, len(blob_ids)) if blob_ids[i] == blob_id), None)
        if index is not None:
            result.append(layers[index])
            positions.append(index)
            next_index = index + 1
            continue
        dictionary_blob = chunk_dict.blob(blob_id) if chunk_dict else None
        if chunk_dict is None or dictionary_blob is None:
            expected = "layer blobs in order" + (" and chunk dictionary blobs" if chunk_dict else "")
            raise DriverError(
                f"nydus merge references blobs {merged_blobs}, expected the {expected} {blob_ids}"
            )
        result.append(_dictionary_layer(dictionary_blob, chunk_dict))
        positions.append(None)
    return result, positions


def _dictionary_layer(blob: oci.Descriptor, chunk_dict: ChunkDict) -> ConvertedLayer:
    descriptor = oci.Descriptor(
        media_type=mt.NYDUS_BLOB,
        digest=blob.digest,
        size=blob.size,
        annotations={mt.NYDUS_BLOB_ANNOTATION: "true"},
    )
    # Its diff_id is its digest, as for every nydus blob; it comes from the dictionary, not a source layer.
    return ConvertedLayer(
        source=descriptor,
        descriptor=descriptor,
        diff_id=blob.digest,
        extra={"role": "chunk-dict", "chunk_dict": chunk_dict.image_digest},
    )
