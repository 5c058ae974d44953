"""OCI layouts and archives as registries: round trips through accel's own resolve / publish paths."""

from __future__ import annotations

import gzip
import json
import tarfile
from pathlib import Path

import pytest

from accel import constants as mt
from accel import publish
from accel.errors import DigestMismatch, InvalidImage, InvalidReference, UnsupportedMediaType
from accel.image import resolve_source
from accel.reference import Reference
from accel.registry.errors import NotFound, RegistryError
from accel.registry.memory import MemoryRegistry
from accel.store import ContentStore
from accel.transports import (
    DockerArchive,
    DockerArchiveTarget,
    OCIArchive,
    OCILayout,
    open_location,
    parse_location,
)
from accel.transports.layout import REF_NAME_ANNOTATION
from tests.harness import imagegen
from tests.harness.archives import docker_save
from tests.harness.pushing import as_built


def small_index(store: ContentStore) -> imagegen.BuiltIndex:
    return imagegen.standard_index(store, big_file_size=64 * 1024)


def write_layout(root: Path, store: ContentStore, image, tag: str | None = "v1") -> None:
    location = parse_location(f"oci:{root}:{tag}" if tag else f"oci:{root}")
    with open_location(location, writable=True) as layout:
        publish.push_image(layout, location.reference, as_built(image), store)


def test_parse_locations() -> None:
    oci = parse_location("oci:out/app:v1")
    assert (oci.transport, oci.path, oci.reference.tag) == ("oci", Path("out/app"), "v1")
    assert parse_location("oci:out/app").reference.tag is None
    digest = "sha256:" + "a" * 64
    assert parse_location(f"oci:dir@{digest}").reference.digest == digest
    archive = parse_location("docker-archive:img.tar:busybox:latest")
    assert (archive.transport, archive.path, archive.name) == (
        "docker-archive",
        Path("img.tar"),
        "busybox:latest",
    )
    assert parse_location("docker-archive:img.tar:@1").reference.tag == "@1"
    assert parse_location("oci-archive:x.tar").transport == "oci-archive"
    registry = parse_location("docker://127.0.0.1:5000/team/app:v2")
    assert registry.is_registry and str(registry.reference) == "127.0.0.1:5000/team/app:v2"
    assert parse_location("nginx").reference == Reference.parse("docker.io/library/nginx:latest")
    assert str(parse_location("oci:out:v1")) == "oci:out:v1"
    with pytest.raises(InvalidReference):
        parse_location("oci:")
    with pytest.raises(InvalidReference):
        parse_location("docker-archive:x.tar:@one")


