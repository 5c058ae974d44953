"""Nydus driver: options, builder lookup, and real conversions with nydus-image 2.2.0.

Converted layers are read back with the builder itself (tests/harness/nydus.py): each layer through its
own bootstrap + blob with `unpack`, the merged image bootstrap with `check` plus `inspect`.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from accel import cache
from accel import constants as mt
from accel import digest as dg
from accel.drivers import ConvertedLayer, LayerInput, PlatformDraft, load_driver
from accel.drivers.nydus import BOOTSTRAP_HISTORY, NydusDriver, NydusOptions, extract_trailer_entry, tools
from accel.drivers.nydus.facts import facts_of
from accel.drivers.nydus.tar import builder_compatible_tar
from accel.errors import ConfigError, DigestMismatch, DriverError, InvalidImage
from accel.image import build_image
from accel.model import SourceImage, SourceLayer, SourceManifest
from accel.oci import Descriptor, ImageConfig, Index, Manifest
from accel.store import ContentStore
from tests.harness import imagegen, trees
from tests.harness import nydus as nh

MiB = 1 << 20


# --- options ---------------------------------------------------------------------------------------


def test_options_defaults_and_normalisation() -> None:
    options = NydusOptions()
    assert (options.fs_version, options.compressor, options.chunk_size) == ("6", "zstd", None)
    assert options.docker2oci is True and options.oci_ref is False
    assert options.prefetch_input == "/\n"

    options = NydusOptions.model_validate(
        {
            "fs_version": 5,
            "chunk_size": 0x4000,
            "fs_align_chunk": True,
            "prefetch_patterns": "/etc\n\n /usr/bin \n",
        }
    )
    assert options.fs_version == "5"
    assert options.chunk_size == "0x4000"
    assert options.prefetch_input == "/etc\n/usr/bin\n"
    assert NydusOptions(chunk_size="0X100000").chunk_size == "0x100000"
    # Switched-off unsupported features (as acceld configs often carry them) are accepted and dropped.
    assert (
        NydusOptions.model_validate({"batch_size": "0", "encrypt": False})
        .model_dump()
        .keys()
        .isdisjoint({"batch_size", "encrypt"})
    )
    kept = NydusOptions(chunk_dict_ref="registry.local/dict:nydus", with_referrer=True, merge_manifest=True)
    assert kept.chunk_dict_ref == "registry.local/dict:nydus" and kept.with_referrer and kept.merge_manifest


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"chunk_size": 3000}, "chunk_size"),
        ({"chunk_size": "0x800"}, "chunk_size"),
        ({"chunk_size": "0x2000000"}, "chunk_size"),
        ({"chunk_size": "big"}, "chunk_size"),
        ({"fs_version": "4"}, "fs_version"),
        ({"compressor": "gzip"}, "compressor"),
        ({"compressor": "gzip"}, "compressor 'gzip' is not supported by nydus-image 2.2.0"),
        ({"fs_chunk_size": "0x4000", "chunk_size": "0x8000"}, "'fs_chunk_size' ('0x4000') and 'chunk_size'"),
        ({"backend_type": "oss", "backend_config": "{}"}, "backend_type 'oss'"),
        ({"backend_type": "localfs", "backend_config": "{}"}, "backend_config for localfs"),
        ({"backend_type": "localfs", "backend_config": '{"dir": "/b"}', "oci_ref": True}, "backend_type"),
        ({"oci_ref": True, "fs_version": 5}, "oci_ref"),
        ({"oci_ref": True, "docker2oci": False}, "docker2oci"),
        ({"prefetch_patterns": "/etc\nusr/bin"}, "usr/bin"),
        ({"no_such_option": 1}, "no_such_option"),
    ],
)
def test_invalid_options_name_the_field(config: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(field)):
        load_driver("nydus", config)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("batch_size", "0x100000"),
        ("encrypt", True),
        ("merge_parent_bootstrap", True),
        ("encrypt_recipients", "age1recipient"),
    ],
)
def test_features_missing_from_2_2_0_are_refused(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"'{key}'.*nydus-image 2\.2\.0"):
        load_driver("nydus", {key: value})


# --- tar fix-ups on the way into the builder -------------------------------------------------------


def test_builder_input_differs_from_the_source_only_in_blank_device_numbers() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(imagegen.tar_info("run/initctl", tarfile.FIFOTYPE))  # tarfile leaves devmajor/minor blank
        data = b"payload that spans blocks " * 40
        tar.addfile(imagegen.tar_info("etc/file", size=len(data)), io.BytesIO(data))
        tar.addfile(imagegen.tar_info("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3))
    source = buf.getvalue() + b"trailing bytes after the archive"
    fixed = b"".join(builder_compatible_tar(io.BytesIO(source)))
    # It ends with the end-of-archive blocks (after dev/null): nothing after them reaches the builder.
    end = 512 + (512 + 3 * 512) + 512 + 1024  # run/initctl, etc/file and its data, dev/null, the end
    assert len(fixed) == end and fixed.endswith(bytes(1024)) and b"trailing" not in fixed
    changed_blocks = [i for i in range(0, len(fixed), 512) if source[i : i + 512] != fixed[i : i + 512]]
    assert changed_blocks == [0]
    assert (source[329:345].strip(b"\0 "), fixed[329:345]) == (b"", b"0000000\0" * 2)
    with tarfile.open(fileobj=io.BytesIO(fixed)) as tar:  # the checksum was recomputed
        assert [m.name for m in tar.getmembers()] == ["run/initctl", "etc/file", "dev/null"]
    # What is no tar passes through untouched; the builder reports it (see test_builder_failure_...).
    garbage = b"this is not a tar archive " * 100
    assert b"".join(builder_compatible_tar(io.BytesIO(garbage))) == garbage


# --- builder lookup and version --------------------------------------------------------------------


def test_explicit_builder_path_must_exist(tmp_path: Path) -> None:
    driver = load_driver("nydus", {"builder": str(tmp_path / "missing-nydus-image")})
    with pytest.raises(ConfigError, match="missing-nydus-image"):
        _ = driver.version


def test_missing_tool_error_names_every_place_searched(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ACCEL_TOOLS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(ConfigError) as caught:
        tools.find_tool(
            "no-such-tool-xyz", cache_subdir="thing-1.0", install_hint="run scripts/install-thing"
        )
    message = str(caught.value)
    assert str(tools.PROJECT_TOOLS_BIN / "no-such-tool-xyz") in message
    assert str(tmp_path / "cache" / "thing-1.0" / "bin" / "no-such-tool-xyz") in message
    assert "PATH" in message and "scripts/install-thing" in message


def test_tools_cache_location_is_configurable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    binary = tmp_path / "cache" / "nydus-rs-2.2.0" / "bin" / "nydus-image"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\necho ' Version: \tv9.8.7'\n")
    binary.chmod(0o755)
    monkeypatch.setenv("ACCEL_TOOLS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tools, "PROJECT_TOOLS_BIN", tmp_path / "no-project-tools")
    assert tools.nydus_builder() == binary.resolve()
    assert tools.tool_version(binary) == "9.8.7"
    assert load_driver("nydus", {"builder": str(binary)}).version == "2+nydus-image-9.8.7"


def test_version_parsing() -> None:
    assert tools.parse_version(" Version: \tv2.2.0\nGit Commit: \tabc\n") == "2.2.0"
    assert tools.parse_version("nydus-image 2.3.0-rc.1") == "2.3.0-rc.1"
    # A crates.io build has no git tag: the Rustc line's version must not be taken for the builder's.
    with pytest.raises(ValueError):
        tools.parse_version(" Version: \tunknown\nRustc: \t\trustc 1.95.0 (59807616e 2026-04-14)\n")


def test_cargo_install_metadata_supplies_an_unknown_version(tmp_path: Path) -> None:
    root = tmp_path / "nydus-rs-2.2.0"
    (root / "bin").mkdir(parents=True)
    binary = root / "bin" / "nydus-image"
    binary.write_text("#!/bin/sh\nprintf ' Version: \\tunknown\\nRustc: \\t\\trustc 1.95.0\\n'\n")
    binary.chmod(0o755)
    (root / ".crates.toml").write_text(
        '[v1]\n"nydus-rs 2.2.0 (registry+https://github.com/rust-lang/crates.io-index)" = [\n'
        '    "nydus-image",\n    "nydusd",\n]\n'
    )
    assert tools.cargo_installed_version(binary) == "2.2.0"
    assert tools.tool_version(binary) == "2.2.0"


@nh.needs_builder
def test_driver_version_names_the_real_builder() -> None:
    driver = load_driver("nydus")
    assert driver.version == "2+nydus-image-2.2.0"
    assert driver.cache_key() != load_driver("nydus", {"fs_version": 5}).cache_key()


def test_is_converted_looks_for_nydus_annotations() -> None:
    driver = load_driver("nydus")
    plain = Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=dg.of_bytes(b"a"), size=1)
    blob = Descriptor(
        media_type=mt.NYDUS_BLOB,
        digest=dg.of_bytes(b"b"),
        size=1,
        annotations={mt.NYDUS_BLOB_ANNOTATION: "true"},
    )
    boot = plain.with_(annotations={mt.NYDUS_BOOTSTRAP_ANNOTATION: "true"})
    assert not driver.is_converted([plain])
    assert driver.is_converted([plain, blob])
    assert driver.is_converted([boot])


# --- real conversions ------------------------------------------------------------------------------


def _layer_inputs(image: imagegen.BuiltImage, store: ContentStore) -> list[LayerInput]:
    return [
        LayerInput(descriptor=d, diff_id=i, store=store)
        for d, i in zip(image.layers, image.diff_ids, strict=True)
    ]


def _draft(image: imagegen.BuiltImage, layers: list[ConvertedLayer]) -> PlatformDraft:
    return PlatformDraft(
        source_manifest=image.manifest,
        source_reference="registry.local/library/app:1",
        config=ImageConfig.parse(image.config_raw),
        layers=tuple(layers),
    )


def _source_tar(store: ContentStore, layer: LayerInput) -> bytes:
    with layer.open_tar() as f:
        return f.read()


@pytest.fixture(scope="module")
def standard_layers() -> list[imagegen.TarBuilder]:
    # The big file spans several 1 MiB chunks; small enough to keep the module fast.
    return imagegen.standard_layers(big_file_size=3 * MiB + 12345)


@nh.needs_builder
@pytest.mark.nydus
@pytest.mark.parametrize("fs_version", ["6", "5"])
def test_standard_image_converts_merges_and_unpacks_to_the_same_tree(
    fs_version: str, store: ContentStore, standard_layers: list[imagegen.TarBuilder], tmp_path: Path
) -> None:
    image = imagegen.generate_image(standard_layers, store)
    driver = load_driver("nydus", {"fs_version": fs_version, "prefetch_patterns": "/usr/bin\n/etc"})
    inputs = _layer_inputs(image, store)
    converted = [driver.convert_layer(layer) for layer in inputs]

    for layer, result in zip(inputs, converted, strict=True):
        assert result.source == layer.descriptor
        assert result.descriptor.media_type == mt.NYDUS_BLOB
        assert result.descriptor.annotations == {mt.NYDUS_BLOB_ANNOTATION: "true"}
        assert result.diff_id == result.descriptor.digest
        assert store.size(result.descriptor.digest) == result.descriptor.size
        assert dg.of_bytes(store.path(result.descriptor.digest).read_bytes()) == result.descriptor.digest
        bootstrap = store.read_bytes(facts_of(result).bootstrap)
        assert nh.fs_version_of(bootstrap) == fs_version
        assert (facts_of(result).blob_toc_digest is not None) == (fs_version == "6")

        # Each layer alone, through its own bootstrap and blob: the full-fidelity tree check.
        unpacked = nh.unpack_layer(store, result.descriptor.digest, facts_of(result).bootstrap, tmp_path)
        source = _source_tar(store, layer)
        raw = trees.tar_entries(unpacked)
        # Whiteouts stay plain files in a layer (`--whiteout-spec none`); merge applies them.
        assert {p for p in raw if "/.wh." in f"/{p}"} == {
            p for p in trees.tar_entries(source) if "/.wh." in f"/{p}"
        }
        differences = trees.compare(
            trees.apply_layers([source]),
            trees.apply_layers([unpacked]),
            ignore={"uname", "gname"},  # RAFS keeps numeric owners only
            labels=("source layer", "nydus layer"),
        )
        assert differences == []

    draft = driver.finish(_draft(image, converted), store)
    assert draft.layers[:-1] == tuple(converted)
    boot_layer = draft.layers[-1]
    desc = boot_layer.descriptor
    assert desc.media_type == mt.OCI_LAYER_GZIP
    assert desc.annotations == {
        mt.NYDUS_BOOTSTRAP_ANNOTATION: "true",
        mt.NYDUS_FS_VERSION_ANNOTATION: fs_version,
    }
    layer_bytes = store.path(desc.digest).read_bytes()
    assert (dg.of_bytes(layer_bytes), len(layer_bytes)) == (desc.digest, desc.size)
    uncompressed = gzip.decompress(layer_bytes)
    assert boot_layer.diff_id == dg.of_bytes(uncompressed)
    with tarfile.open(fileobj=io.BytesIO(uncompressed)) as tar:
        members = {m.name.rstrip("/"): m for m in tar.getmembers()}
        assert list(members) == ["image", "image/image.boot"]
        assert members["image"].isdir() and members["image/image.boot"].mode == 0o444
        merged = tar.extractfile(members["image/image.boot"]).read()  # type: ignore[union-attr]
    assert dg.of_bytes(merged) == facts_of(boot_layer).bootstrap
    assert nh.fs_version_of(merged) == fs_version

    source_history = json.loads(image.config_raw)["history"]
    assert draft.history == (
        *source_history,
        {"created_by": "Nydus Converter", "comment": "Nydus Bootstrap Layer"},
    )
    # Only the driver's own annotations: provenance is added once, by image assembly (accel.mutate).
    assert draft.manifest_annotations == {
        mt.NYDUS_FS_VERSION_ANNOTATION: fs_version,
        mt.ACCEL_NYDUS_BUILDER_VERSION: "2.2.0",
    }

    # The merged bootstrap: valid, referencing exactly the layer blobs in order ...
    merged_path = tmp_path / "image.boot"
    merged_path.write_bytes(merged)
    report = tmp_path / "check.json"
    blob_dir = store.path(desc.digest).parent
    nh.run(
        "check",
        "--log-level",
        "warn",
        "--blob-dir",
        str(blob_dir),
        "--output-json",
        str(report),
        str(merged_path),
    )
    assert json.loads(report.read_text())["blobs"] == [dg.hex_of(c.descriptor.digest) for c in converted]
    # ... and holding the layers applied in order, whiteouts and opaque dirs included.
    expected = nh.expected_merged_tree([_source_tar(store, layer) for layer in inputs])
    actual = nh.merged_tree(store, merged_path)
    assert "etc/remove-me" not in actual and "var/cache/old" not in actual
    assert "opt/app/lib" not in actual and actual["opt/thing"]["kind"] == "dir"
    assert actual == expected


@nh.needs_builder
@pytest.mark.nydus
def test_same_input_gives_the_same_bytes(store: ContentStore) -> None:
    # nydus-image 2.2.0 writes the xattrs of one file in hash-map order, which changes from run to run
    # when a file has two or more; this image keeps to one xattr per file.
    first = imagegen.TarBuilder(auto_parents=True)
    first.file("etc/hosts", b"127.0.0.1 localhost\n", xattrs={"user.origin": b"test"})
    first.file_from_generator("usr/lib/big.bin", 2 * MiB + 1, seed=7)
    second = imagegen.TarBuilder(auto_parents=True)
    second.whiteout("etc/hosts")
    second.file("app/main.py", b"print('hi')\n", mode=0o755, uid=1000, gid=1000)
    image = imagegen.generate_image([first, second], store)
    driver = load_driver("nydus")
    runs = []
    for _ in range(2):
        converted = [driver.convert_layer(layer) for layer in _layer_inputs(image, store)]
        runs.append(driver.finish(_draft(image, converted), store))
    assert runs[0] == runs[1]


@nh.needs_builder
@pytest.mark.nydus
def test_options_reach_the_builder(store: ContentStore, tmp_path: Path) -> None:
    layer = imagegen.TarBuilder(auto_parents=True)
    layer.file("data/text.txt", b"compressible text " * 20000)
    layer.file_from_generator("data/random.bin", 300_000, seed=3)
    image = imagegen.generate_image([layer], store)
    (source,) = _layer_inputs(image, store)

    small = load_driver("nydus", {"chunk_size": "0x10000", "compressor": "none"}).convert_layer(source)
    default = load_driver("nydus").convert_layer(source)
    assert small.descriptor.digest != default.descriptor.digest
    # A layer bootstrap takes its blob id from its file name, as merge does.
    bootstrap = tmp_path / dg.hex_of(small.descriptor.digest)
    bootstrap.write_bytes(store.read_bytes(facts_of(small).bootstrap))
    blocks = nh.inspect_dir(bootstrap, "data", ["random.bin", "text.txt"])
    # 64 KiB chunks, stored uncompressed.
    sizes = [(int(c), int(d)) for c, d, _, _ in nh.CHUNK.findall(blocks[0])]
    assert len(sizes) == 5 and all(c == d for c, d in sizes) and sizes[0][1] == 0x10000
    assert nh.read_file_from_blobs(store, blocks[1]) == b"compressible text " * 20000

    aligned = load_driver("nydus", {"fs_version": 5, "fs_align_chunk": True}).convert_layer(source)
    assert nh.fs_version_of(store.read_bytes(facts_of(aligned).bootstrap)) == "5"


@nh.needs_builder
@pytest.mark.nydus
def test_docker_source_keeps_docker_media_type_when_docker2oci_is_off(store: ContentStore) -> None:
    layer = imagegen.TarBuilder(auto_parents=True)
    layer.file("hello.txt", b"hello\n")
    image = imagegen.generate_image([layer], store, media="docker")
    for docker2oci, expected in ((False, mt.DOCKER_LAYER_GZIP), (True, mt.OCI_LAYER_GZIP)):
        driver = load_driver("nydus", {"docker2oci": docker2oci})
        converted = [driver.convert_layer(x) for x in _layer_inputs(image, store)]
        draft = driver.finish(_draft(image, converted), store)
        assert draft.layers[-1].descriptor.media_type == expected


@nh.needs_builder
@pytest.mark.nydus
def test_oci_ref_layers_index_the_gzip_source(store: ContentStore, tmp_path: Path) -> None:
    base = imagegen.TarBuilder(auto_parents=True)
    base.file("etc/hosts", b"127.0.0.1 localhost\n", xattrs={"user.origin": b"test"})
    base.file("etc/remove-me", b"gone in layer 1\n")
    base.file_from_generator("usr/lib/big.bin", 2 * MiB + 5, seed=2)
    base.symlink("usr/lib/big-link", "big.bin")
    base.hardlink("usr/lib/big-hard", "usr/lib/big.bin")
    base.char_device("dev/null", 1, 3)
    base.file("opt/app/old.txt", b"hidden by the opaque dir\n")
    update = imagegen.TarBuilder(auto_parents=True)
    update.whiteout("etc/remove-me")
    update.dir("opt/app")
    update.opaque("opt/app")
    update.file("opt/app/new.txt", b"new\n")
    image = imagegen.generate_image([base, update], store)
    driver = load_driver("nydus", {"oci_ref": True})
    inputs = _layer_inputs(image, store)
    converted = [driver.convert_layer(layer) for layer in inputs]
    for layer, result in zip(inputs, converted, strict=True):
        assert result.descriptor.annotations == {
            mt.NYDUS_BLOB_ANNOTATION: "true",
            mt.NYDUS_REF_ANNOTATION: layer.descriptor.digest,
        }
        assert result.diff_id == result.descriptor.digest
    # Only metadata: the 2 MiB of data stay in the original gzip blob.
    assert converted[0].descriptor.size < inputs[0].descriptor.size // 10

    draft = driver.finish(_draft(image, converted), store)
    boot = draft.layers[-1]
    assert boot.descriptor.annotations == {
        mt.NYDUS_BOOTSTRAP_ANNOTATION: "true",
        mt.NYDUS_FS_VERSION_ANNOTATION: "6",
    }
    merged = tmp_path / "image.boot"
    merged.write_bytes(store.read_bytes(facts_of(boot).bootstrap))
    report = tmp_path / "check.json"
    blob_dir = store.path(boot.descriptor.digest).parent
    nh.run(
        "check", "--log-level", "warn", "--blob-dir", str(blob_dir), "--output-json", str(report), str(merged)
    )
    # The data blobs of a zran image are the source gzip layers themselves.
    assert json.loads(report.read_text())["blobs"] == [dg.hex_of(d.digest) for d in image.layers]
    inodes = nh.checked_inodes(merged, blob_dir)
    expected = trees.apply_layers([_source_tar(store, layer) for layer in inputs])
    assert set(inodes) == set(expected)
    assert "etc/remove-me" not in inodes and "opt/app/old.txt" not in inodes


@nh.needs_builder
@pytest.mark.nydus
def test_localfs_backend_holds_the_blobs_and_the_image_only_the_bootstrap(
    store: ContentStore, tmp_path: Path
) -> None:
    base = imagegen.TarBuilder(auto_parents=True)
    base.file("etc/a.txt", b"first layer\n")
    base.file_from_generator("usr/lib/big.bin", MiB + 7, seed=3)
    update = imagegen.TarBuilder(auto_parents=True)
    update.file("etc/b.txt", b"second layer\n")
    image = imagegen.generate_image([base, update], store)
    blobs_dir = tmp_path / "backend"
    config = {"backend_type": "localfs", "backend_config": json.dumps({"dir": str(blobs_dir)})}
    driver = load_driver("nydus", config)
    assert driver.cache_key() == load_driver("nydus").cache_key()  # the layer bytes are the same
    inputs = _layer_inputs(image, store)
    converted = [driver.convert_layer(layer) for layer in inputs]

    draft = driver.finish(_draft(image, converted), store)
    # As nydus-snapshotter with a backend: the manifest lists the bootstrap layer alone.
    [boot] = draft.layers
    assert boot.descriptor.annotation(mt.NYDUS_BOOTSTRAP_ANNOTATION) == "true"
    assert draft.history == (BOOTSTRAP_HISTORY,)
    assert sorted(p.name for p in blobs_dir.iterdir()) == sorted(
        dg.hex_of(c.descriptor.digest) for c in converted
    )
    for layer in converted:
        assert (blobs_dir / dg.hex_of(layer.descriptor.digest)).read_bytes() == store.read_bytes(
            layer.descriptor.digest
        )
    merged = tmp_path / "image.boot"
    merged.write_bytes(store.read_bytes(facts_of(boot).bootstrap))
    expected = trees.apply_layers([_source_tar(store, layer) for layer in inputs])
    assert set(nh.checked_inodes(merged, blobs_dir)) == set(expected)

    # A blob already in the backend is left alone, unless backend_force_push.
    first = blobs_dir / dg.hex_of(converted[0].descriptor.digest)
    first.write_bytes(b"kept")
    driver.finish(_draft(image, converted), store)
    assert first.read_bytes() == b"kept"
    load_driver("nydus", config | {"backend_force_push": "true"}).finish(_draft(image, converted), store)
    assert first.read_bytes() == store.read_bytes(converted[0].descriptor.digest)


@nh.needs_builder
@pytest.mark.nydus
def test_oci_ref_explains_blank_fifo_device_numbers(store: ContentStore) -> None:
    layer = imagegen.TarBuilder(auto_parents=True)
    layer.fifo("run/initctl")
    image = imagegen.generate_image([layer], store)
    with pytest.raises(DriverError, match="convert without oci_ref"):
        load_driver("nydus", {"oci_ref": True}).convert_layer(_layer_inputs(image, store)[0])
    # Without oci_ref the driver fixes the header on its way into the builder.
    converted = load_driver("nydus").convert_layer(_layer_inputs(image, store)[0])
    assert converted.descriptor.media_type == mt.NYDUS_BLOB


@nh.needs_builder
@pytest.mark.nydus
def test_oci_ref_refuses_non_gzip_layers(store: ContentStore) -> None:
    layer = imagegen.TarBuilder(auto_parents=True)
    layer.file("a", b"a")
    image = imagegen.generate_image([layer], store, compression="zstd")
    with pytest.raises(DriverError, match="oci_ref needs gzip layers"):
        load_driver("nydus", {"oci_ref": True}).convert_layer(_layer_inputs(image, store)[0])


def _blob_count(store: ContentStore) -> int:
    return sum(1 for _ in store.path(dg.of_bytes(b"")).parent.iterdir())


@nh.needs_builder
@pytest.mark.nydus
def test_wrong_diff_id_commits_nothing(store: ContentStore) -> None:
    layer = imagegen.TarBuilder(auto_parents=True)
    layer.file("a.txt", b"a\n")
    image = imagegen.generate_image([layer], store)
    before = _blob_count(store)
    bad = LayerInput(descriptor=image.layers[0], diff_id=dg.of_bytes(b"not this layer"), store=store)
    with pytest.raises(DigestMismatch):
        load_driver("nydus").convert_layer(bad)
    assert _blob_count(store) == before
    assert list((store.root / "ingest").iterdir()) == []


def test_a_layer_that_is_no_tar_is_refused_before_the_builder_runs(store: ContentStore) -> None:
    garbage = b"this is not a tar archive " * 100
    digest = store.put_bytes(garbage)
    layer = LayerInput(
        descriptor=Descriptor(media_type=mt.OCI_LAYER_TAR, digest=digest, size=len(garbage)),
        diff_id=digest,
        store=store,
    )
    with pytest.raises(InvalidImage, match=rf"layer {digest}: tar header has an unreadable checksum"):
        load_driver("nydus", {"builder": "/nonexistent/nydus-image"}).convert_layer(layer)
    assert list((store.root / "ingest").iterdir()) == []


def test_builder_failure_raises_with_its_output(store: ContentStore, tmp_path: Path) -> None:
    builder = tmp_path / "failing-nydus-image"
    builder.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then echo "Version: 2.2.0"; exit 0; fi\n'
        "echo 'Error: build failed'; echo 'Caused by:'; echo '    0: numeric field was not a number'\n"
        "exit 1\n"
    )
    builder.chmod(0o755)
    layer = imagegen.TarBuilder(auto_parents=True)
    layer.file("a.txt", b"a\n")
    image = imagegen.generate_image([layer], store)
    with pytest.raises(
        DriverError,
        match=r"nydus-image create .* failed with exit code 1:\n.*build failed\n.*\n.*numeric field",
    ):
        load_driver("nydus", {"builder": str(builder)}).convert_layer(_layer_inputs(image, store)[0])
    assert list((store.root / "ingest").iterdir()) == []


@nh.needs_builder
@pytest.mark.nydus
def test_extract_trailer_entry_reports_missing_entries(store: ContentStore) -> None:
    layer = imagegen.TarBuilder(auto_parents=True)
    layer.file("a.txt", b"a\n")
    image = imagegen.generate_image([layer], store)
    converted = load_driver("nydus").convert_layer(_layer_inputs(image, store)[0])
    with pytest.raises(DriverError, match="without no-such-entry"):
        extract_trailer_entry(store, converted.descriptor.digest, "no-such-entry")
    not_nydus = store.put_bytes(b"\0" * 2048)
    with pytest.raises(DriverError, match=r"no image\.boot"):
        extract_trailer_entry(store, not_nydus, "image.boot")


def test_finish_refuses_a_plan_without_nydus_layers(store: ContentStore) -> None:
    driver = NydusDriver(NydusOptions())
    config = ImageConfig.parse(b'{"rootfs":{"type":"layers","diff_ids":[]}}')
    draft = PlatformDraft(
        source_manifest=Descriptor(media_type=mt.OCI_MANIFEST, digest=dg.of_bytes(b"m"), size=1),
        source_reference="r/x:1",
        config=config,
        layers=(),
    )
    with pytest.raises(DriverError, match="no nydus blob layers"):
        driver.finish(draft, store)


def _source_image(image: imagegen.BuiltImage) -> SourceImage:
    layers = tuple(
        SourceLayer(descriptor=d, diff_id=i) for d, i in zip(image.layers, image.diff_ids, strict=True)
    )
    manifest = SourceManifest(
        descriptor=image.manifest.with_(platform=image.platform), config=image.config, layers=layers
    )
    return SourceImage(reference="registry.local/library/app:1", root=image.manifest, manifests=(manifest,))


@nh.needs_builder
@pytest.mark.nydus
@pytest.mark.parametrize("media", ["oci", "docker"])
def test_merge_manifest_indexes_the_oci_variant_and_the_nydus_manifest(
    store: ContentStore, media: str
) -> None:
    layer = imagegen.TarBuilder(auto_parents=True)
    layer.file("etc/motd", b"hello\n")
    image = imagegen.generate_image([layer], store, media=media)  # type: ignore[arg-type]
    source = _source_image(image)
    driver = load_driver("nydus", {"merge_manifest": True})
    converted = {x.descriptor.digest: driver.convert_layer(x) for x in _layer_inputs(image, store)}
    built = build_image(source, converted, driver, store)

    index = Index.parse(store.read_bytes(built.root.digest))
    assert built.root.media_type == index.media_type == mt.OCI_INDEX
    oci_entry, nydus_entry = index.manifests
    assert [m.descriptor for m in built.manifests] == [oci_entry, nydus_entry]
    assert str(oci_entry.platform) == str(nydus_entry.platform) == "linux/amd64"
    assert (oci_entry.artifact_type, nydus_entry.artifact_type) == (None, mt.NYDUS_ARTIFACT_TYPE)
    # The index is a referrer of the source and says what made it, like any converted root.
    assert index.doc["subject"] == {
        "mediaType": image.manifest_media_type,
        "digest": image.manifest.digest,
        "size": image.manifest.size,
    }
    assert index.annotations[mt.ACCEL_DRIVER] == "nydus"
    assert index.annotations[mt.ACCEL_SOURCE_DIGEST] == image.manifest.digest

    # The OCI variant: the source manifest with the 32-byte empty gzip layer first, in the source's flavour.
    oci_manifest = Manifest.parse(store.read_bytes(oci_entry.digest))
    assert oci_manifest.media_type == image.manifest_media_type
    empty, *rest = oci_manifest.layers
    assert rest == image.layers
    gzip_type = mt.DOCKER_LAYER_GZIP if media == "docker" else mt.OCI_LAYER_GZIP
    assert (empty.media_type, empty.size, empty.digest) == (
        gzip_type,
        32,
        "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4",
    )
    assert gzip.decompress(store.read_bytes(empty.digest)) == bytes(1024)  # an empty tar archive
    config = ImageConfig.parse(store.read_bytes(oci_manifest.config.digest))
    assert oci_manifest.config.media_type == image.config.media_type
    assert config.diff_ids == [dg.of_bytes(bytes(1024)), *image.diff_ids]
    source_config = json.loads(image.config_raw)
    assert config.doc["history"] == [
        {"created_by": "Nydus Converter", "comment": "Empty layer of the merged OCI manifest"},
        *source_config["history"],
    ]
    assert {k: v for k, v in config.doc.items() if k not in ("rootfs", "history")} == {
        k: v for k, v in source_config.items() if k not in ("rootfs", "history")
    }
    assert built.manifests[0].layers == (empty, *image.layers)  # so the push sends them all

    # The Nydus manifest says what it is too.
    nydus_manifest = Manifest.parse(store.read_bytes(nydus_entry.digest))
    assert nydus_manifest.doc["artifactType"] == mt.NYDUS_ARTIFACT_TYPE
    assert nydus_manifest.layers[-1].annotation(mt.NYDUS_BOOTSTRAP_ANNOTATION) == "true"
    assert nydus_manifest.subject is not None and nydus_manifest.subject.digest == image.manifest.digest

    # Without the option the root is the Nydus manifest itself, with no artifactType.
    plain_driver = load_driver("nydus")
    plain = build_image(source, converted, plain_driver, store)
    assert plain.root.media_type == mt.OCI_MANIFEST and len(plain.manifests) == 1
    assert "artifactType" not in json.loads(store.read_bytes(plain.root.digest))


def test_with_referrer_decides_subject() -> None:
    assert NydusOptions().with_referrer is True and load_driver("nydus").writes_subject() is True
    # acceld's `with_referrer: false` (its default is off; accel's is on): no `subject` on the manifests.
    assert load_driver("nydus", {"with_referrer": "false"}).writes_subject() is False


def test_acceld_aliases_and_no_op_options() -> None:
    aliased = NydusOptions.model_validate(
        {"fs_chunk_size": "0x4000", "rafs_version": "5", "rafs_compressor": "lz4_block"}
    )
    assert (aliased.chunk_size, aliased.fs_version, aliased.compressor) == ("0x4000", "5", "lz4_block")
    # The current names win over the old ones, as in acceld.
    assert NydusOptions.model_validate({"fs_version": 6, "rafs_version": "5"}).fs_version == "6"
    # "" is acceld's "builder default".
    assert NydusOptions.model_validate({"compressor": "", "fs_chunk_size": ""}) == NydusOptions()
    # nydus-image aligns chunks for RAFS v5 only: with v6 the flag changes no byte, so it is dropped.
    assert NydusOptions.model_validate({"fs_align_chunk": True}) == NydusOptions()
    assert NydusOptions.model_validate({"fs_align_chunk": True, "fs_version": 5}).fs_align_chunk is True
    # A backend type without a config is no backend in acceld either.
    assert NydusOptions.model_validate({"backend_type": "oss", "backend_config": ""}) == NydusOptions()


@nh.needs_builder
def test_cache_key_ignores_the_builder_path_and_manifest_level_options(tmp_path) -> None:
    other = tmp_path / "elsewhere" / "nydus-image"
    other.parent.mkdir()
    other.symlink_to(tools.nydus_builder())
    plain = load_driver("nydus")
    placed = load_driver(
        "nydus",
        {"builder": str(other), "docker2oci": False, "with_referrer": False, "merge_manifest": True},
    )
    assert placed.cache_key() == plain.cache_key()
    assert placed.accepts_original_records() and plain.accepts_original_records()  # type: ignore[attr-defined]
    # So records match whichever path wrote or reads them: accel's, and the Go service's (no options).
    store = ContentStore(tmp_path / "store")
    blob = Descriptor(media_type=mt.NYDUS_BLOB, digest=store.put_bytes(b"blob"), size=4)
    source = Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=dg.of_bytes(b"source"), size=6)
    ours = cache.cache_entry(
        plain, ConvertedLayer(source=source, descriptor=blob, diff_id=blob.digest), store
    )
    go_record = cache.CacheEntry(
        layer=blob.with_(annotations={mt.ORIGINAL_CACHE_SOURCE_DIGEST: source.digest}), diff_id=blob.digest
    )
    assert ours.matches(placed) and go_record.matches(placed)
    # What changes the bytes still counts.
    assert load_driver("nydus", {"compressor": "lz4_block"}).cache_key() != plain.cache_key()
    assert not load_driver("nydus", {"chunk_size": "0x4000"}).accepts_original_records()  # type: ignore[attr-defined]


def test_localfs_backend_names_a_blob_it_cannot_copy(tmp_path: Path) -> None:
    from accel.drivers.nydus import backend

    store = ContentStore(tmp_path / "store")
    here = Descriptor(media_type=mt.NYDUS_BLOB, digest=store.put_bytes(b"here"), size=4)
    elsewhere = Descriptor(media_type=mt.NYDUS_BLOB, digest=dg.of_bytes(b"cache hit"), size=9)
    directory = tmp_path / "blobs"
    with pytest.raises(DriverError, match=f"blob {elsewhere.digest} is neither in the content store"):
        backend.push_blobs(directory, [here, elsewhere], store, force=False)
    # Already in the backend: nothing to copy, even when forced.
    (directory / dg.hex_of(elsewhere.digest)).write_bytes(b"cache hit")
    assert backend.push_blobs(directory, [here, elsewhere], store, force=True) == [
        directory / dg.hex_of(here.digest)
    ]
