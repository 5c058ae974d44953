"""The first call on a machine: where the seconds (and CPU-seconds) of a call that starts everything go.

    .venv/bin/python bench/firstcall.py [--mb 5] [--driver nydus] [--rounds 1] [--second] [--restart]

Starts a real docker-registry on loopback, pushes a generated image, and runs `accelctl convert --timings`
with a fresh private state dir (ACCEL_STATE_DIR, no PREFECT_API_URL): nothing is running and no Prefect
database exists, so the call creates the database, starts the local Prefect server and the warm runner, and
converts. With `--second` each round also calls again with both up (the steady state: what the first call
adds is the difference); with `--restart` it also stops both and calls again on the same state dir (the
database exists: what a call after a reboot or `accelctl server stop` pays). Each call converts its own
repository, so none finds a target or cache image of another.

A thread watches the call from outside (every 20 ms): when the server's record appears, when it first
answers /api/health, when the runner first accepts a connection, and each process's CPU time
(/proc/PID/stat utime+stime) at those moments. The runner's `--timings` answer gives the rest: request
received, checked, flow run started and finished. On a loaded machine wall time mostly measures the wait
for a CPU; CPU-seconds per process and phase are the figures to compare across changes (the load average is
printed beside them). Prints figures only; nothing here passes or fails on speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from accel.reference import Reference  # noqa: E402
from accel.registry import HostConfig, RegistryClient  # noqa: E402
from accel.store import ContentStore  # noqa: E402
from bench.images import describe, source_image  # noqa: E402
from bench.oneshot import TIMINGS_PREFIX, _busy_cpu_seconds, _config, _process_cpu_seconds  # noqa: E402
from tests.harness import pushing  # noqa: E402
from tests.harness.registry import anonymous_registry  # noqa: E402

MB = 1 << 20


def _running_pids(local_dir: Path) -> dict[int, float]:
    """The server's and runner's pids when they run already, with their CPU-s so far."""
    pids = []
    with contextlib.suppress(OSError, ValueError, KeyError):
        pids.append(int(json.loads((local_dir / "server.json").read_text())["pid"]))
    with contextlib.suppress(OSError, ValueError):
        pids.append(int((local_dir / "runner.pid").read_text()))
    return {pid: _process_cpu_seconds(pid) for pid in pids if _process_cpu_seconds(pid) > 0}


def _cpu_since(pid: int | None, before: dict[int, float]) -> float:
    """CPU-s of `pid` during this call: a process that ran before it counts from the call's start."""
    return _process_cpu_seconds(pid) - before.get(pid or 0, 0.0)


class Watcher(threading.Thread):
    """Stamps (seconds since the call started, and the process's CPU-s then) of the local services' start."""

    def __init__(self, local_dir: Path, started: float, before: dict[int, float]) -> None:
        super().__init__(daemon=True)
        self.before = before
        self.local_dir = local_dir
        self.started = started
        self.stamps: dict[str, tuple[float, float]] = {}
        self.server_pid: int | None = None
        self.runner_pid: int | None = None
        self.done = threading.Event()

    def _stamp(self, name: str, pid: int | None) -> None:
        self.stamps.setdefault(name, (time.perf_counter() - self.started, _cpu_since(pid, self.before)))

    def run(self) -> None:
        api_url = None
        while not self.done.is_set():
            if api_url is None:
                try:
                    record = json.loads((self.local_dir / "server.json").read_text())
                    self.server_pid, api_url = record["pid"], f"http://127.0.0.1:{record['port']}/api"
                    self._stamp("server spawned", self.server_pid)
                except (OSError, ValueError, KeyError):
                    pass
            if api_url and "server healthy" not in self.stamps:
                try:
                    with urllib.request.urlopen(f"{api_url}/health", timeout=0.5) as resp:
                        if resp.status == 200:
                            self._stamp("server healthy", self.server_pid)
                except OSError:
                    pass
            if self.runner_pid is None:
                try:
                    self.runner_pid = int((self.local_dir / "runner.pid").read_text())
                    self._stamp("runner spawned", self.runner_pid)
                except (OSError, ValueError):
                    pass
            if self.runner_pid and "runner listening" not in self.stamps:
                with socket.socket(socket.AF_UNIX) as probe:
                    try:
                        probe.connect(str(self.local_dir / "runner.sock"))
                        self._stamp("runner listening", self.runner_pid)
                    except OSError:
                        pass
            if "server healthy" in self.stamps and "runner listening" in self.stamps:
                return
            time.sleep(0.02)