def test_layout_round_trip_is_byte_exact(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")
    image = small_index(store)
    write_layout(tmp_path / "layout", store, image)

    root = tmp_path / "layout"
    assert json.loads((root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((root / "index.json").read_text())
    assert index["mediaType"] == mt.OCI_INDEX
    [entry] = index["manifests"]
    assert entry["digest"] == image.digest and entry["annotations"] == {REF_NAME_ANNOTATION: "v1"}
    for digest in image.blobs:
        assert (root / "blobs" / "sha256" / digest.split(":")[1]).is_file()
    assert not list(root.rglob(".tmp-*"))

    fresh = ContentStore(tmp_path / "fresh")
    layout = OCILayout(root)
    source = resolve_source(layout, parse_location(f"oci:{root}:v1").reference, fresh)
    assert source.root.digest == image.digest
    assert [m.descriptor.digest for m in source.manifests] == [i.digest for i in image.images]
    for manifest in source.manifests:
        for layer in manifest.layers:
            path = layout.fetch_blob(Reference("oci", "x"), layer.descriptor, fresh)
            assert path.read_bytes() == store.path(layer.descriptor.digest).read_bytes()
    # Untagged: the only image; by digest: any manifest in the layout.
    assert layout.resolve(Reference("oci", "x")).digest == image.digest
    child = image.images[1].digest
    assert layout.fetch_manifest(Reference("oci", "x", digest=child))[0].digest == child
    assert layout.list_tags(Reference("oci", "x")) == ["v1"]
    with pytest.raises(NotFound):
        layout.resolve(Reference("oci", "x", tag="v2"))


def test_retagging_moves_the_tag_and_keeps_others(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")
    first = imagegen.standard_image(store, big_file_size=1024)
    second = imagegen.standard_image(store, arch="arm64", big_file_size=1024)
    write_layout(tmp_path / "l", store, first, "a")
    write_layout(tmp_path / "l", store, first, "b")
    write_layout(tmp_path / "l", store, second, "a")
    layout = OCILayout(tmp_path / "l")
    assert layout.list_tags(Reference("oci", "x")) == ["a", "b"]
    assert layout.resolve(Reference("oci", "x", tag="a")).digest == second.digest
    assert layout.resolve(Reference("oci", "x", tag="b")).digest == first.digest
    with pytest.raises(NotFound, match="no tag given and it holds 2 images; name one: oci:"):
        layout.resolve(Reference("oci", "x"))


def test_layout_refuses_manifest_with_missing_blobs_and_corrupt_blobs(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")
    image = imagegen.standard_image(store, big_file_size=1024)
    layout = OCILayout(tmp_path / "l")
    with pytest.raises(RegistryError, match="blobs missing"):
        layout.push_manifest(Reference("oci", "x", tag="v1"), image.manifest_raw, image.manifest_media_type)
    assert (
        not (tmp_path / "l" / "index.json").exists()
        or json.loads((tmp_path / "l" / "index.json").read_text())["manifests"] == []
    )

    write_layout(tmp_path / "l", store, image)
    layer = image.layers[0]
    blob = tmp_path / "l" / "blobs" / "sha256" / layer.digest.split(":")[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(DigestMismatch):
        layout.fetch_blob(Reference("oci", "x"), layer, ContentStore(tmp_path / "fresh"))


def test_oci_archive_write_is_atomic_and_reads_back(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")
    image = small_index(store)
    path = tmp_path / "image.tar"
    location = parse_location(f"oci-archive:{path}:v1")
    with pytest.raises(RuntimeError), open_location(location, writable=True) as archive:
        publish.push_image(archive, location.reference, as_built(image), store)
        raise RuntimeError("conversion failed half way")
    assert not path.exists() and [p.name for p in tmp_path.iterdir()] == ["store"]

    with open_location(location, writable=True) as archive:
        publish.push_image(archive, location.reference, as_built(image), store)
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["image.tar", "store"]
    with tarfile.open(path) as tar:
        names = tar.getnames()
    assert names[0] == "oci-layout" and names[-1] == "index.json"

    reader = open_location(location)
    assert isinstance(reader, OCIArchive)
    fresh = ContentStore(tmp_path / "fresh")
    source = resolve_source(reader, location.reference, fresh)
    assert source.root.digest == image.digest
    for manifest in source.manifests:
        for layer in manifest.layers:
            reader.fetch_blob(location.reference, layer.descriptor, fresh)
            assert (
                fresh.path(layer.descriptor.digest).read_bytes()
                == store.path(layer.descriptor.digest).read_bytes()
            )
    with pytest.raises(RegistryError, match="opened for reading"):
        reader.push_manifest(location.reference, image.raw, image.media_type)


def test_docker_archive_reads_as_docker_schema2(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")
    image = imagegen.standard_image(store, media="docker", big_file_size=64 * 1024)
    path = tmp_path / "saved.tar"
    docker_save(path, store, image, ["team/app:v1"])

    for name in ("", ":team/app:v1", ":docker.io/team/app:v1", ":@0"):
        location = parse_location(f"docker-archive:{path}{name}")
        archive = open_location(location)
        assert isinstance(archive, DockerArchive)
        fresh = ContentStore(tmp_path / f"fresh{name.replace('/', '_')}")
        source = resolve_source(archive, location.reference, fresh)
        [manifest] = source.manifests
        assert source.root.media_type == mt.DOCKER_MANIFEST
        assert manifest.config.digest == image.config.digest
        # plain tar layers: each layer's digest is its DiffID
        assert [layer.descriptor.digest for layer in manifest.layers] == image.diff_ids
        for layer in manifest.layers:
            archive.fetch_blob(location.reference, layer.descriptor, fresh)
            assert fresh.exists(layer.diff_id)
    with pytest.raises(NotFound):
        open_location(parse_location(f"docker-archive:{path}:other:v1")).resolve(
            parse_location(f"docker-archive:{path}:other:v1").reference
        )


def test_compressed_archive_is_refused_with_its_cause(tmp_path: Path) -> None:
    path = tmp_path / "x.tar.gz"
    path.write_bytes(gzip.compress(b"not a tar"))
    with pytest.raises(InvalidImage, match="compressed archive"):
        OCIArchive(path).resolve(Reference("oci-archive", "x"))


def test_layout_to_registry_and_back(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")
    image = small_index(store)
    write_layout(tmp_path / "layout", store, image)
    registry = MemoryRegistry()
    target = Reference.parse("registry.invalid/team/app:v1")

    staged = ContentStore(tmp_path / "staged")
    location = parse_location(f"oci:{tmp_path / 'layout'}:v1")
    layout = open_location(location)
    source = resolve_source(layout, location.reference, staged)
    for manifest in source.manifests:
        for layer in manifest.layers:
            layout.fetch_blob(location.reference, layer.descriptor, staged)
    publish.push_image(registry, target, as_built(image), staged)
    assert registry.tags(target) == {"v1": image.digest}

    back = ContentStore(tmp_path / "back")
    resolved = resolve_source(registry, target, back)
    assert resolved.root.digest == image.digest


def test_the_router_sends_each_reference_to_its_transport(tmp_path: Path) -> None:
    from accel.transports import Transports, describe

    store = ContentStore(tmp_path / "store")
    image = imagegen.standard_image(store, big_file_size=1024)
    registry = MemoryRegistry()
    in_registry = Reference.parse("registry.invalid/team/app:v1")
    layout = parse_location(f"oci:{tmp_path / 'layout'}:v1").reference
    archive = parse_location(f"oci-archive:{tmp_path / 'out.tar'}:v1").reference

    routes = Transports(registry, writing=[archive])
    for target in (in_registry, layout, archive):
        publish.push_image(routes, target, as_built(image), store)
    assert not (tmp_path / "out.tar").exists()  # staged until committed
    assert routes.resolve(archive).digest == image.digest  # reads see what was staged
    routes.commit(archive)

    reader = Transports(registry)
    assert {reader.resolve(ref).digest for ref in (in_registry, layout, archive)} == {image.digest}
    assert registry.tags(in_registry) == {"v1": image.digest}
    assert describe(layout) == f"oci:{(tmp_path / 'layout').resolve()}:v1"
    with pytest.raises(ValueError, match="declared target"):
        reader.push_manifest(archive, image.manifest_raw, image.manifest_media_type)
    with pytest.raises(ValueError, match="no registry client"):
        Transports().resolve(in_registry)


def test_docker_archive_target_is_docker_save_output(tmp_path: Path) -> None:
    from accel.transports import Transports

    store = ContentStore(tmp_path / "store")
    image = imagegen.standard_image(store, big_file_size=64 * 1024)
    target = parse_location(f"docker-archive:{tmp_path / 'saved.tar'}:team/app:v1").reference
    routes = Transports(writing=[target])
    publish.push_image(routes, target, as_built(image), store)
    routes.commit(target)

    with tarfile.open(tmp_path / "saved.tar") as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        [saved] = json.loads(member.read())
    assert saved["RepoTags"] == ["team/app:v1"]
    assert saved["Config"] == f"blobs/sha256/{image.config.digest.split(':')[1]}"
    assert saved["Layers"] == [f"blobs/sha256/{layer.digest.split(':')[1]}" for layer in image.layers]
    # Read back as `docker save` output: same config and layer blobs, under a synthesised Docker manifest.
    archive = DockerArchive(tmp_path / "saved.tar")
    source = resolve_source(
        archive, parse_location(f"docker-archive:{tmp_path / 'saved.tar'}").reference, store
    )
    [manifest] = source.manifests
    assert manifest.config.digest == image.config.digest
    assert [layer.descriptor.digest for layer in manifest.layers] == [layer.digest for layer in image.layers]
    # ... and as the OCI layout docker 25+ also writes beside manifest.json.
    as_layout = OCIArchive(tmp_path / "saved.tar")
    assert as_layout.resolve(Reference("oci-archive", "x", tag="team/app:v1")).digest == image.digest

    index = imagegen.standard_index(store, big_file_size=1024)
    multi = parse_location(f"docker-archive:{tmp_path / 'multi.tar'}:team/app:v2").reference
    routes = Transports(writing=[multi])
    publish.push_image(routes, multi, as_built(index), store)
    with pytest.raises(RegistryError, match="single-platform"):
        routes.commit(multi)
    assert not (tmp_path / "multi.tar").exists()


def test_an_unnamed_image_of_several_lists_those_it_holds(tmp_path: Path) -> None:
    """`oci:DIR` / `docker-archive:FILE` without a name: its only image, else one line naming each."""
    store = ContentStore(tmp_path / "store")
    first = imagegen.standard_image(store, big_file_size=1024)
    second = imagegen.standard_image(store, arch="arm64", big_file_size=1024)
    write_layout(tmp_path / "l", store, first, "a")
    layout = OCILayout(tmp_path / "l")
    assert layout.resolve(Reference("oci", "x")).digest == first.digest  # the only one
    write_layout(tmp_path / "l", store, second, None)
    with pytest.raises(NotFound) as unnamed:
        layout.resolve(Reference("oci", "x"))
    assert f"oci:{tmp_path / 'l'}:a, oci:{tmp_path / 'l'}@{second.digest}" in str(unnamed.value)
    with pytest.raises(NotFound, match=f"no tag 'b'; it holds oci:{tmp_path / 'l'}:a"):
        layout.resolve(Reference("oci", "x", tag="b"))

    docker_save(tmp_path / "two.tar", store, first, ["app:v1"])
    archive = tmp_path / "two.tar"
    saved = DockerArchive(archive)
    assert saved.resolve(Reference("docker-archive", str(archive))).media_type == mt.DOCKER_MANIFEST
    with pytest.raises(NotFound, match=f"no image 'app:v2'; it holds docker-archive:{archive}:app:v1"):
        saved.resolve(Reference("docker-archive", str(archive), tag="app:v2"))


def test_a_docker_archive_refuses_nydus_layers_by_name(tmp_path: Path) -> None:
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": "sha256:" + "0" * 64, "size": 2},
        "layers": [  # as the Nydus driver writes them: a blob layer, then the bootstrap
            {
                "mediaType": mt.NYDUS_BLOB,
                "digest": "sha256:" + "1" * 64,
                "size": 10,
                "annotations": {mt.NYDUS_BLOB_ANNOTATION: "true"},
            },
            {
                "mediaType": mt.OCI_LAYER_GZIP,
                "digest": "sha256:" + "2" * 64,
                "size": 10,
                "annotations": {mt.NYDUS_BOOTSTRAP_ANNOTATION: "true"},
            },
        ],
    }
    target = DockerArchiveTarget(tmp_path / "out.tar")
    with pytest.raises(UnsupportedMediaType, match="cannot hold nydus layers"):
        target.push_manifest(Reference("docker-archive", "x"), json.dumps(manifest).encode(), mt.OCI_MANIFEST)
    target.discard()
    assert not (tmp_path / "out.tar").exists()
