"""Layouts and archives accel writes, read by other tools: skopeo (containers/image) and crane (ggcr).

Both tools are installed by scripts/setup (skopeo from Debian, crane by scripts/install-crane); a test is
skipped, naming the missing tool, when one is absent.
"""

from __future__ import annotations

from pathlib import Path

from accel import publish
from accel.image import resolve_source
from accel.reference import Reference
from accel.registry import RegistryClient
from accel.store import ContentStore
from accel.transports import open_location, parse_location
from tests.harness import imagegen
from tests.harness.pushing import as_built
from tests.harness.tools import require_tool, run_tool


def written(tmp_path: Path, text: str) -> tuple[ContentStore, imagegen.BuiltIndex]:
    store = ContentStore(tmp_path / "store")
    image = imagegen.standard_index(store, big_file_size=256 * 1024)
    location = parse_location(text)
    with open_location(location, writable=True) as target:
        publish.push_image(target, location.reference, as_built(image), store)
    return store, image


def test_skopeo_copies_an_accel_layout_to_the_registry_and_crane_validates_it(
    tmp_path: Path, registry, repo_name: str
) -> None:
    skopeo, crane = require_tool("skopeo"), require_tool("crane")
    _, image = written(tmp_path, f"oci:{tmp_path / 'layout'}:v1")
    target = f"{registry.host}/{repo_name}:v1"

    run_tool(
        skopeo,
        "copy",
        "--all",
        "--dest-tls-verify=false",
        f"oci:{tmp_path / 'layout'}:v1",
        f"docker://{target}",
    )
    assert "PASS" in run_tool(crane, "--insecure", "validate", "--remote", target)
    with RegistryClient(docker_config=Path("/nonexistent")) as client:
        assert client.resolve(Reference.parse(target)).digest == image.digest  # byte-exact copy


def test_crane_pushes_an_accel_layout_and_skopeo_reads_an_accel_archive(
    tmp_path: Path, registry, repo_name: str
) -> None:
    skopeo, crane = require_tool("skopeo"), require_tool("crane")
    _, image = written(tmp_path, f"oci:{tmp_path / 'layout'}:v1")
    # crane reads the layout on its own (ggcr's layout package) and pushes every image it lists.
    run_tool(
        crane, "--insecure", "push", "--index", str(tmp_path / "layout"), f"{registry.host}/{repo_name}:crane"
    )
    for child in image.images:
        assert "PASS" in run_tool(
            crane, "--insecure", "validate", "--remote", f"{registry.host}/{repo_name}@{child.digest}"
        )

    _, archived = written(tmp_path, f"oci-archive:{tmp_path / 'image.tar'}:v1")
    raw = run_tool(skopeo, "inspect", "--raw", f"oci-archive:{tmp_path / 'image.tar'}:v1")
    assert raw.strip().encode() == archived.raw


def test_accel_reads_a_layout_skopeo_wrote(tmp_path: Path, registry, repo_name: str) -> None:
    skopeo = require_tool("skopeo")
    store, image = written(tmp_path, f"oci:{tmp_path / 'layout'}:v1")
    run_tool(skopeo, "copy", "--all", f"oci:{tmp_path / 'layout'}:v1", f"oci:{tmp_path / 'by-skopeo'}:copied")
    location = parse_location(f"oci:{tmp_path / 'by-skopeo'}:copied")
    fresh = ContentStore(tmp_path / "fresh")
    layout = open_location(location)
    source = resolve_source(layout, location.reference, fresh)
    assert source.root.digest == image.digest
    for manifest in source.manifests:
        for layer in manifest.layers:
            layout.fetch_blob(location.reference, layer.descriptor, fresh)
            assert (
                fresh.path(layer.descriptor.digest).read_bytes()
                == store.path(layer.descriptor.digest).read_bytes()
            )
