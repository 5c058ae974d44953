"""Nydus `chunk_dict_ref`: a converted Nydus image serves as chunk dictionary for the next conversion.

Image A is converted to Nydus (`a:v1-nydus`); image B shares a whole layer and one more file with A and is
converted twice, with `a:v1-nydus` as chunk dictionary and without. What was pushed is fetched back from
B's repository and judged by `nydus-image` itself.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pytest

from accel import constants as mt
from accel import digest as dg
from accel.compression import open_uncompressed
from accel.context import context_for
from accel.drivers import LayerInput, load_driver
from accel.drivers.dependencies import DependencyResolver, stage_dependency_blobs
from accel.drivers.nydus import ChunkDict, NydusDriver
from accel.drivers.nydus import chunkdict as nydus_chunkdict
from accel.drivers.nydus.chunkdict import resolve_chunk_dict
from accel.errors import ConfigError, DriverError
from accel.model import BuiltImage, BuiltManifest
from accel.oci import Descriptor, ImageConfig, Manifest
from accel.reference import Reference
from accel.registry import RegistryClient
from accel.store import ContentStore
from tests.harness import configs, imagegen, pushing
from tests.harness import nydus as nh

pytestmark = [pytest.mark.registry, pytest.mark.prefect, pytest.mark.nydus, nh.needs_builder]

KiB = 1024


def _base_layer() -> imagegen.TarBuilder:
    base = imagegen.TarBuilder(auto_parents=True)
    base.file("etc/os-release", b"NAME=accel-test\nVERSION=1\n")
    base.file_from_generator("usr/lib/libshared.so", 1536 * KiB, seed=11)
    base.symlink("usr/lib/libshared.so.1", "libshared.so")
    return base


def _image_a(store: ContentStore) -> imagegen.BuiltImage:
    app = imagegen.TarBuilder(auto_parents=True)
    app.file_from_generator("opt/a/app.bin", 600 * KiB, seed=12)
    return imagegen.generate_image([_base_layer(), app], store)


def _image_b(store: ContentStore) -> imagegen.BuiltImage:
    """A's base layer as it is, then a layer with one of A's files under another name and one of its own."""
    app = imagegen.TarBuilder(auto_parents=True)
    app.file_from_generator("opt/b/copy-of-a.bin", 600 * KiB, seed=12)
    app.file_from_generator("opt/b/own.bin", 400 * KiB, seed=13)
    return imagegen.generate_image([_base_layer(), app], store)


def _config(registry, work: Path, driver_config: dict[str, Any]) -> Path:
    nydus = configs.driver("nydus", **driver_config)
    return configs.write_config(work / "config.yaml", {registry.host: {}}, [nydus])


def _convert(config: Path, source: Reference) -> Reference:
    from flows.convert_image import convert_image

    (target,) = convert_image(source=str(source), config=str(config)).targets
    return Reference.parse(target.reference)


def _manifest(client: RegistryClient, ref: Reference) -> Manifest:
    _, raw = client.fetch_manifest(ref)
    return Manifest.parse(raw)


def _source_tars(store: ContentStore, image: imagegen.BuiltImage) -> list[bytes]:
    tars = []
    for layer, diff_id in zip(image.layers, image.diff_ids, strict=True):
        with open_uncompressed(store.path(layer.digest), layer.media_type, diff_id) as f:
            tars.append(f.read())
    return tars


@pytest.fixture(scope="module")
def pushed(registry, client, tmp_path_factory: pytest.TempPathFactory, prefect_api) -> dict[str, Any]:
    """A and B in the registry; A converted to Nydus, which is the dictionary."""
    store = ContentStore(tmp_path_factory.mktemp("chunkdict-source"))
    image_a, image_b = _image_a(store), _image_b(store)
    source_a = Reference.parse(f"{registry.host}/chunkdict/a:v1")
    source_b = Reference.parse(f"{registry.host}/chunkdict/b:v1")
    pushing.push(client, store, source_a, image_a)
    pushing.push(client, store, source_b, image_b)
    pushing.push(client, store, source_b.with_tag("plain"), image_b)  # converted without the dictionary
    work = tmp_path_factory.mktemp("chunkdict-a")
    dictionary = _convert(_config(registry, work, {}), source_a)
    assert dictionary.tag == "v1-nydus"
    return {"store": store, "a": image_a, "b": image_b, "source_b": source_b, "dictionary": dictionary}


def test_b_converted_with_a_as_chunk_dictionary_reuses_its_chunks(
    registry, client, pushed, tmp_path: Path
) -> None:
    dictionary: Reference = pushed["dictionary"]
    source_b: Reference = pushed["source_b"]
    dict_manifest = _manifest(client, dictionary)
    *dict_blobs, _ = dict_manifest.layers
    dict_base, dict_app = dict_blobs

    with_dict = _config(registry, tmp_path / "with-dict", {"chunk_dict_ref": str(dictionary)})
    target = _convert(with_dict, source_b)
    plain = _config(registry, tmp_path / "plain", {})
    plain_target = _convert(plain, source_b.with_tag("plain"))

    manifest = _manifest(client, target)
    *blobs, boot = manifest.layers
    own = [b for b in blobs if b.digest not in {d.digest for d in dict_blobs}]
    # B's base layer is A's: every chunk of it is in the dictionary, so no blob of its own is listed.
    # Its second layer's blob holds only own.bin; copy-of-a.bin is read from A's second blob.
    assert len(own) == 1
    assert [(b.digest, b.size) for b in blobs] == [
        (dict_base.digest, dict_base.size),
        (dict_app.digest, dict_app.size),
        (own[0].digest, own[0].size),
    ]
    for blob in blobs:
        assert blob.media_type == mt.NYDUS_BLOB
        assert blob.annotations == {mt.NYDUS_BLOB_ANNOTATION: "true"}
    assert boot.annotation(mt.NYDUS_BOOTSTRAP_ANNOTATION) == "true"

    # Config and history describe exactly these layers.
    config = ImageConfig.parse(client.fetch_blob_bytes(target, manifest.config))
    boot_diff_id = dg.of_bytes(gzip.decompress(client.fetch_blob_bytes(target, boot)))
    assert config.diff_ids == [*(b.digest for b in blobs), boot_diff_id]
    history = config.doc["history"]
    assert len([h for h in history if not h.get("empty_layer")]) == len(manifest.layers)
    assert [h.get("comment") for h in history if not h.get("empty_layer")] == [
        "Nydus chunk dictionary blob",
        "Nydus chunk dictionary blob",
        None,
        "Nydus Bootstrap Layer",
    ]

    # Every blob is in B's repository (the dictionary's were mounted from A's), and the builder accepts
    # the bootstrap, which references exactly the listed blobs in their order.
    fetched = ContentStore(tmp_path / "fetched")
    for layer in manifest.layers:
        client.fetch_blob(target, layer, fetched)
    bootstrap = tmp_path / "image.boot"
    nh.bootstrap_of_layer(fetched.path(boot.digest), bootstrap)
    report = nh.check(bootstrap, nh.blob_dir(fetched), tmp_path)
    assert report["blobs"] == [dg.hex_of(b.digest) for b in blobs]
    (copy_block, own_block) = nh.inspect_dir(bootstrap, "opt/b", ["copy-of-a.bin", "own.bin"])
    assert set(nh.chunk_blobs(copy_block)) == {dg.hex_of(dict_app.digest)}
    assert set(nh.chunk_blobs(own_block)) == {dg.hex_of(own[0].digest)}
    (lib_block,) = nh.inspect_dir(bootstrap, "usr/lib", ["libshared.so"])
    assert set(nh.chunk_blobs(lib_block)) == {dg.hex_of(dict_base.digest)}
    # The whole tree reads back from those blobs as B's layers applied in order.
    expected = nh.expected_merged_tree(_source_tars(pushed["store"], pushed["b"]))
    assert nh.merged_tree(fetched, bootstrap) == expected

    # Deduplication happened: without the dictionary B stores all of its data itself.
    plain_blobs = _manifest(client, plain_target).layers[:-1]
    assert len(plain_blobs) == 2
    assert sum(b.size for b in own) < sum(b.size for b in plain_blobs) // 3

    # The dictionary image names the driver version and so the cache key: a new dictionary, new layers.
    dict_driver = context_for(with_dict).driver("nydus")
    assert isinstance(dict_driver, NydusDriver) and dict_driver.chunk_dict is not None
    assert dict_driver.chunk_dict.image_digest == dict_manifest.descriptor().digest
    assert manifest.annotations[mt.ACCEL_DRIVER_VERSION] == dict_driver.version
    assert dg.hex_of(dict_manifest.descriptor().digest)[:16] in dict_driver.version
    assert dict_driver.cache_key() != context_for(plain).driver("nydus").cache_key()
    moved = ChunkDict(
        reference=dict_driver.chunk_dict.reference,
        image_digest=dg.of_bytes(b"another dictionary image"),
        bootstrap_digest=dict_driver.chunk_dict.bootstrap_digest,
        blobs=dict_driver.chunk_dict.blobs,
    )
    base_driver = load_driver("nydus", {"chunk_dict_ref": str(dictionary)})
    assert isinstance(base_driver, NydusDriver)
    assert base_driver.with_chunk_dict(moved).cache_key() != dict_driver.cache_key()


# --- bad references ----------------------------------------------------------------------------------


def test_missing_dictionary_image_is_a_driver_error_naming_it(registry, client, tmp_path: Path) -> None:
    reference = f"{registry.host}/chunkdict/nowhere:v1-nydus"
    with pytest.raises(DriverError, match=f"chunk_dict_ref {reference}"):
        resolve_chunk_dict(client, reference, ContentStore(tmp_path / "store"))
    # The same through the per-process context, which resolves it for the driver.
    ctx = context_for(_config(registry, tmp_path, {"chunk_dict_ref": reference}))
    with pytest.raises(DriverError, match=f"chunk_dict_ref {reference}"):
        ctx.driver("nydus")


def test_non_nydus_dictionary_image_is_refused(registry, client, tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")
    reference = Reference.parse(f"{registry.host}/chunkdict/plain:v1")
    pushing.push(client, store, reference, imagegen.generate_image([_base_layer()], store))
    with pytest.raises(DriverError, match=rf"chunk_dict_ref {reference} .* is not a Nydus image"):
        resolve_chunk_dict(client, str(reference), ContentStore(tmp_path / "resolver"))


def test_unresolved_or_invalid_chunk_dict_ref_is_refused(tmp_path: Path) -> None:
    driver = load_driver("nydus", {"chunk_dict_ref": "registry.local/dict:nydus"})
    store = ContentStore(tmp_path)
    layer = Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=dg.of_bytes(b"layer"), size=5)
    with pytest.raises(DriverError, match=r"registry\.local/dict:nydus is not resolved"):
        driver.convert_layer(LayerInput(layer, dg.of_bytes(b"tar"), store))
    with pytest.raises(ConfigError, match="chunk_dict_ref"):
        load_driver("nydus", {"chunk_dict_ref": "Not A Reference!"})
    with pytest.raises(ConfigError, match="chunk_dict_ref"):
        load_driver("nydus", {"chunk_dict_ref": "registry.local/dict:nydus", "oci_ref": True})


# --- resolution cache and blob staging (no registry) --------------------------------------------------


def _chunk_dict(name: str, blobs: tuple[Descriptor, ...] = ()) -> ChunkDict:
    return ChunkDict(
        reference="registry.local/dict:nydus",
        image_digest=dg.of_bytes(name.encode()),
        bootstrap_digest=dg.of_bytes(b"bootstrap " + name.encode()),
        blobs=blobs,
    )


def test_resolver_re_resolves_after_its_ttl(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    dictionaries = iter([_chunk_dict("first"), _chunk_dict("second")])
    resolved: list[str] = []

    def fake_resolve(client: object, reference: str, store: ContentStore, platform: object) -> ChunkDict:
        resolved.append(reference)
        return next(dictionaries)

    monkeypatch.setattr(nydus_chunkdict, "resolve_chunk_dict", fake_resolve)
    now = [0.0]
    resolver = DependencyResolver(
        lambda: None,  # type: ignore[arg-type,return-value]
        ContentStore(tmp_path),
        ttl=60,
        clock=lambda: now[0],
    )
    base = load_driver("nydus", {"chunk_dict_ref": "registry.local/dict:nydus"})
    first = resolver.bind(base)
    now[0] = 59
    assert resolver.bind(base) is first and resolved == ["registry.local/dict:nydus"]
    now[0] = 61
    second = resolver.bind(base)
    assert isinstance(first, NydusDriver) and isinstance(second, NydusDriver)
    assert second.chunk_dict == _chunk_dict("second") and len(resolved) == 2
    assert first.version != second.version
    # Both stay known: an image built with the first may still be on its way to the registry.
    assert [d.image_digest for d in resolver.resolved()] == [
        _chunk_dict("first").image_digest,
        _chunk_dict("second").image_digest,
    ]
    plain = load_driver("nydus", {})
    assert resolver.bind(plain) is plain and len(resolved) == 2


class _FakeRegistry:
    def __init__(self, mountable: set[str]) -> None:
        self.mountable = mountable
        self.calls: list[tuple[str, str]] = []

    def blob_exists(self, repo_ref: Reference, digest: str) -> bool:
        self.calls.append(("exists", digest))
        return False

    def mount_blob(self, repo_ref: Reference, digest: str, from_repository: str) -> bool:
        self.calls.append((f"mount from {from_repository}", digest))
        return digest in self.mountable

    def fetch_blob(self, repo_ref: Reference, desc: Descriptor, store: ContentStore) -> Path:
        self.calls.append((f"fetch from {repo_ref.name}", desc.digest))
        return store.path(desc.digest)


def test_dictionary_blobs_are_mounted_else_fetched_for_the_push(tmp_path: Path) -> None:
    def blob(name: str) -> Descriptor:
        return Descriptor(media_type=mt.NYDUS_BLOB, digest=dg.of_bytes(name.encode()), size=len(name))

    mounted, copied, own, unused = blob("mounted"), blob("copied"), blob("own"), blob("unused")
    chunk_dict = _chunk_dict("dict", (mounted, copied, unused))
    config = blob("config")
    image = BuiltImage(
        root=config,
        manifests=(BuiltManifest(descriptor=config, config=config, layers=(mounted, own, copied)),),
    )
    store = ContentStore(tmp_path)

    fake = _FakeRegistry(mountable={mounted.digest})
    target = Reference.parse("registry.local/app:v1-nydus")
    staged = stage_dependency_blobs(fake, target, image, [chunk_dict], store)
    assert staged == [mounted, copied]
    assert fake.calls == [
        ("exists", mounted.digest),
        ("mount from dict", mounted.digest),
        ("exists", copied.digest),
        ("mount from dict", copied.digest),
        ("fetch from registry.local/dict", copied.digest),
    ]
    # Another registry cannot mount: the blob goes through the store.
    fake = _FakeRegistry(mountable={mounted.digest})
    elsewhere = Reference.parse("other.example/app:v1-nydus")
    stage_dependency_blobs(fake, elsewhere, image, [chunk_dict], store)
    assert ("fetch from registry.local/dict", mounted.digest) in fake.calls
    assert not any(call.startswith("mount") for call, _ in fake.calls)
