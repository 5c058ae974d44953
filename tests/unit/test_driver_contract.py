"""One contract every format driver keeps, run over all three (in the spirit of stargz-snapshotter's
CompressionTestSuite): what the engine, the Prefect cache and the conversion cache rely on.

Per driver: each converted layer is a blob in the store under its digest and size; its diff_id is the digest
of the layer's uncompressed content; its file tree read back with the format's own reader equals the source
layer's; `cache_key()` is stable across instances and changes with an option; `is_converted` (and so
`detect_format`) knows the driver's own layers and not plain gzip ones; blobs `finish` needs are in the store;
a source tar that does not match its diff_id fails and commits nothing.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from accel import constants as mt
from accel import digest as dg
from accel.drivers import ConvertedLayer, LayerInput, detect_format, load_driver
from accel.drivers.nydus.facts import facts_of
from accel.errors import DigestMismatch
from accel.store import ContentStore
from tests.harness import imagegen, trees
from tests.harness import nydus as nh

MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Format:
    """How to read one driver's converted layer back, for the checks every driver shares."""

    driver: str
    changed_option: dict[str, Any]  # an option whose change must change the cache key
    uncompressed: Callable[[bytes], bytes]  # the layer's uncompressed content (what diff_id hashes)
    tree_tar: Callable[[ConvertedLayer, ContentStore, Path], bytes | Path]  # the layer's tree, as a tar
    own_entries: frozenset[str] = frozenset()  # entries the format adds to the tree (landmarks, TOC)
    ignore: frozenset[str] = frozenset()  # fields the format does not keep


def _zstd_decompress(blob: bytes) -> bytes:
    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True).read()


def _blob(layer: ConvertedLayer, store: ContentStore) -> bytes:
    return store.path(layer.descriptor.digest).read_bytes()


def _nydus_unpacked(layer: ConvertedLayer, store: ContentStore, work: Path) -> Path:
    # The layer's own bootstrap is among the blobs it needs locally.
    (bootstrap,) = [b for b in layer.local_blobs if b.digest == facts_of(layer).bootstrap]
    return nh.unpack_layer(store, layer.descriptor.digest, bootstrap.digest, work)


FORMATS = {
    "estargz": Format(
        driver="estargz",
        changed_option={"compression_level": 5},
        uncompressed=gzip.decompress,
        tree_tar=lambda layer, store, _: gzip.decompress(_blob(layer, store)),
        own_entries=frozenset(
            {mt.ESTARGZ_NO_PREFETCH_LANDMARK, mt.ESTARGZ_PREFETCH_LANDMARK, mt.ESTARGZ_TOC_TAR_NAME}
        ),
    ),
    "zstdchunked": Format(
        driver="zstdchunked",
        changed_option={"level": 5},
        uncompressed=_zstd_decompress,
        tree_tar=lambda layer, store, _: _zstd_decompress(_blob(layer, store)),
    ),
    "nydus": Format(
        driver="nydus",
        changed_option={"compressor": "lz4_block"},
        uncompressed=lambda blob: blob,  # a nydus blob is its own uncompressed form (its diff_id)
        tree_tar=_nydus_unpacked,
        ignore=frozenset({"uname", "gname"}),  # RAFS keeps numeric owners only
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
    return imagegen.build_image(layers, store), store


def _inputs(image: imagegen.BuiltImage, store: ContentStore) -> list[LayerInput]:
    return [LayerInput(d, i, store) for d, i in zip(image.layers, image.diff_ids, strict=True)]


def _source_tar(layer: LayerInput) -> bytes:
    with layer.open_tar() as f:
        return f.read()


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
        blob = _blob(result, store)
        assert (dg.of_bytes(blob), len(blob)) == (result.descriptor.digest, result.descriptor.size)
        assert store.size(result.descriptor.digest) == result.descriptor.size
        assert result.diff_id == dg.of_bytes(fmt.uncompressed(blob))
        assert all(store.exists(b.digest) and store.size(b.digest) == b.size for b in result.local_blobs)

        source_tree = trees.apply_layers([_source_tar(layer)])
        converted_tree = {
            path: entry
            for path, entry in trees.apply_layers([fmt.tree_tar(result, store, tmp_path)]).items()
            if path not in fmt.own_entries
        }
        differences = trees.compare(
            source_tree,
            converted_tree,
            ignore=fmt.ignore,
            labels=("source layer", f"{fmt.driver} layer"),
        )
        assert differences == []

    # Its own layers are recognised as converted, plain gzip layers are not.
    descriptors = [c.descriptor for c in converted]
    assert type(driver).is_converted(descriptors)
    assert detect_format(descriptors) == fmt.driver
    assert not type(driver).is_converted(list(image.layers))
    assert detect_format(list(image.layers)) is None


@pytest.mark.parametrize("fmt", FORMAT_PARAMS)
def test_a_source_that_does_not_match_its_diff_id_commits_nothing(fmt: Format, tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")
    layer = imagegen.TarBuilder(auto_parents=True)
    layer.file("etc/motd", b"hello\n")
    image = imagegen.build_image([layer], store)
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
