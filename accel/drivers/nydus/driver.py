"""`NydusDriver`: per layer `nydus-image create`, per image `nydus-image merge` and the bootstrap layer.

The package docstring (`accel.drivers.nydus`) describes the format and the options; the builder process,
the blob trailer, tar fix-ups, history and the merged-manifest variant live in their own modules.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from accel import constants as mt
from accel import digest as dg
from accel import mutate, oci, tarnormalize
from accel.drivers.base import (
    ConvertedLayer,
    DependencySource,
    Driver,
    DriverOptions,
    LayerInput,
    PlatformDraft,
    ResolvedDependency,
    oci_unless_docker_kept,
)
from accel.drivers.nydus import backend, chunkdict, tools
from accel.drivers.nydus.builder import run_builder, scratch_dir
from accel.drivers.nydus.chunkdict import ChunkDict
from accel.drivers.nydus.directories import (
    emptying_tar,
    first_layer_whites_out,
    patch_tar,
    patches,
    stale_subtrees,
    store_table,
)
from accel.drivers.nydus.facts import NydusLayerFacts, facts_of
from accel.drivers.nydus.history import BOOTSTRAP_HISTORY, history_with_bootstrap
from accel.drivers.nydus.merge_manifest import _oci_variant
from accel.drivers.nydus.options import NydusOptions
from accel.drivers.nydus.original import converted_from_original_record
from accel.drivers.nydus.reader import NydusReader
from accel.drivers.nydus.tar import NotPassedThrough, ScanningFeed, losses, refuse_what_nydus_cannot_hold
from accel.drivers.nydus.trailer import (
    ENTRY_BOOTSTRAP,
    ENTRY_TOC,
    bootstrap_blob,
    extract_trailer_entry,
    nydus_blob,
    pack_bootstrap,
)
from accel.errors import ConfigError, DriverError, InvalidImage
from accel.model import BuiltImage, SourceImage
from accel.oci import Platform
from accel.store import ContentStore

log = logging.getLogger(__name__)


def _scan_layer(layer: LayerInput, check_diff_id: bool = True) -> tarnormalize.Normalisation:
    """`tarnormalize.scan_layer` of the layer's tar; a refusal names the layer. `check_diff_id=False` when the
    scan only plans and the bytes the builder gets are read again, and checked against the DiffID, later."""
    try:
        with layer.open_tar(check_diff_id) as tar_stream:
            return tarnormalize.scan_layer(
                tar_stream, check=refuse_what_nydus_cannot_hold, limit=layer.entry_limit()
            )
    except InvalidImage as exc:
        raise type(exc)(f"layer {layer.descriptor.digest}: {exc}") from None


def _say_losses(layer: LayerInput, normal: tarnormalize.Normalisation) -> None:
    """What of the layer the Nydus image does not hold (see `tar.losses`): a warning naming it."""
    for loss in losses(normal):
        log.warning("layer %s: %s", layer.descriptor.digest, loss)


class NydusDriver(Driver):
    name = "nydus"
    options_model = NydusOptions
    # 2: layers are normalised before the builder reads them (accel.tarnormalize) and carry a directory
    # table; blobs of sparse, reordered or repeated-path layers changed, and `finish` needs the tables.
    implementation_version = "2"
    source_digest_annotation = mt.ORIGINAL_CACHE_SOURCE_DIGEST  # as the original service's cache records
    facts_model = NydusLayerFacts
    reader = NydusReader()  # how accel.verify reads an image back
    # Blob layers, and the bootstrap layer `finish` adds (Docker's gzip type for a Docker source kept Docker).
    layer_media_types = frozenset({mt.NYDUS_BLOB, mt.OCI_LAYER_GZIP, mt.DOCKER_LAYER_GZIP})
    # nydus-image 2.2.0's merge keeps a blob index in a u8 and panics past it (`blob_idx < u8::MAX`), after
    # every layer has converted: a deeper image is refused up front instead.
    max_layers = 255

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

    def writes_oci(self, source_media_type: str) -> bool:
        return oci_unless_docker_kept(self.options.docker2oci, source_media_type)  # as in acceld

    # --- chunk dictionary: resolved by the engine, outside the driver -----------------------------
    def dependencies(self) -> tuple[str, ...]:
        return (self.options.chunk_dict_ref,) if self.options.chunk_dict_ref else ()

    def resolve_dependency(
        self, source: DependencySource, reference: str, store: ContentStore, platform: Platform | None
    ) -> ChunkDict:
        return chunkdict.resolve_chunk_dict(source, reference, store, platform)

    def bind(self, resolved: Mapping[str, ResolvedDependency]) -> NydusDriver:
        if not self.options.chunk_dict_ref:
            return self
        chunk_dict = resolved[self.options.chunk_dict_ref]
        if not isinstance(chunk_dict, ChunkDict):
            raise TypeError(f"nydus chunk_dict_ref resolved to {type(chunk_dict).__name__}, not a ChunkDict")
        return self.with_chunk_dict(chunk_dict)

    # --- conversion cache: records of the original acceleration service ---------------------------
    def accepts_original_records(self) -> bool:
        # They carry no options: taken to be what the default options produce (wherever the builder is).
        return self.options.output_options() == NydusOptions().output_options()

    def writes_subject(self) -> bool:
        return self.options.with_referrer

    def restore_original_record(
        self, blob: oci.Descriptor, source: oci.Descriptor, store: ContentStore
    ) -> ConvertedLayer:
        return converted_from_original_record(store, blob, source, self.options.fs_version)

    def _required_chunk_dict(self) -> ChunkDict | None:
        if self.options.chunk_dict_ref and self.chunk_dict is None:
            raise DriverError(
                f"nydus chunk_dict_ref {self.options.chunk_dict_ref} is not resolved: "
                "the engine resolves driver dependencies (Context.driver does this)"
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
        with scratch_dir(store) as work:
            blob_path = work / "layer.blob"
            fifo = work / "layer.tar"
            os.mkfifo(fifo, 0o600)
            args = self._create_args(blob_path, fifo, store, chunk_dict)
            # Most layers need no normalising: one read feeds the builder and scans the layer; the rest
            # take a second read, normalised by the plan of the first.
            normal, built = self._build_in_one_pass(layer, args, fifo)
            if not built:
                blob_path.unlink(missing_ok=True)  # a killed or discarded run's output
                normal = self._build_in_two_passes(layer, args, fifo, normal)
            # Only now, after the source tar matched its diff_id, do the blob and the table enter the store.
            blob_digest, blob_size = store.commit_file(blob_path)
        _say_losses(layer, normal)
        table = store_table(store, normal.table)
        bootstrap = extract_trailer_entry(store, blob_digest, ENTRY_BOOTSTRAP)
        facts = NydusLayerFacts(
            bootstrap=bootstrap.digest,
            fs_version=self.options.fs_version,
            blob_toc_digest=bootstrap.toc_digest or None,
            directories=table.digest,  # for `finish`: implicit parents get the lower layers' attributes
            # The layer bootstrap may point at this dictionary's blobs; `finish` must merge with the same one.
            chunk_dict=chunk_dict.image_digest if chunk_dict is not None else None,
        )
        descriptor = nydus_blob(blob_digest, blob_size)
        # nydus-snapshotter labels a nydus blob's uncompressed digest as the blob digest itself.
        return ConvertedLayer(
            source=layer.descriptor,
            descriptor=descriptor,
            diff_id=blob_digest,
            facts=facts,
            local_blobs=(bootstrap_blob(store, bootstrap.digest), table),
        )

    def _build_in_one_pass(
        self, layer: LayerInput, args: list[str], fifo: Path
    ) -> tuple[tarnormalize.Normalisation, bool]:
        """Feed the layer to the builder as it is while scanning it (`ScanningFeed`): the plan of the layer,
        and whether the builder's blob is the layer's (the builder got all of it, and the plan passes it
        through). A hostile entry is refused before the builder gets its header; when the builder fails, a
        refusal or a needed change found by the scan goes first (the builder may have failed on just that),
        its error otherwise.
        """
        short = dg.short(layer.descriptor.digest)
        try:
            builder = self.builder
        except ConfigError:
            _scan_layer(layer, check_diff_id=False)  # no builder: a refusal still goes first
            raise
        with layer.open_tar() as tar_stream:
            feed = ScanningFeed(tar_stream, layer.entry_limit())
            builder_error: DriverError | None = None
            fed = False
            try:
                try:
                    run_builder(
                        builder,
                        args,
                        what=f"create for layer {short}",
                        stdin_text=self.options.prefetch_input,
                        fifo=fifo,
                        chunks=feed.chunks(),
                    )
                    fed = True
                except NotPassedThrough as stop:
                    log.debug("layer %s is not passed through as it is (%s): two passes", short, stop)
                except DriverError as exc:
                    builder_error = exc
                normal = feed.normalisation()
            except InvalidImage as exc:
                raise type(exc)(f"layer {layer.descriptor.digest}: {exc}") from None
            if builder_error is not None and normal.passes_through:
                raise builder_error
        return normal, fed and normal.passes_through

    def _build_in_two_passes(
        self, layer: LayerInput, args: list[str], fifo: Path, normal: tarnormalize.Normalisation | None
    ) -> tarnormalize.Normalisation:
        """Pass 1 (unless `normal` is its plan already), headers only: refuses hostile entries before the
        builder runs, plans the normalising. Pass 2 feeds the builder the normalised layer."""
        if normal is None:
            normal = _scan_layer(layer, check_diff_id=False)
        if normal.changes():
            # The tree stays the same (layer application would do the same); the log says what moved.
            log.info(
                "layer %s normalised for nydus-image: %s",
                dg.short(layer.descriptor.digest),
                "; ".join(normal.changes()),
            )
        with layer.open_tar() as tar_stream:
            run_builder(
                self.builder,
                args,
                what=f"create for layer {dg.short(layer.descriptor.digest)}",
                stdin_text=self.options.prefetch_input,
                fifo=fifo,
                # A layer that needs no change goes as it is (here only when the one pass met an entry whose
                # extension headers `builder_compatible_tar` walks otherwise).
                source=(
                    tar_stream
                    if normal.passes_through
                    else tarnormalize.as_stream(tarnormalize.normalized_tar(tar_stream, normal))
                ),
            )
        return normal

    def _convert_layer_ref(self, layer: LayerInput) -> ConvertedLayer:
        """zran: index the original gzip blob; the Nydus layer keeps only RAFS and zran metadata."""
        if not oci.is_gzip_layer(layer.descriptor.media_type):
            raise DriverError(
                f"oci_ref needs gzip layers, layer {layer.descriptor.digest} is {layer.descriptor.media_type}"
            )
        store = layer.store
        # The builder indexes the original gzip bytes, so nothing can be normalised on the way in: refuse
        # what it would get wrong, and keep the directory table for the merge.
        normal = _scan_layer(layer)
        if normal.trailing_data:
            raise DriverError(
                f"oci_ref: layer {layer.descriptor.digest} has {normal.trailing_size} bytes after its "
                "end-of-archive blocks, which nydus-image's zran index would read as entries; convert "
                "without oci_ref"
            )
        if normal.changes():
            raise DriverError(
                f"oci_ref: layer {layer.descriptor.digest} needs normalising for nydus-image "
                f"({'; '.join(normal.changes())}), which zran cannot do as it indexes the original "
                "gzip bytes; convert without oci_ref"
            )
        _say_losses(layer, normal)
        table = store_table(store, normal.table)
        with scratch_dir(store) as work:
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
                run_builder(
                    self.builder, args, what=f"create (zran) for layer {dg.short(layer.descriptor.digest)}"
                )
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
        descriptor = nydus_blob(blob_digest, blob_size, ref=layer.descriptor.digest)
        facts = NydusLayerFacts(
            bootstrap=bootstrap.digest,
            fs_version="6",
            blob_toc_digest=bootstrap.toc_digest,
            directories=table.digest,
        )
        return ConvertedLayer(
            source=layer.descriptor,
            descriptor=descriptor,
            diff_id=blob_digest,
            facts=facts,
            local_blobs=(bootstrap_blob(store, bootstrap.digest), table),
            companions=(layer.descriptor,),  # the data stays in the original gzip blob
        )

    # --- whole image -------------------------------------------------------------------------------
    def finish(self, draft: PlatformDraft, store: ContentStore) -> PlatformDraft:
        layers = [layer for layer in draft.layers if layer.descriptor.annotation(mt.NYDUS_BLOB_ANNOTATION)]
        if not layers:
            raise DriverError("nydus finish: the draft has no nydus blob layers to merge")
        if len(layers) != len(draft.layers):
            raise DriverError("nydus finish: the draft mixes nydus blob layers with other layers")
        fs_version = "6" if self.options.oci_ref else self.options.fs_version
        chunk_dict = self._required_chunk_dict()
        used = {facts_of(layer).chunk_dict for layer in layers}
        wanted = chunk_dict.image_digest if chunk_dict else None
        if used != {wanted}:
            # The dictionary moved (its tag was pushed again) between converting layers and merging them.
            raise DriverError(
                f"nydus finish: layers were converted with chunk dictionaries {sorted(map(str, used))}, "
                f"the merge would use {wanted}; convert again"
            )

        with scratch_dir(store) as work:
            merged = work / "image.boot"
            output_json = work / "merge-output.json"
            staged, blob_ids = self._stage_bootstraps(layers, store, work / "bootstraps")
            sources = self._with_directory_patches(layers, staged, store, work / "patches")
            args = [
                "merge",
                "--log-level", "warn",
                "--prefetch-policy", "fs",
                "--output-json", str(output_json),
                "--bootstrap", str(merged),
                *[str(path) for path, _ in sources],
            ]  # fmt: skip
            if self.options.oci_ref:
                # The bootstraps are named after the gzip blobs (the data); these describe the meta blobs.
                # A patch has no blob, so its entries (one per source, as merge wants) are never read.
                def each(value: Callable[[ConvertedLayer], str], patch: Callable[[Path], str]) -> str:
                    return ",".join(value(c) if c else patch(path) for path, c in sources)

                args += [
                    "--blob-digests", each(lambda c: dg.hex_of(c.descriptor.digest), lambda p: p.name),
                    "--blob-sizes", each(lambda c: str(c.descriptor.size), lambda _: "0"),
                    "--blob-toc-digests",
                    each(lambda c: dg.hex_of(_toc_digest(c)), lambda p: p.name),
                ]  # fmt: skip
            if chunk_dict is not None:
                # 2.2.0 refuses layer bootstraps that point at dictionary blobs without it.
                args += _chunk_dict_args(store, chunk_dict)
            run_builder(self.builder, args, what="merge", stdin_text=self.options.prefetch_input)
            merged_blobs = json.loads(output_json.read_text()).get("blobs") or []
            # With oci_ref too: merge leaves a zran layer without file data out of its blob table.
            blob_layers, positions = _layers_in_merge_order(layers, blob_ids, merged_blobs, chunk_dict)
            merged_digest, _ = store.commit_file(merged)

        bootstrap_layer = self._bootstrap_layer(draft, store, merged_digest, fs_version)
        annotations = dict(draft.manifest_annotations)
        annotations.update(
            {
                mt.NYDUS_FS_VERSION_ANNOTATION: fs_version,
                mt.ACCEL_NYDUS_BUILDER_VERSION: self.builder_version,
            }
        )
        if self.options.backend_dir is not None:
            # Blobs to the storage backend; the image is the bootstrap layer alone, as nydus-snapshotter's.
            own_blobs = [layer.descriptor for layer in blob_layers if facts_of(layer).role != "chunk-dict"]
            backend.push_blobs(
                self.options.backend_dir, own_blobs, store, force=self.options.backend_force_push
            )
            return dataclasses.replace(
                draft,
                layers=(bootstrap_layer,),
                history=(dict(BOOTSTRAP_HISTORY),),
                manifest_annotations=annotations,
                artifact_type=draft.artifact_type,
            )
        return dataclasses.replace(
            draft,
            layers=(*blob_layers, bootstrap_layer),
            history=history_with_bootstrap(draft, positions),
            manifest_annotations=annotations,
            artifact_type=mt.NYDUS_ARTIFACT_TYPE if self.options.merge_manifest else draft.artifact_type,
        )

    def keeps_converted_blobs(self) -> bool:
        # `finish` adds the merged bootstrap and may reorder the layer blobs, but pushes each as it is;
        # with a storage backend the blobs go there instead, never to the registry.
        return self.options.backend_dir is None

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
        subject = converted_root.get("subject")
        merged = mutate.index(
            mt.OCI_INDEX,
            [*(m.descriptor for m in oci_manifests), *nydus_entries],
            subject=oci.Descriptor.model_validate(subject) if subject else None,
            annotations=converted_root.get("annotations"),
        )
        root = mutate.store_document(merged, store)
        nydus_manifests = [
            m.model_copy(update={"descriptor": entry})
            for m, entry in zip(image.manifests, nydus_entries, strict=True)
        ]
        return BuiltImage(root=root, manifests=(*oci_manifests, *nydus_manifests))

    def _with_directory_patches(
        self, layers: list[ConvertedLayer], staged: list[Path], store: ContentStore, directory: Path
    ) -> list[tuple[Path, ConvertedLayer | None]]:
        """`sources` with the patches `directories` describes: an empty one first when the first layer has
        whiteouts, an emptying patch before each layer that makes a directory again what a lower layer
        replaced, a directory patch after each layer implying lower directories."""
        tables = []
        for layer in layers:
            digest = facts_of(layer).directories
            if digest is None or not store.exists(digest):
                log.warning(
                    "nydus finish: layer %s has no directory table; implicit parent directories keep "
                    "the builder's defaults in the merged bootstrap",
                    dg.short(layer.source.digest),
                )
                return list(zip(staged, layers, strict=True))
            tables.append(tarnormalize.DirectoryTable.from_json(store.read_bytes(digest)))
        directory.mkdir()
        result: list[tuple[Path, ConvertedLayer | None]] = []
        if first_layer_whites_out(tables):
            result.append((self._patch_bootstrap(patch_tar({}), directory / "empty-base"), None))
        steps = zip(staged, layers, stale_subtrees(tables), patches(tables), strict=True)
        for index, (path, layer, stale, patch) in enumerate(steps):
            if stale:
                emptying = self._patch_bootstrap(emptying_tar(stale), directory / f"{index}-emptying")
                result.append((emptying, None))
            result.append((path, layer))
            if patch:
                result.append((self._patch_bootstrap(patch_tar(patch), directory / str(index)), None))
        return result

    def _patch_bootstrap(self, tar: bytes, directory: Path) -> Path:
        """A chunkless bootstrap of directory entries and opaque markers only; merge never references its
        (empty) blob."""
        directory.mkdir()
        bootstrap = directory / "patch.boot"
        opts = self.options
        args = ["create", "--log-level", "warn", "--blob", str(directory / "patch.blob"),
                "--bootstrap", str(bootstrap), "--whiteout-spec", "none"]  # fmt: skip
        if opts.oci_ref:
            # Same kind of bootstrap as the zran layers (merge wants one chunk size and RAFS version).
            source = directory / "patch.tar.gz"
            source.write_bytes(gzip.compress(tar, mtime=0))
            args += ["--type", "targz-ref"]
        else:
            source = directory / "patch.tar"
            source.write_bytes(tar)
            args += ["--type", "tar-rafs", "--fs-version", opts.fs_version, "--compressor", opts.compressor]
            if opts.chunk_size:
                args += ["--chunk-size", opts.chunk_size]
        args.append(str(source))
        run_builder(self.builder, args, what="create (directory patch)")
        # merge takes a bootstrap's blob id from its file name; this one names no chunk of any blob.
        named = directory / dg.hex_of(dg.of_bytes(tar))
        bootstrap.rename(named)
        return named

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
            source = store.path(facts_of(layer).bootstrap_digest)
            try:
                os.link(source, target)
            except OSError:
                target.symlink_to(source)
            paths.append(target)
            blob_ids.append(blob_id)
        return paths, blob_ids

    def _bootstrap_layer(
        self, draft: PlatformDraft, store: ContentStore, merged_digest: str, fs_version: str
    ) -> ConvertedLayer:
        digest, size, diff_id = pack_bootstrap(store, merged_digest)
        docker_source = draft.source_manifest.media_type == mt.DOCKER_MANIFEST
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
            source=draft.source_manifest,
            descriptor=descriptor,
            diff_id=diff_id,
            facts=NydusLayerFacts(role="bootstrap", bootstrap=merged_digest, fs_version=fs_version),
        )

    @classmethod
    def is_converted(cls, layers: list[oci.Descriptor]) -> bool:
        return any(
            layer.annotation(mt.NYDUS_BOOTSTRAP_ANNOTATION) is not None
            or layer.annotation(mt.NYDUS_BLOB_ANNOTATION) is not None
            for layer in layers
        )


def _toc_digest(layer: ConvertedLayer) -> str:
    toc = facts_of(layer).blob_toc_digest
    if toc is None:
        raise DriverError(f"nydus layer {layer.descriptor.digest} has no blob TOC, which a zran merge names")
    return toc


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
    descriptor = nydus_blob(blob.digest, blob.size)
    # Its diff_id is its digest, as for every nydus blob; it comes from the dictionary, not a source layer.
    return ConvertedLayer(
        source=descriptor,
        descriptor=descriptor,
        diff_id=blob.digest,
        facts=NydusLayerFacts(role="chunk-dict", chunk_dict=chunk_dict.image_digest),
    )