def first_call(env: dict[str, str], config: Path, source: Reference, label: str) -> dict[str, float]:
    local_dir = Path(env["ACCEL_STATE_DIR"]) / "local"
    busy, load = _busy_cpu_seconds(), os.getloadavg()[0]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    before = _running_pids(local_dir)
    watcher = Watcher(local_dir, started, before)
    watcher.start()
    wall_started = time.time()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.accelctl",
            "convert",
            "--timings",
            "--config",
            str(config),
            str(source),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    watcher.done.set()
    watcher.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"accelctl convert failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stderr.splitlines() if line.startswith(TIMINGS_PREFIX)]
    t = json.loads(lines[-1].removeprefix(TIMINGS_PREFIX)) if lines else {}

    def since(stamp: str) -> float:
        return float(t[stamp]) - wall_started if stamp in t else float("nan")

    figures: dict[str, float] = {}
    for name, (at, _cpu) in sorted(watcher.stamps.items(), key=lambda item: item[1][0]):
        figures[f"{name} (s after start)"] = at
    figures["request sent (s after start)"] = since("sent")
    figures["runner checked the request (s after start)"] = since("checked")
    figures["flow run started (s after start)"] = since("started")
    figures["flow run finished (s after start)"] = since("finished")
    figures["call ended (wall s)"] = wall
    figures["  flow run (s)"] = since("finished") - since("started")
    stages = {name: float(seconds) for name, seconds in t.get("stages", {}).items()}
    for name, seconds in stages.items():
        figures[f"    flow: {name} (s)"] = seconds
    figures["    flow engine: run and task bookkeeping (s)"] = figures["  flow run (s)"] - sum(
        stages.values()
    )
    if "server healthy" in watcher.stamps:
        figures["CPU-s server until healthy"] = watcher.stamps["server healthy"][1]
    if "runner listening" in watcher.stamps:
        figures["CPU-s runner until listening"] = watcher.stamps["runner listening"][1]
    figures["CPU-s server, whole call"] = _cpu_since(watcher.server_pid, before)
    figures["CPU-s runner, whole call"] = _cpu_since(watcher.runner_pid, before)
    client = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    figures["CPU-s accelctl client"] = client
    figures["CPU-s machine busy during the call"] = _busy_cpu_seconds() - busy
    figures["load average (1 min) at start"] = load
    print(f"  {label}: {wall:.2f} s  {proc.stdout.strip()}")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=5, help="generated image size in MiB")
    parser.add_argument("--driver", default="nydus")
    parser.add_argument("--rounds", type=int, default=1, help="first calls, each on a fresh state dir")
    parser.add_argument(
        "--second", action="store_true", help="also call again with both up (what the first call adds)"
    )
    parser.add_argument(
        "--restart", action="store_true", help="also stop the services and call again (the database exists)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="accel-firstcall-") as tmp:
        work = Path(tmp)
        store = ContentStore(work / "source")
        built = source_image(store, args.mb, [])
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env["PATH"] = os.pathsep.join(
            [str(ROOT / ".tools/bin"), str(Path(sys.executable).parent), env["PATH"]]
        )
        results: dict[str, list[dict[str, float]]] = {}
        with anonymous_registry(work / "registry") as registry:
            for n in range(args.rounds):
                env["ACCEL_STATE_DIR"] = str(work / f"state-{n}")
                calls = [("first call (fresh state dir)", f"w{n}")]
                if args.second:
                    calls.append(("second call (server and runner up)", f"s{n}"))
                if args.restart:
                    calls.append(("after `server stop` (database exists)", f"r{n}"))
                try:
                    for label, work_name in calls:
                        # Each call its own repository: no target or cache image of an earlier call is found.
                        source = Reference.parse(f"{registry.host}/bench/firstcall-{work_name}:v1")
                        with RegistryClient({registry.host: HostConfig()}) as client:
                            pushing.push(client, store, source, built)
                        if label.startswith("after"):
                            subprocess.run(
                                [sys.executable, "-m", "service.accelctl", "server", "stop"],
                                env=env,
                                cwd=ROOT,
                                capture_output=True,
                                check=True,
                            )
                        path = work / f"{work_name}.yaml"
                        config = _config(path, registry.host, args.driver, work / work_name)
                        results.setdefault(label, []).append(first_call(env, config, source, label))
                finally:
                    subprocess.run(
                        [sys.executable, "-m", "service.accelctl", "server", "stop"],
                        env=env,
                        cwd=ROOT,
                        check=False,
                    )

        print(f"\n{describe(args.mb, [])}, driver {args.driver}, {os.cpu_count()} CPUs")
        for label, rows in results.items():
            print(f"  {label}, median of {len(rows)}:")
            for name in dict.fromkeys(k for row in rows for k in row):
                values = [row[name] for row in rows if name in row]
                print(f"      {name:<48} {statistics.median(values):7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
