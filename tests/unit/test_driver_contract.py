"""One contract every format driver keeps, run over all three (in the spirit of stargz-snapshotter's
CompressionTestSuite): what the engine, the Prefect cache and the conversion cache rely on.

Per driver: each converted layer is a blob in the store under its digest and size; its diff_id is the digest
of the layer's uncompressed content; read back through its format's own reader (`accel.drivers.reader_for`:
the format package's `reader`; Nydus layers through `readback`'s `nydus-image unpack`) its structure checks
pass and its file tree equals the source layer's; `finish` on a one-platform image returns the converted
layers (Nydus: and the merged bootstrap after them), and the finished platform read back through the format's
reader gives the source's merged view; `cache_key()` is stable across instances and changes with an option;
`is_converted` (and so `detect_format`) knows the driver's own layers and not plain gzip ones; blobs `finish`
needs are in the store; a source tar that does not match its diff_id fails and commits nothing.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import zstandard

from accel import constants as mt
from accel import digest as dg
from accel import trees
from accel.drivers import ConvertedLayer, LayerInput, PlatformDraft, detect_format, load_driver, reader_for
from accel.drivers.nydus import readback
from accel.drivers.reader import LayerReader, PlatformReader, PlatformUnderTest
from accel.errors import DigestMismatch
from accel.model import SourceLayer
from accel.oci import ImageConfig
from accel.store import ContentStore
from accel.verdict import LayerVerdict, Verdict
from tests.harness import imagegen
from tests.harness import nydus as nh

MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Format:
    """What the shared checks need to know of one driver."""

    driver: str
    changed_option: dict[str, Any]  # an option whose change must change the cache key
    uncompressed: Callable[[bytes], bytes]  # the layer's uncompressed content (what diff_id hashes)
    first_check: str  # the first structure check its reader reports for a layer
    ignore: frozenset[str] = frozenset()  # fields the format does not keep
    finish_adds: str | None = None  # the annotation of the layer `finish` adds after the converted ones


def _zstd_decompress(blob: bytes) -> bytes:
    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True).read()


def _blob(layer: ConvertedLayer, store: ContentStore) -> bytes:
    return store.path(layer.descriptor.digest).read_bytes()


FORMATS = {
    "estargz": Format(
        driver="estargz",
        changed_option={"compression_level": 5},
        uncompressed=gzip.decompress,
        first_check="footer",
    ),
    "zstdchunked": Format(
        driver="zstdchunked",
        changed_option={"level": 5},
        uncompressed=_zstd_decompress,
        first_check="footer",
    ),
    "nydus": Format(
        driver="nydus",
        changed_option={"compressor": "lz4_block"},
        uncompressed=lambda blob: blob,  # a nydus blob is its own uncompressed form (its diff_id)
        first_check="unpack",
        ignore=frozenset({"uname", "gname"}),  # RAFS keeps numeric owners only
        finish_adds=mt.NYDUS_BOOTSTRAP_ANNOTATION,
    ),
}

FORMAT_PARAMS = [
    pytest.param(FORMATS["estargz"], id="estargz"),
    pytest.param(FORMATS["zstdchunked"], id="zstdchunked"),
    pytest.param(FORMATS["nydus"], id="nydus", marks=[nh.needs_builder, pytest.mark.nydus]),
]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[imagegen.BuiltImage, ContentStore]:
    """The standard three layers (every entry type, whiteouts, hardlinks, long names) as gzip layers."""
    store = ContentStore(tmp_path_factory.mktemp("contract-store"))
    layers = imagegen.standard_layers(big_file_size=2 * MiB + 4321)
    return imagegen.generate_image(layers, store), store


def _inputs(image: imagegen.BuiltImage, store: ContentStore) -> list[LayerInput]:
    return [LayerInput(d, i, store) for d, i in zip(image.layers, image.diff_ids, strict=True)]


def _source_entries(layer: LayerInput) -> list[trees.Entry]:
    with layer.open_tar() as f:
        return list(trees.iter_tar(f))


def _as_read(layer: ConvertedLayer) -> SourceLayer:
    return SourceLayer(descriptor=layer.descriptor, diff_id=layer.diff_id)


def _read_back(
    layer: ConvertedLayer, store: ContentStore, work: Path
) -> tuple[list[str], list[trees.Entry] | dict[str, trees.Entry]]:
    """The checks passed and what the format's reader reads of one layer: a layer reader's entries, or the
    tree `nydus-image unpack` rebuilds from the layer's own bootstrap (a Nydus layer is read a platform at a
    time by its reader, through the same `readback`)."""
    reader = reader_for(layer.descriptor)
    if isinstance(reader, LayerReader):
        checks: list[str] = []
        entries = reader.read(store.path(layer.descriptor.digest), _as_read(layer), checks)
        return checks, entries
    unpacked = readback.unpack_layer(readback.builder(), store, layer.descriptor.digest, work)
    return ["unpack"], trees.apply_layers([unpacked])


def _comparable(source: Sequence[trees.Entry], reader: LayerReader | PlatformReader) -> list[trees.Entry]:
    return reader.comparable_source(source) if isinstance(reader, LayerReader) else list(source)


@pytest.mark.parametrize("fmt", FORMAT_PARAMS)
def test_converted_layers_keep_the_driver_contract(
    fmt: Format, source: tuple[imagegen.BuiltImage, ContentStore], tmp_path: Path
) -> None:
    image, store = source
    driver = load_driver(fmt.driver)
    inputs = _inputs(image, store)
    converted = [driver.convert_layer(layer) for layer in inputs]

    for layer, result in zip(inputs, converted, strict=True):
        assert result.source == layer.descriptor
        # Declared, so a target that cannot hold them refuses the driver before converting.
        assert result.descriptor.media_type in driver.layer_media_types
        blob = _blob(result, store)
        assert (dg.of_bytes(blob), len(blob)) == (result.descriptor.digest, result.descriptor.size)
        assert store.size(result.descriptor.digest) == result.descriptor.size
        assert result.diff_id == dg.of_bytes(fmt.uncompressed(blob))
        assert all(store.exists(b.digest) and store.size(b.digest) == b.size for b in result.local_blobs)

        # Read back through the format's own reader, the one the driver names.
        reader = reader_for(result.descriptor)
        assert reader is type(driver).reader and reader.claims(result.descriptor)
        assert not reader.claims(layer.descriptor)
        checks, read = _read_back(result, store, tmp_path)
        assert checks[0] == fmt.first_check, checks
        if isinstance(reader, LayerReader):
            assert "diff_id" in checks  # the decompressed stream's digest is the layer's diff_id
            if reader.claims(result.descriptor) and fmt.driver != "nydus":
                assert "toc == tar" in checks  # and the TOC says what the stream holds
        source_tree = trees.apply_entries([_comparable(_source_entries(layer), reader)])
        read_tree = read if isinstance(read, dict) else trees.apply_entries([read])
        differences = trees.compare(
            source_tree, read_tree, ignore=fmt.ignore, labels=("source layer", f"{fmt.driver} layer")
        )
        assert differences == []

    # Its own layers are recognised as converted, plain gzip layers are not.
    descriptors = [c.descriptor for c in converted]
    assert type(driver).is_converted(descriptors)
    assert detect_format(descriptors) == fmt.driver
    assert not type(driver).is_converted(list(image.layers))
    assert detect_format(list(image.layers)) is None


@pytest.mark.parametrize("fmt", FORMAT_PARAMS)
def test_finish_keeps_the_converted_layers_and_the_platform_reads_back(
    fmt: Format, source: tuple[imagegen.BuiltImage, ContentStore], tmp_path: Path
) -> None:
    image, store = source
    driver = load_driver(fmt.driver)
    inputs = _inputs(image, store)
    converted = tuple(driver.convert_layer(layer) for layer in inputs)
    draft = PlatformDraft(
        source_manifest=image.manifest,
        source_reference="registry.local/library/app:1",
        config=ImageConfig.parse(image.config_raw),
        layers=converted,
    )

    finished = driver.finish(draft, store)
    assert {layer.descriptor.media_type for layer in finished.layers} <= driver.layer_media_types

    if fmt.finish_adds is None:
        assert finished == draft
    else:
        *layers, added = finished.layers
        assert tuple(layers) == converted  # every layer has data of its own here, so each is kept, in order
        assert added.descriptor.annotation(fmt.finish_adds)
        assert store.size(added.descriptor.digest) == added.descriptor.size
        assert finished.source_manifest == draft.source_manifest and finished.config == draft.config
        assert finished.history is not None and len(finished.history) >= len(finished.layers)

    # The finished platform, read back through the format's reader, is the source's platform.
    source_entries = [_source_entries(layer) for layer in inputs]
    target_layers = [_as_read(layer) for layer in finished.layers]
    readers = {reader_for(layer.descriptor) for layer in target_layers}
    assert readers == {type(driver).reader}
    (reader,) = readers
    if isinstance(reader, LayerReader):
        read = [reader.read(store.path(t.descriptor.digest), t, []) for t in target_layers]
        merged_source = trees.apply_entries([reader.comparable_source(s) for s in source_entries])
        assert trees.compare(merged_source, trees.apply_entries(read), labels=("source", "target")) == []
        return
    verdict = Verdict(source="source", target="target")
    rows = [
        LayerVerdict("-", n, t.descriptor.digest, reader.label(t.descriptor))
        for n, t in enumerate(target_layers)
    ]
    verdict.layers.extend(rows)
    reader.verify_platform(
        PlatformUnderTest(
            key="-",
            source_layers=[SourceLayer(descriptor=i.descriptor, diff_id=i.diff_id) for i in inputs],
            source_trees=source_entries,
            target_layers=target_layers,
            rows=rows,
            store=store,
            verdict=verdict,
            scratch=tmp_path,
        )
    )
    assert verdict.ok, verdict.table()
    assert [row.source for row in rows[:-1]] == [i.descriptor.digest for i in inputs]
    assert {"nydus-image check", "merged view"} <= set(rows[-1].checks)
    assert all(row.checks == ["unpack", "tree"] for row in rows[:-1])


@pytest.mark.parametrize("fmt", FORMAT_PARAMS)
def test_a_source_that_does_not_match_its_diff_id_commits_nothing(fmt: Format, tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")
    layer = imagegen.TarBuilder(auto_parents=True)
    layer.file("etc/motd", b"hello\n")
    image = imagegen.generate_image([layer], store)
    before = sorted(p.name for p in store.path(image.layers[0].digest).parent.iterdir())
    wrong = LayerInput(image.layers[0], dg.of_bytes(b"another layer"), store)
    with pytest.raises(DigestMismatch):
        load_driver(fmt.driver).convert_layer(wrong)
    assert sorted(p.name for p in store.path(image.layers[0].digest).parent.iterdir()) == before
    assert list((store.root / "ingest").iterdir()) == []


@pytest.mark.parametrize("fmt", FORMAT_PARAMS)
def test_cache_key_is_stable_and_follows_the_options(fmt: Format) -> None:
    first, second = load_driver(fmt.driver), load_driver(fmt.driver, {})
    assert first is not second
    assert first.cache_key() == second.cache_key()
    assert first.cache_key().startswith(f"{fmt.driver}-")
    changed = load_driver(fmt.driver, fmt.changed_option)
    assert changed.cache_key() != first.cache_key()
    assert load_driver(fmt.driver, fmt.changed_option).cache_key() == changed.cache_key()


@pytest.mark.parametrize("fmt", FORMAT_PARAMS)
def test_oci_sources_stay_oci_and_docker_sources_follow_docker2oci(fmt: Format) -> None:
    for config in ({}, {"docker2oci": False}):
        driver = load_driver(fmt.driver, config)
        assert driver.writes_oci(mt.OCI_MANIFEST) and driver.writes_oci(mt.OCI_INDEX)
    assert load_driver(fmt.driver).writes_oci(mt.DOCKER_MANIFEST)
    # zstd layers exist only in OCI manifests; the others may keep a Docker source Docker.
    keeps_docker = not load_driver(fmt.driver, {"docker2oci": False}).writes_oci(mt.DOCKER_MANIFEST)
    assert keeps_docker == (fmt.driver != "zstdchunked")
