"""Conversion throughput: a generated ~200 MB image through each driver, stage by stage.

    .venv/bin/python bench/convert.py [--mb 200] [--drivers estargz,zstdchunked,nydus] [--flow]

Starts a real docker-registry on loopback, pushes the generated image, then for each driver times:
pull (registry → content store, verified), convert (per layer, MB/s of uncompressed input), build + push.
`--flow` also runs the whole convert-image Prefect flow (temporary Prefect server) twice, cold and warm (a
fresh work dir, so only the remote cache image can answer), and prints the stage times of each.
Prints figures only; nothing here passes or fails on speed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no internet here; keep logs clean

from accel import image as img  # noqa: E402
from accel import publish  # noqa: E402
from accel.drivers import LayerInput, load_driver  # noqa: E402
from accel.plan import target_reference  # noqa: E402
from accel.reference import Reference  # noqa: E402
from accel.registry import HostConfig, RegistryClient  # noqa: E402
from accel.store import ContentStore  # noqa: E402
from tests.harness import imagegen, pushing  # noqa: E402
from tests.harness.registry import anonymous_registry  # noqa: E402

MB = 1 << 20


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    elapsed = time.perf_counter() - started
    return value, elapsed


def bench_driver(
    driver_type: str, client: RegistryClient, source: Reference, work: Path, uncompressed: int
) -> dict[str, float]:
    store = ContentStore(work / f"store-{driver_type}")
    driver = load_driver(driver_type, {})
    image, t_resolve = timed(img.resolve_source, client, source, store)
    started = time.perf_counter()
    for layer in image.unique_layers():
        client.fetch_blob(source, layer.descriptor, store)
    t_pull = time.perf_counter() - started

    converted = {}
    started = time.perf_counter()
    for layer in image.unique_layers():
        t0 = time.perf_counter()
        c = driver.convert_layer(LayerInput(layer.descriptor, layer.diff_id, store))
        dt = time.perf_counter() - t0
        converted[layer.descriptor.digest] = c
        print(
            f"  {driver_type:<12} layer {layer.descriptor.digest[7:19]}  "
            f"{layer.descriptor.size / MB:7.1f} MB → {c.descriptor.size / MB:7.1f} MB  {dt:6.2f} s"
        )
    t_convert = time.perf_counter() - started
    built, t_build = timed(img.build_image, image, converted, driver, store)
    target = target_reference(source, f"-{driver_type}")
    _, t_push = timed(publish.push_image, client, target, built, store, [source.repository])
    return {
        "resolve": t_resolve,
        "pull": t_pull,
        "convert": t_convert,
        "build": t_build,
        "push": t_push,
        "MB/s": uncompressed / MB / t_convert,
        "size": sum(b.size for b in built.blobs()) / MB,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=200, help="uncompressed image size in MiB")
    parser.add_argument("--drivers", default="estargz,zstdchunked,nydus")
    parser.add_argument("--flow", action="store_true", help="also time the whole flow, cold and warm cache")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="accel-bench-") as tmp:
        work = Path(tmp)
        source_store = ContentStore(work / "source")
        built = imagegen.big_image(source_store, total_bytes=args.mb * MB)
        uncompressed = _uncompressed_size(source_store, built)
        compressed = sum(layer.size for layer in built.layers)
        print(
            f"image: {len(built.layers)} layers, {uncompressed / MB:.1f} MiB uncompressed, "
            f"{compressed / MB:.1f} MiB gzip"
        )
        with anonymous_registry(work / "registry") as registry:
            source = Reference.parse(f"{registry.host}/bench/big:v1")
            with RegistryClient({registry.host: HostConfig()}) as client:
                pushing.push(client, source_store, source, built)
                rows = {}
                for driver_type in args.drivers.split(","):
                    rows[driver_type] = bench_driver(driver_type, client, source, work, uncompressed)
            print()
            print(
                f"{'driver':<12} {'resolve':>8} {'pull':>7} {'convert':>8} {'build':>7} {'push':>7} "
                f"{'MB/s in':>8} {'out MiB':>8}"
            )
            for name, r in rows.items():
                print(
                    f"{name:<12} {r['resolve']:7.2f}s {r['pull']:6.2f}s {r['convert']:7.2f}s "
                    f"{r['build']:6.2f}s {r['push']:6.2f}s {r['MB/s']:8.1f} {r['size']:8.1f}"
                )
            if args.flow:
                _bench_flow(registry.host, source, work, args.drivers.split(","))
    return 0


def _uncompressed_size(store: ContentStore, built: imagegen.BuiltImage) -> int:
    from accel.compression import open_uncompressed

    total = 0
    for layer, diff_id in zip(built.layers, built.diff_ids, strict=True):
        with open_uncompressed(store.path(layer.digest), layer.media_type, diff_id) as f:
            while chunk := f.read(MB):
                total += len(chunk)
    return total


def _bench_flow(registry_host: str, source: Reference, work: Path, drivers: list[str]) -> None:
    """The whole flow, cold then warm: the warm run has a fresh work dir, so only the remote cache helps."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.convert_image import convert_image

    def config(name: str) -> Path:
        path = work / f"bench-{name}.yaml"
        path.write_text(
            f"provider:\n  source:\n    {registry_host}: {{}}\n  work_dir: {work / name}\n"
            "converter:\n  drivers:\n"
            + "".join(f"    - type: {d}\n" for d in drivers)
            + "  rules:\n    - cache_tag: bench-cache\n"
        )
        return path

    with prefect_test_harness(server_startup_timeout=120):
        for run in ("cold", "warm"):
            started = time.perf_counter()
            result = convert_image(source=str(source), config=str(config(run)))
            wall = time.perf_counter() - started
            cached = ", ".join(f"{t.driver} {t.cached_layers}/{t.layers}" for t in result.targets)
            print(f"\nflow convert-image ({run}), all drivers: {wall:.2f} s wall; cached layers: {cached}")
            for stage, seconds in result.seconds.items():
                print(f"  {stage:<20} {seconds:7.2f} s")


if __name__ == "__main__":
    sys.exit(main())
