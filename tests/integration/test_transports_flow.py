"""The convert-image flow and `accelctl check` over every transport: layout → layout for every driver,
layout → registry, registry → layout, archive → layout, with the reference readers' verdict, `accel.verify`'s
proof (trees included) and the `converter.verify` switch refusing to push what it cannot prove."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from accel import constants as mt
from accel import publish
from accel.oci import Descriptor, Manifest
from accel.reference import Reference
from accel.registry import HostConfig, RegistryClient
from accel.store import ContentStore
from accel.transports import OCILayout, Transports, open_location, parse_location
from accel.verify import VerifyError, verify_image
from service import accelctl
from tests.harness import configs, conformance, imagegen
from tests.harness import nydus as nh
from tests.harness.archives import docker_save
from tests.harness.pushing import as_built
from tests.harness.tools import require_tool, run_tool

pytestmark = [pytest.mark.registry, pytest.mark.prefect]

DRIVERS = [
    pytest.param("estargz", id="estargz"),
    pytest.param("zstdchunked", id="zstdchunked"),
    pytest.param("nydus", id="nydus", marks=[nh.needs_builder, pytest.mark.nydus]),
]


def write_config(tmp_path: Path, registry, *, verify: bool = True) -> Path:
    path = configs.write_config(
        tmp_path / "config.yaml",
        {registry.host: {}},
        [
            configs.driver("estargz", chunk_size=1 << 18),
            configs.driver("zstdchunked"),
            configs.driver("nydus"),
        ],
    )
    settings = yaml.safe_load(path.read_text())
    settings["converter"]["verify"] = verify
    path.write_text(yaml.safe_dump(settings))
    return path


def source_layout(tmp_path: Path) -> tuple[Path, imagegen.BuiltIndex]:
    store = ContentStore(tmp_path / "source-store")
    image = imagegen.standard_index(store, big_file_size=700 * 1024 + 3)
    location = parse_location(f"oci:{tmp_path / 'source'}:v1")
    with open_location(location, writable=True) as layout:
        publish.push_image(layout, location.reference, as_built(image), store)
    return tmp_path / "source", image


def proven(source: str, target: str, client: RegistryClient | None = None) -> None:
    routes = Transports(client)
    verdict = verify_image(routes, parse_location(source).reference, routes, parse_location(target).reference)
    assert verdict.ok, verdict.table()


def reference_readers_accept(target: str, tmp_path: Path) -> None:
    """The formats' own readers (stargz-snapshotter, containers/storage) on every layer of the target."""
    routes = Transports()
    ref = parse_location(target).reference
    _, raw = routes.fetch_manifest(ref)
    store = ContentStore(tmp_path / "readers")
    for child in json.loads(raw)["manifests"]:
        _, child_raw = routes.fetch_manifest(ref.with_digest(child["digest"]))
        for layer in Manifest.parse(child_raw).layers:
            path = routes.fetch_blob(ref, layer, store)
            annotations = layer.annotations or {}
            if mt.ESTARGZ_TOC_DIGEST in annotations:
                size = annotations.get(mt.ESTARGZ_UNCOMPRESSED_SIZE)
                verdict = conformance.check_estargz(
                    path, annotations[mt.ESTARGZ_TOC_DIGEST], int(size) if size else None
                )
            else:
                verdict = conformance.check_zstd_chunked(path, annotations, None)
            assert verdict.ok, verdict.error


@pytest.mark.parametrize("driver", DRIVERS)
def test_layout_to_layout_for_every_driver(
    driver: str, prefect_api, registry, repo_name: str, tmp_path: Path
) -> None:
    from flows.convert_image import convert_image

    config = write_config(tmp_path, registry)
    source, _ = source_layout(tmp_path)
    target = f"oci:{tmp_path / 'out'}:v1"
    result = convert_image(source=f"oci:{source}:v1", drivers=[driver], config=str(config), target=target)

    [pushed] = result.targets
    assert pushed.reference == f"oci:{(tmp_path / 'out').resolve()}:v1"
    assert "verify " + driver in result.seconds
    assert OCILayout(tmp_path / "out").resolve(Reference("oci", "x", tag="v1")).digest == pushed.digest
    proven(f"oci:{source}:v1", target)
    assert accelctl.main(["check", f"oci:{source}:v1", target]) == 0
    if driver != "nydus":
        reference_readers_accept(target, tmp_path)
        # Other tools read what accel wrote: skopeo copies the layout to a registry, crane validates it there.
        skopeo, crane = require_tool("skopeo"), require_tool("crane")
        pushed_ref = f"{registry.host}/{repo_name}:{driver}"
        run_tool(skopeo, "copy", "--all", "--dest-tls-verify=false", target, f"docker://{pushed_ref}")
        # crane 0.20's layer validation gunzips every layer, so zstd layers get the structural check only.
        fast = ["--fast"] if driver == "zstdchunked" else []
        assert "PASS" in run_tool(crane, "--insecure", "validate", *fast, "--remote", pushed_ref)


