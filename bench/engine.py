"""Engine-only conversion speed and memory, next to the codec-only limits on the same tars.

    .venv/bin/python bench/engine.py --mb 200 [--drivers estargz,zstdchunked,nydus] [--repeat 3]
    .venv/bin/python bench/engine.py --tar base.tar --tar python.tar [--push 127.0.0.1:5000/bench/img:v1]

The source image is either generated (`--mb`, as bench/convert.py does) or made of the given uncompressed
tars, one layer each (`--tar`, repeatable: a real rootfs and the layers on top of it). Its layers sit
gzip-compressed in a local content store ("pulled"), so the timings below are the engine alone: each driver
converts every layer in a fresh child process, which reports its wall time and peak RSS (the whole process:
interpreter, imports and conversion). `--push` also pushes the source image to a running registry, so that
another converter can be timed on the very same image.

The codec limits compress the same uncompressed tars (held in memory, 4 MiB pieces on a 2-thread pool):
gzip level 9 with zlib-ng (what eStargz pays at least) and zstd level 3 (zstd:chunked).
Figures only; nothing here passes or fails on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MB = 1 << 20
CODEC_PIECE = 4 << 20
CODEC_THREADS = 2


def _source_image(args: argparse.Namespace, store: Any) -> Any:
    from bench.images import source_image

    return source_image(store, args.mb, args.tar)


def _child(store_dir: str, driver_type: str, layers_json: str) -> int:
    """Convert every layer with one driver; print timings and this process's peak RSS as JSON."""
    from accel.drivers import LayerInput, load_driver
    from accel.oci import Descriptor
    from accel.store import ContentStore

    store = ContentStore(Path(store_dir))
    driver = load_driver(driver_type, {})
    seconds = []
    for item in json.loads(layers_json):
        layer = LayerInput(Descriptor.model_validate(item["descriptor"]), item["diff_id"], store)
        started = time.perf_counter()
        converted = driver.convert_layer(layer)
        seconds.append(time.perf_counter() - started)
        store.path(converted.descriptor.digest).unlink(missing_ok=True)  # repeated runs start clean
    print(json.dumps({"seconds": seconds, "peak_rss_mib": _peak_rss_kib() / 1024}))
    return 0


def _peak_rss_kib() -> int:
    """This process's peak RSS. Not ru_maxrss: Linux carries that over from the parent across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _run_driver(store_dir: Path, driver_type: str, layers: list[dict[str, Any]]) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", str(store_dir), driver_type, json.dumps(layers)]
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _uncompressed_tars(store: Any, image: Any) -> list[bytes]:
    from accel.compression import open_uncompressed

    tars = []
    for layer, diff_id in zip(image.layers, image.diff_ids, strict=True):
        with open_uncompressed(store.path(layer.digest), layer.media_type, diff_id) as f:
            tars.append(f.read())
    return tars


def _codec_seconds(tars: list[bytes], compress: Any) -> float:
    pieces = [memoryview(t)[i : i + CODEC_PIECE] for t in tars for i in range(0, len(t), CODEC_PIECE)]
    with ThreadPoolExecutor(CODEC_THREADS) as pool:
        started = time.perf_counter()
        for _ in pool.map(compress, pieces):
            pass
        return time.perf_counter() - started


def _codec_limits(tars: list[bytes]) -> dict[str, float]:
    import zstandard
    from zlib_ng import zlib_ng

    def gzip9(piece: memoryview) -> bytes:
        c = zlib_ng.compressobj(9, zlib_ng.DEFLATED, 31)
        return c.compress(piece) + c.flush()

    def zstd3(piece: memoryview) -> bytes:
        return zstandard.ZstdCompressor(level=3).compress(piece)

    return {"zlib-ng gzip 9": _codec_seconds(tars, gzip9), "zstd 3": _codec_seconds(tars, zstd3)}


def _push(store: Any, image: Any, target: str) -> None:
    from accel.reference import Reference
    from accel.registry import HostConfig, RegistryClient
    from tests.harness import pushing

    ref = Reference.parse(target)
    with RegistryClient({ref.registry: HostConfig()}) as client:
        pushing.push(client, store, ref, image)
    print(f"pushed the source image to {target}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return _child(*sys.argv[2:5])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=200, help="generated image size in MiB (without --tar)")
    parser.add_argument("--tar", action="append", default=[], help="an uncompressed layer tar (repeatable)")
    parser.add_argument("--drivers", default="estargz,zstdchunked,nydus")
    parser.add_argument("--repeat", type=int, default=1, help="runs per driver; the median is shown")
    parser.add_argument("--push", metavar="REF", help="also push the source image to this registry ref")
    parser.add_argument("--work", type=Path, help="work directory (default: a temporary one)")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    from accel.store import ContentStore

    with tempfile.TemporaryDirectory(prefix="accel-engine-", dir=args.work) as tmp:
        store_dir = Path(tmp) / "store"
        store = ContentStore(store_dir)
        image = _source_image(args, store)
        tars = _uncompressed_tars(store, image)
        uncompressed = sum(len(t) for t in tars)
        compressed = sum(layer.size for layer in image.layers)
        print(
            f"image: {len(image.layers)} layers, {uncompressed / MB:.1f} MiB uncompressed "
            f"({', '.join(f'{len(t) / MB:.1f}' for t in tars)}), {compressed / MB:.1f} MiB gzip"
        )
        if args.push:
            _push(store, image, args.push)
        limits = _codec_limits(tars)
        del tars
        layers = [
            {"descriptor": d.to_dict(), "diff_id": diff_id}
            for d, diff_id in zip(image.layers, image.diff_ids, strict=True)
        ]
        print(f"\n{'driver':<14} {'engine s':>9} {'MB/s':>7} {'peak RSS MiB':>13}   per layer s")
        for driver_type in args.drivers.split(","):
            runs = [_run_driver(store_dir, driver_type, layers) for _ in range(args.repeat)]
            totals = [sum(r["seconds"]) for r in runs]
            total = statistics.median(totals)
            median_run = runs[totals.index(sorted(totals)[len(totals) // 2])]
            peak = max(r["peak_rss_mib"] for r in runs)
            per_layer = " ".join(f"{s:.2f}" for s in median_run["seconds"])
            print(
                f"{driver_type:<14} {total:9.2f} {uncompressed / MB / total:7.1f} {peak:13.0f}   {per_layer}"
            )
        print(f"\n{'codec limit':<14} {'seconds':>9} {'MB/s':>7}   ({CODEC_THREADS} threads, 4 MiB pieces)")
        for name, seconds in limits.items():
            print(f"{name:<14} {seconds:9.2f} {uncompressed / MB / seconds:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
