"""Paired one-time benchmark against Harbor's Go acceleration service (issue 25's table).

    .venv/bin/python bench/paired.py [--rounds 3] [--rows big,rootfs,small5,small30,warm]
                                     [--drivers estargz,zstdchunked,nydus] [--peer /work/peer/bin]
                                     [--warm-of rootfs] [--keep]

Starts a real docker-registry on loopback, pushes each image under one repository per call (the same blobs,
mounted: each cold call sees a source with no conversion cache) and times `accelctl convert` of accel and
of the Go peer (`<peer>/accelctl`, built from upstream source: README "Benchmarks"), both as a user runs
them, each with a fresh work dir and the same nydus-image (.tools/bin, first on PATH for both):

- accel's local Prefect server and runner are started before any timed call (an untimed call per driver),
  as they are on a machine that has converted before; the peer gets the same untimed call per driver;
- both read the same config file per call: the options of the peer's shipped configs
  (misc/config/config.{nydus,estargz,estargz.zstdchunked}.yaml: docker2oci, harbor_annotation, Nydus
  with_referrer and cache_tag `nydus-cache`; zstd:chunked through the estargz driver as the peer writes it);
- rounds alternate which side goes first (peer first in even rounds), so both see the same machine load;
  each cell is the median of the peer's walls / the median of accel's (above 1: accel is faster);
- rows: `big` 200 MiB in 4 layers (~70 % random content), `rootfs` a Debian rootfs in 2 layers
  (bench/rootfs.py builds and caches it with mmdebstrap), `small5`/`small30` 5 MiB in 3 layers and 30 MiB
  in 5, `warm` the `--warm-of` image again with every layer in the remote cache: each side first converts
  its own repository once (untimed, cache_tag rule on), then each timed call converts it again with a fresh
  work dir. The peer's estargz driver has no cache: its warm calls convert everything again, and the cell
  says so when its log reports no cache hit; when its cache answered only some calls (`cached 0/N` in the
  others), its figure is the median of the calls it answered, and the cell says so.

Peak RSS is sampled every 20 ms as the sum of resident memory over the call's processes: for accel the
accelctl client, the local runner (it runs every conversion in-process) and their children (nydus-image);
for the peer its accelctl and its children. The resident Prefect server's memory is printed beside it
(it serves every call, like dockerd; it is not part of one conversion).
Prints the machine (nproc, CPU model) and the load average at start and end. Nothing passes or fails here.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from accel import publish  # noqa: E402
from accel.reference import Reference  # noqa: E402
from accel.registry import HostConfig, RegistryClient  # noqa: E402
from accel.store import ContentStore  # noqa: E402
from bench.images import TarFileLayer  # noqa: E402
from bench.rootfs import ensure_rootfs  # noqa: E402
from service import local  # noqa: E402
from tests.harness import imagegen, pushing  # noqa: E402
from tests.harness.registry import anonymous_registry, free_port  # noqa: E402

MiB = 1 << 20
COLUMNS = {"estargz": "eStargz", "zstdchunked": "zstd:chunked", "nydus": "Nydus"}
ROWS = ("big", "rootfs", "small5", "small30", "warm")
SIDES = ("peer", "accel")  # peer first in even rounds

# Driver settings of the peer's shipped configs; values are strings as the peer's map[string]string reads
# them (accel reads the same).
DRIVER_SETTINGS: dict[str, dict[str, Any]] = {
    "estargz": {"type": "estargz", "config": {"docker2oci": "true"}},
    "zstdchunked": {"type": "estargz", "config": {"docker2oci": "true", "compression": "zstdchunked"}},
    "nydus": {"type": "nydus", "config": {"with_referrer": "true"}},
}
# The shipped Nydus config keeps a remote cache; the estargz ones have no cache_tag rule.
COLD_CACHE_TAG = {"nydus": "nydus-cache"}


@dataclass
class Call:
    wall: float | None  # None: the call failed
    peak_rss_mib: float
    cache_hits: str = ""  # the peer's "(cached N/M)" after conversion, when it logs one


@dataclass
class Cell:
    peer: list[Call] = field(default_factory=list)
    accel: list[Call] = field(default_factory=list)


# --- process memory -------------------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def _rss_mib(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MiB
    except OSError:
        return 0.0


class RssSampler:
    """Peak of the summed RSS of some processes and their descendants, sampled while a call runs.
    Descendants are looked up every 10th sample (a /proc scan), RSS read at every one."""

    def __init__(self, roots: Callable[[], Iterable[int]], interval: float = 0.02) -> None:
        self._roots = roots
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak = 0.0

    def _tree(self) -> set[int]:
        children = _children_map()
        pids, todo = set(), list(self._roots())
        while todo:
            pid = todo.pop()
            if pid not in pids:
                pids.add(pid)
                todo.extend(children.get(pid, ()))
        return pids

    def _run(self) -> None:
        pids: set[int] = set()
        tick = 0
        while not self._stop.is_set():
            if tick % 10 == 0:
                pids = self._tree()
            self.peak = max(self.peak, sum(_rss_mib(pid) for pid in pids))
            tick += 1
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- the two sides --------------------------------------------------------------------------------


def write_config(path: Path, registry: str, driver: str, work: Path, cache_tag: str | None) -> Path:
    """One config both services read: the peer's shipped defaults for `driver`, this call's work dir."""
    settings = dict(DRIVER_SETTINGS[driver])
    settings["config"] = dict(settings["config"])
    if settings["type"] == "nydus":
        settings["config"]["work_dir"] = str(work / "nydus")  # the peer's default is $TMPDIR
    rules: list[dict[str, str]] = [{"tag_suffix": f"-{driver}"}]
    if cache_tag:
        rules.append({"cache_tag": cache_tag})
    config = {
        "server": {"name": "API", "host": "127.0.0.1", "port": free_port()},
        "metric": {"enabled": False},
        "provider": {
            "source": {registry: {"webhook": {"auth_header": "bench"}}},
            "work_dir": str(work),
            "gcpolicy": {"threshold": "1000MB"},
        },
        "converter": {"worker": 5, "harbor_annotation": True, "driver": settings, "rules": rules},
    }
    path.write_text(yaml.safe_dump(config))
    return path


_CACHED = re.compile(r"converted image .*?\(cached (\d+/\d+)\)")
# accelctl's and the peer's lines for a call that converted nothing.
_SKIPPED = re.compile(
    r"accelctl: nothing to convert in .*|image has been converted.*|image was remote cache.*"
)


class Sides:
    def __init__(self, peer_bin: Path, env: dict[str, str], runs: Path, client: RegistryClient) -> None:
        self.peer_accelctl = peer_bin / "accelctl"
        self.client = client
        self.env = env
        self.runs = runs
        self.count = 0

    def _fresh(self, label: str) -> Path:
        self.count += 1
        work = self.runs / f"{self.count:03d}-{label}"
        work.mkdir(parents=True)
        return work

    def _timed(
        self, cmd: list[str], roots: Callable[[subprocess.Popen[str]], Iterable[int]]
    ) -> tuple[float, float, int, str, str]:
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, env=self.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        with RssSampler(lambda: roots(proc)) as rss:
            stdout, stderr = proc.communicate()
        return time.perf_counter() - started, rss.peak, proc.returncode, stdout, stderr

    def run(
        self, side: str, registry: str, driver: str, source: Reference, cache_tag: str | None, label: str
    ) -> Call:
        work = self._fresh(f"{label}-{side}")
        config = write_config(work / "config.yaml", registry, driver, work / "work", cache_tag)
        if side == "peer":
            cmd = [str(self.peer_accelctl), "convert", "--config", str(config), str(source)]
            wall, peak, code, out, err = self._timed(cmd, lambda proc: [proc.pid])
        else:
            cmd = [sys.executable, "-m", "service.accelctl", "convert", "--config", str(config), str(source)]
            # The runner runs the conversion in-process: its memory is the conversion's.
            wall, peak, code, out, err = self._timed(
                cmd, lambda proc: [proc.pid, *filter(None, [local.runner_pid()])]
            )
        shutil.rmtree(work, ignore_errors=True)
        if code != 0:
            print(f"    {side} {label} failed ({code}): {(out + err)[-800:]}")
            return Call(None, peak)
        # A call that exits 0 without converting (a skip, or no target written) is no result.
        if skipped := _SKIPPED.search(err):
            print(f"    {side} {label}: skipped: {skipped.group(0)}")
            return Call(None, peak)
        try:
            self.client.resolve(source.with_tag(f"{source.tag}-{driver}"))
        except Exception as error:
            print(f"    {side} {label}: no target after exit 0 ({error})")
            return Call(None, peak)
        hits = _CACHED.findall(err) if side == "peer" else []
        return Call(wall, peak, hits[-1] if hits else "")


# --- images ---------------------------------------------------------------------------------------


@dataclass
class Image:
    label: str
    built: Any
    store: ContentStore


def build_image(row: str, work: Path) -> Image:
    store = ContentStore(work / f"source-{row}")
    if row == "rootfs":
        tars = ensure_rootfs()
        size = sum(p.stat().st_size for p in tars) / MiB
        built = imagegen.generate_image([TarFileLayer(p) for p in tars], store)  # type: ignore[list-item]
        return Image(f"Debian rootfs {size:.0f} MiB, {len(tars)} layers", built, store)
    mib, layers = {"big": (200, 4), "small5": (5, 3), "small30": (30, 5)}[row]
    built = imagegen.big_image(store, total_bytes=mib * MiB, layer_count=layers)
    what = "~70 % random" if row == "big" else "small"
    return Image(f"{mib} MiB, {layers} layers, {what}", built, store)


def push_copies(
    client: RegistryClient, registry: str, image: Image, names: list[str]
) -> dict[str, Reference]:
    """The image under each name (bench/<name>:v1): the first pushed, the rest mounted from it."""
    refs = {name: Reference.parse(f"{registry}/bench/{name}:v1") for name in names}
    first = refs[names[0]]
    pushing.push(client, image.store, first, image.built)
    for name in names[1:]:
        publish.push_image(client, refs[name], pushing.as_built(image.built), image.store, [first.repository])
    return refs


# --- report ---------------------------------------------------------------------------------------


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    memory = int(Path("/proc/meminfo").read_text().split()[1]) / (1 << 20)
    return f"nproc {os.cpu_count()} ({len(os.sched_getaffinity(0))} usable), {model}, {memory:.0f} GiB RAM"


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1, 5, 15 min)"


def versions(peer_bin: Path) -> str:
    def out(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT).stdout.strip()
        except OSError:
            return "?"

    accel = out(["git", "rev-parse", "--short", "HEAD"])
    peer = out([str(peer_bin / "accelctl"), "--version"]).removeprefix("accelctl version ").rstrip(".")
    # Built from crates.io by scripts/install-nydus, it reports no version: its install dir names it.
    nydus = (ROOT / ".tools/bin/nydus-image").resolve()
    return f"accel {accel}; peer {peer or '?'} ({peer_bin}); nydus-image {nydus}"


def _median(calls: list[Call]) -> float | None:
    walls = [c.wall for c in calls if c.wall is not None]
    return statistics.median(walls) if walls else None


def _all_cached(call: Call) -> bool:
    hit, _, total = call.cache_hits.partition("/")
    return bool(total) and hit == total and hit != "0"


def cell_text(cell: Cell, warm: bool) -> str:
    peer_calls, note = cell.peer, ""
    if warm:
        cached = [c for c in cell.peer if _all_cached(c)]
        if not cached:
            note = "; peer has no cache"
        elif len(cached) < len(cell.peer):
            # The peer's remote cache did not answer every call (its log says `cached 0/N`): its warm figure
            # is that of the calls it answered, not of full conversions.
            peer_calls, note = cached, f"; peer: median of the {len(cached)} calls its cache answered"
    peer, accel = _median(peer_calls), _median(cell.accel)
    if peer is None or accel is None:
        return "–" if not cell.peer and not cell.accel else f"failed (peer {peer}, accel {accel})"
    ratio = peer / accel
    figure = f"**{ratio:.2f}**" if ratio < 1.0 else f"{ratio:.2f}"
    return f"{figure} ({peer:.2f} / {accel:.2f} s{note})"


def rss_text(cell: Cell) -> str:
    if not cell.peer and not cell.accel:
        return "–"
    peer = max((c.peak_rss_mib for c in cell.peer), default=0.0)
    accel = max((c.peak_rss_mib for c in cell.accel), default=0.0)
    return f"{peer:.0f} / {accel:.0f}"


def table(
    labels: dict[str, str], cells: dict[tuple[str, str], Cell], text: Callable[[str, Cell], str]
) -> str:
    lines = ["| image | " + " | ".join(COLUMNS.values()) + " |", "|---|---|---|---|"]
    for row, label in labels.items():
        values = [text(row, cells[(row, d)]) if (row, d) in cells else "–" for d in COLUMNS]
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------------


class Bench:
    """The registry, both sides and the images of one bench run; `cell` times one row × driver."""

    def __init__(self, sides: Sides, registry: str, client: RegistryClient, work: Path, rounds: int) -> None:
        self.sides, self.registry, self.client, self.work, self.rounds = sides, registry, client, work, rounds
        self.images: dict[str, Image] = {}

    def image(self, row: str) -> Image:
        if row not in self.images:
            self.images[row] = build_image(row, self.work)
        return self.images[row]

    def warm_up(self, drivers: list[str]) -> None:
        """Untimed: starts accel's local server and runner, and loads each driver on both sides."""
        names = [f"warmup-{driver}-{side}" for driver in drivers for side in SIDES]
        refs = push_copies(self.client, self.registry, self.image("small5"), names)
        for driver in drivers:
            for side in SIDES:
                self.sides.run(side, self.registry, driver, refs[f"warmup-{driver}-{side}"], None, "warmup")

    def cell(self, row: str, image_row: str, driver: str) -> Cell:
        image = self.image(image_row)
        if row == "warm":
            # Each side converts its own repository once (untimed) to fill its remote cache; the timed
            # calls convert it again.
            cache_tag: str | None = f"{driver}-cache"
            refs = push_copies(self.client, self.registry, image, [f"warm-{driver}-{side}" for side in SIDES])
            for side in SIDES:
                self.sides.run(side, self.registry, driver, refs[f"warm-{driver}-{side}"], cache_tag, "seed")
            sources = {side: [refs[f"warm-{driver}-{side}"]] * self.rounds for side in SIDES}
        else:
            cache_tag = COLD_CACHE_TAG.get(driver)
            names = [f"{row}-{driver}-{side}-{n}" for n in range(self.rounds) for side in SIDES]
            refs = push_copies(self.client, self.registry, image, names)
            sources = {
                side: [refs[f"{row}-{driver}-{side}-{n}"] for n in range(self.rounds)] for side in SIDES
            }
        cell = Cell()
        for n in range(self.rounds):
            for side in SIDES if n % 2 == 0 else SIDES[::-1]:  # alternate who goes first
                call = self.sides.run(
                    side, self.registry, driver, sources[side][n], cache_tag, f"{row}-{driver}"
                )
                getattr(cell, side).append(call)
            print(
                f"  {COLUMNS[driver]:<13} round {n + 1}: {_call_text(cell.peer[-1], 'peer')}"
                f" | {_call_text(cell.accel[-1], 'accel')}  (load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
        return cell


def _call_text(call: Call, side: str) -> str:
    wall = "failed" if call.wall is None else f"{call.wall:6.2f} s"
    hits = f" cached {call.cache_hits}" if call.cache_hits else ""
    return f"{side} {wall} {call.peak_rss_mib:5.0f} MiB{hits}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="timed calls per side and cell (median)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--drivers", default=",".join(COLUMNS), help="comma-separated, of the columns")
    parser.add_argument("--peer", type=Path, default=Path("/work/peer/bin"), help="the Go peer's bin dir")
    parser.add_argument("--warm-of", default="rootfs", choices=[r for r in ROWS if r != "warm"])
    parser.add_argument("--keep", action="store_true", help="leave accel's local server running")
    args = parser.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    drivers = [d for d in args.drivers.split(",") if d]
    if unknown := [r for r in rows if r not in ROWS] + [d for d in drivers if d not in COLUMNS]:
        parser.error(f"unknown rows or drivers: {unknown}")
    if not (args.peer / "accelctl").exists():
        parser.error(f"no Go peer at {args.peer}/accelctl (README 'Benchmarks' says how to build it)")

    started_load = load()
    print(f"machine: {machine()}\n{versions(args.peer)}\nload average at start: {started_load}", flush=True)
    labels: dict[str, str] = {}
    cells: dict[tuple[str, str], Cell] = {}
    with tempfile.TemporaryDirectory(prefix="accel-paired-") as tmp:
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env["ACCEL_STATE_DIR"] = os.environ["ACCEL_STATE_DIR"] = str(work / "state")  # service.local's too
        env["PATH"] = os.pathsep.join(
            [str(ROOT / ".tools/bin"), str(Path(sys.executable).parent), env["PATH"]]
        )
        with (
            anonymous_registry(work / "registry") as registry,
            RegistryClient({registry.host: HostConfig()}) as client,
        ):
            sides = Sides(args.peer, env, work / "runs", client)
            bench = Bench(sides, registry.host, client, work, args.rounds)
            try:
                bench.warm_up(drivers)
                print(f"accel's local server and runner are up; load average {load()}", flush=True)
                for row in rows:
                    image_row = args.warm_of if row == "warm" else row
                    label = bench.image(image_row).label
                    labels[row] = (
                        f"warm (remote cache answers every layer), {label}" if row == "warm" else label
                    )
                    print(f"{labels[row]}:", flush=True)
                    for driver in drivers:
                        cells[(row, driver)] = bench.cell(row, image_row, driver)
                info = local.server_info()
                server = (_rss_mib(info.pid), _peak_mib(info.pid)) if info else (0.0, 0.0)
            finally:
                if not args.keep:
                    stop = [sys.executable, "-m", "service.accelctl", "server", "stop"]
                    subprocess.run(stop, env=env, cwd=ROOT, capture_output=True)

    print(f"\nmachine: {machine()}\n{versions(args.peer)}")
    print(f"load average at start: {started_load}; at end: {load()}")
    print(f"paired, median of {args.rounds}; figure = peer wall / accel wall (above 1: accel is faster)\n")
    print(table(labels, cells, lambda row, cell: cell_text(cell, warm=row == "warm")))
    print("\npeak RSS of the conversion's processes, MiB, peer / accel (max over the timed calls)\n")
    print(table(labels, cells, lambda row, cell: rss_text(cell)))
    print(
        f"\nresident Prefect server (serves every accel call): RSS {server[0]:.0f} MiB,"
        f" peak {server[1]:.0f} MiB"
    )
    return 0


def _peak_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


if __name__ == "__main__":
    sys.exit(main())