def test_layout_to_registry_and_back_to_a_layout(
    prefect_api, registry, repo_name: str, tmp_path: Path
) -> None:
    from flows.convert_image import convert_image

    config = write_config(tmp_path, registry)
    source, _ = source_layout(tmp_path)
    in_registry = f"{registry.host}/{repo_name}:v1-estargz"
    convert_image(source=f"oci:{source}:v1", drivers=["estargz"], config=str(config), target=in_registry)
    with RegistryClient({registry.host: HostConfig()}) as client:
        proven(f"oci:{source}:v1", in_registry, client)

    # registry → layout: the plain source pushed to the registry, converted into a layout.
    plain = f"{registry.host}/{repo_name}:plain"
    with RegistryClient({registry.host: HostConfig()}) as client:
        routes = Transports(client)
        store = ContentStore(tmp_path / "copy-store")
        layout_ref = parse_location(f"oci:{source}:v1").reference
        from accel.image import resolve_source

        image = resolve_source(routes, layout_ref, store)
        for layer in image.unique_layers():
            routes.fetch_blob(layout_ref, layer.descriptor, store)
        built = as_built_from_source(image)
        publish.push_image(client, Reference.parse(plain), built, store)
        out = f"oci:{tmp_path / 'from-registry'}:v1"
        convert_image(source=plain, drivers=["zstdchunked"], config=str(config), target=out)
        proven(plain, out, client)
        reference_readers_accept(out, tmp_path)


def as_built_from_source(image):
    from accel.model import BuiltImage, BuiltManifest

    return BuiltImage(
        root=image.root,
        manifests=tuple(
            BuiltManifest(
                descriptor=m.descriptor, config=m.config, layers=tuple(layer.descriptor for layer in m.layers)
            )
            for m in image.manifests
        ),
    )


def test_archives_to_a_layout_and_an_archive(prefect_api, registry, tmp_path: Path) -> None:
    from flows.convert_image import convert_image

    config = write_config(tmp_path, registry)
    store = ContentStore(tmp_path / "store")
    image = imagegen.standard_image(store, media="docker", big_file_size=300 * 1024)
    saved = tmp_path / "saved.tar"
    docker_save(saved, store, image, ["team/app:v1"])

    out = f"oci:{tmp_path / 'out'}:v1"
    convert_image(source=f"docker-archive:{saved}", drivers=["estargz"], config=str(config), target=out)
    proven(f"docker-archive:{saved}", out)

    archive = f"oci-archive:{tmp_path / 'converted.tar'}:v1"
    convert_image(
        source=f"docker-archive:{saved}:team/app:v1",
        drivers=["zstdchunked"],
        config=str(config),
        target=archive,
    )
    proven(f"docker-archive:{saved}", archive)
    assert accelctl.main(["check", f"docker-archive:{saved}", archive]) == 0


def test_check_fails_on_a_corrupted_copy_and_names_it(prefect_api, registry, tmp_path: Path, capsys) -> None:
    from flows.convert_image import convert_image

    config = write_config(tmp_path, registry, verify=False)
    source, _ = source_layout(tmp_path)
    target = f"oci:{tmp_path / 'out'}:v1"
    convert_image(source=f"oci:{source}:v1", drivers=["estargz"], config=str(config), target=target)
    capsys.readouterr()
    # Flip one byte in the middle of the largest layer, in place (a bad disk, a bad copy).
    blob = max((tmp_path / "out" / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x20
    blob.write_bytes(bytes(data))

    assert accelctl.main(["check", f"oci:{source}:v1", target]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and f"first difference: target blob sha256:{blob.name}" in out


def test_the_verify_switch_refuses_to_push_what_it_cannot_prove(
    prefect_api, registry, tmp_path: Path, monkeypatch
) -> None:
    from accel.drivers.estargz.reader import EStargzReader
    from flows.convert_image import ConversionFailed, convert_image

    config = write_config(tmp_path, registry, verify=True)
    source, _ = source_layout(tmp_path)

    def unprovable(self: EStargzReader, path: Path, desc: Descriptor) -> list[str]:
        raise VerifyError("eStargz TOC digest: forged for this test")

    monkeypatch.setattr(EStargzReader, "check", unprovable)
    target = f"oci:{tmp_path / 'out'}:v1"
    # The estargz target fails verification and is not pushed; the run fails naming why.
    with pytest.raises(ConversionFailed, match=r"estargz .*VerifyError: .*not pushed, it fails verification"):
        convert_image(source=f"oci:{source}:v1", drivers=["estargz"], config=str(config), target=target)
    assert not (tmp_path / "out" / "index.json").exists()


def test_the_verify_switch_proves_a_warm_run_whose_layers_come_from_the_cache(
    prefect_api, registry, repo_name: str, tmp_path: Path
) -> None:
    """A fresh work dir: the converted layers are cache hits mounted in the target repository, not local; the
    verify step reads them from there."""
    from flows.convert_image import convert_image

    store = ContentStore(tmp_path / "source-store")
    image = imagegen.standard_image(store, big_file_size=300 * 1024)
    source = Reference.parse(f"{registry.host}/{repo_name}:v1")
    with RegistryClient({registry.host: HostConfig()}) as client:
        publish.push_image(client, source, as_built(image), store)

    def config(work: str) -> Path:
        path = configs.write_config(
            tmp_path / f"{work}.yaml",
            {registry.host: {}},
            [configs.driver("estargz")],
            [{"cache_tag": "accel-cache"}],
            work_dir=tmp_path / work,
        )
        settings = yaml.safe_load(path.read_text())
        settings["converter"]["verify"] = True
        path.write_text(yaml.safe_dump(settings))
        return path

    cold = convert_image(source=str(source), config=str(config("cold")))
    warm = convert_image(source=str(source), config=str(config("warm")))
    assert [(t.cached_layers, t.layers) for t in warm.targets] == [(len(image.layers), len(image.layers))]
    assert [t.digest for t in warm.targets] == [t.digest for t in cold.targets]
    assert "verify estargz" in warm.seconds
