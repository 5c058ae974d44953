"""One-time and service latency: what a user waits for, end to end, for one image and one driver.

    .venv/bin/python bench/oneshot.py [--mb 200 | --tar base.tar --tar app.tar] [--driver nydus] [--rounds 3]
                                      [--no-service] [--peer /work/peer/bin]

Starts a real docker-registry on loopback, pushes the image (generated, or one layer per `--tar`; the same
blobs under one repository per call, so each cold call has no conversion cache), and runs `accelctl convert`
as a user would, with a private state dir (ACCEL_STATE_DIR) and no PREFECT_API_URL:

- first call: nothing running; it starts the local Prefect server and the warm runner;
- cold calls, `--rounds` of them: new repository, fresh work dir, server and runner already up; each paired
  with the Go peer's one-time convert of another fresh repository (when /work/peer/bin/accelctl exists),
  alternating, so both see the same machine load; medians and the load average are printed;
- warm call: the first repository again with a fresh work dir: every layer answered by the remote cache;
- service: acceld (API + runner) against the same local Prefect server; a Harbor webhook for another
  repository, timed from the webhook's 202 to the target tag appearing in the registry, after an untimed
  one (acceld's steady state: its runner and warm flow-run starter up); with its default runner (a process
  per flow run, forked warm) and with `--in-process-runs`.

Each accel call also prints where its time went (`accelctl convert --timings`): client start (Python,
until the request is sent), the runner's check of the request, waiting for its turn, the flow's stages
(its own `seconds`: resolve, cache lookup, pull+convert — with the converted blobs' uploads overlapping —,
build, push, cache merge), the flow engine's own cost (run and task-run bookkeeping, artifacts, finish: the
flow's wall minus its stages), and the answer reaching the client and the client exiting.

Each call also prints the CPU time the whole machine was busy during it (every process: registry, Prefect
server, runner, builder; on 2 cores a call that keeps both busy waits on CPU, not on I/O).

Peak RSS is each process's VmHWM: the accelctl client, the local runner (it runs every conversion: this is
the one-time path's memory; Nydus' builder is a child process, counted apart by the kernel), the local
Prefect server (shared by every call, like dockerd), acceld's runner in service mode is not counted.
Prints figures only; nothing here passes or fails on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from accel import publish  # noqa: E402
from accel.reference import Reference  # noqa: E402
from accel.registry import HostConfig, RegistryClient  # noqa: E402
from accel.store import ContentStore  # noqa: E402
from bench.images import describe, source_image  # noqa: E402
from service import local  # noqa: E402
from tests.harness import imagegen, pushing  # noqa: E402
from tests.harness.registry import anonymous_registry, free_port  # noqa: E402

MB = 1 << 20
WEBHOOK_SECRET = "Bearer bench-secret"


def _config(path: Path, registry: str, driver: str, work: Path, port: int = 2077) -> Path:
    settings = {
        "server": {"host": "127.0.0.1", "port": port},
        "metric": {"enabled": False},
        "provider": {
            "source": {registry: {"webhook": {"auth_header": WEBHOOK_SECRET}}},
            "work_dir": str(work),
        },
        "converter": {"worker": 2, "drivers": [{"type": driver}], "rules": [{"cache_tag": "bench-cache"}]},
    }
    path.write_text(yaml.safe_dump(settings))
    return path


def _peak_rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _busy_cpu_seconds() -> float:
    """CPU time the whole machine spent busy so far (every process: registry, server, runner, builder)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _process_cpu_seconds(pid: int | None) -> float:
    """CPU time of one process and its waited-for children (a runner's builder processes), 0 if gone."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


CPU_SECONDS: list[float] = []  # machine CPU-s busy during each accelctl or peer call
CLIENT_RSS: list[float] = []  # peak RSS of each accelctl call, MiB
BREAKDOWNS: list[dict[str, float]] = []  # stage → seconds of each accelctl call


TIMINGS_PREFIX = "accelctl: timings "


def _breakdown(started: float, ended: float, stderr: str) -> dict[str, float]:
    """Stage → seconds of one `accelctl convert --timings` call (wall-clock stamps from client and runner)."""
    lines = [line for line in stderr.splitlines() if line.startswith(TIMINGS_PREFIX)]
    if not lines:
        return {}
    t = json.loads(lines[-1].removeprefix(TIMINGS_PREFIX))
    stages = {k: float(v) for k, v in t.get("stages", {}).items()}
    flow_wall = t["finished"] - t["started"]
    return {
        "client start → request sent": t["sent"] - started,
        "runner: request checked": t["checked"] - t["received"],
        "runner: waiting for its turn": t["started"] - t["checked"],
        **{f"flow: {k}": v for k, v in stages.items()},
        "flow engine (run + task bookkeeping, artifacts, finish)": flow_wall - sum(stages.values()),
        "answer → client exit": ended - t["finished"],
    }


def _task_timeline(api_url: str) -> list[str]:
    """The latest flow run's task runs as `start–end name` lines, seconds from the flow run's start: which
    stages overlap and where the gaps are."""
    flow_runs = httpx.post(
        f"{api_url}/flow_runs/filter", json={"sort": "START_TIME_DESC", "limit": 1}, timeout=30
    ).json()
    if not flow_runs or not flow_runs[0].get("start_time"):
        return []
    run = flow_runs[0]
    tasks = httpx.post(
        f"{api_url}/task_runs/filter",
        json={"flow_runs": {"id": {"any_": [run["id"]]}}, "sort": "EXPECTED_START_TIME_ASC", "limit": 200},
        timeout=30,
    ).json()

    def seconds(stamp: str | None) -> float:
        return datetime.fromisoformat(stamp).timestamp() if stamp else float("nan")

    origin = seconds(run["start_time"])
    lines = [
        f"{seconds(t.get('start_time')) - origin:6.2f} – {seconds(t.get('end_time')) - origin:6.2f} s"
        f"  {t['name']}"
        for t in tasks
    ]
    lines.append(f"{0:6.2f} – {seconds(run.get('end_time')) - origin:6.2f} s  (flow run {run['name']})")
    return lines


def _print_breakdown(rows: list[dict[str, float]]) -> None:
    names = list(dict.fromkeys(k for row in rows for k in row))
    for name in names:
        values = [row[name] for row in rows if name in row]
        print(f"      {name:<56} {statistics.median(values):6.2f} s")


def _accelctl(env: dict[str, str], *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    # /usr/bin/time reports the client's own peak: a child forked from this (big) process would count the
    # pages it shared before exec.
    with tempfile.NamedTemporaryFile() as rss:
        started, wall_started, busy = time.perf_counter(), time.time(), _busy_cpu_seconds()
        proc = subprocess.run(
            ["/usr/bin/time", "-o", rss.name, "-f", "%M", sys.executable, "-m", "service.accelctl", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        CPU_SECONDS.append(_busy_cpu_seconds() - busy)
        BREAKDOWNS.append(_breakdown(wall_started, time.time(), proc.stderr))
        with open(rss.name) as f:
            kib = f.read().split()
        if kib and kib[-1].isdigit():
            CLIENT_RSS.append(int(kib[-1]) / 1024)
    if proc.returncode != 0:
        raise SystemExit(f"accelctl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, proc


# The Go service writes zstd:chunked through its estargz driver (as E's /work/peer configs do).
PEER_DRIVERS: dict[str, dict[str, object]] = {
    "estargz": {"type": "estargz", "config": {"docker2oci": True}},
    "zstdchunked": {"type": "estargz", "config": {"docker2oci": True, "compression": "zstdchunked"}},
}


def _peer(peer_bin: Path, registry: str, source: str, driver: str, work: Path) -> float | None:
    """The Go peer's one-time `accelctl convert`, when E built it; None when it is not there. `work` is
    this call's own directory: nothing from an earlier call is reused."""
    accelctl = peer_bin / "accelctl"
    if not accelctl.exists():
        return None
    work.mkdir(parents=True, exist_ok=True)
    config = work / "peer.yaml"
    settings = {
        "server": {"name": "API", "host": "127.0.0.1", "port": free_port()},
        "metric": {"enabled": False},
        "provider": {
            "source": {registry: {"auth": "", "insecure": True, "webhook": {"auth_header": "x"}}},
            "work_dir": str(work / "peer-work"),
            "gcpolicy": {"threshold": "1000MB"},
        },
        "converter": {
            "worker": 2,
            "driver": PEER_DRIVERS.get(driver, {"type": driver, "config": {}}),
            "rules": [{"tag_suffix": "-peer"}],
        },
    }
    config.write_text(yaml.safe_dump(settings))
    started, busy = time.perf_counter(), _busy_cpu_seconds()
    # Its Nydus driver runs `nydus-image` from PATH: the same 2.2.0 build as ours.
    path = os.pathsep.join([str(ROOT / ".tools/bin"), os.environ.get("PATH", "")])
    proc = subprocess.run(
        [str(accelctl), "convert", "--config", str(config), source],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": path},
    )
    wall = time.perf_counter() - started
    CPU_SECONDS.append(_busy_cpu_seconds() - busy)
    if proc.returncode != 0:
        print(f"  peer failed ({proc.returncode}): {proc.stderr[-500:]}")
        return None
    return wall


def _service(
    env: dict[str, str],
    registry: str,
    sources: tuple[Reference, Reference],
    driver: str,
    work: Path,
    *acceld_args: str,
) -> dict[str, float]:
    """acceld's webhook → target pushed for `sources[1]`, after an untimed one for `sources[0]` (another
    image): acceld runs for days, so the figure is its steady state (its runner and warm flow-run starter
    up), for an image it has not converted."""
    warmup, source = sources
    port = free_port()
    name = f"acceld-{source.repository.rsplit('/', 1)[-1]}"
    config = _config(work / f"{name}.yaml", registry, driver, work / f"work-{name}", port)
    info = local.running_server()
    assert info is not None, "the local server should be up after the one-time calls"
    acceld_env = {**env, "PREFECT_API_URL": info.api_url, "PREFECT_HOME": str(work / "acceld-home")}
    log = (work / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.acceld", "--config", str(config), *acceld_args],
        env=acceld_env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        with RegistryClient({registry: HostConfig()}) as client:
            _webhook_to_pushed(url, client, warmup, driver)
            pushed, task_id = _webhook_to_pushed(url, client, source, driver)
        task: dict[str, object] = {}
        for _ in range(100):
            task = httpx.get(
                f"{url}/api/v1/conversions/{task_id}", headers={"Authorization": WEBHOOK_SECRET}, timeout=30
            ).json()
            if task.get("status") in ("COMPLETED", "FAILED"):
                break
            time.sleep(0.2)
        return {"webhook→pushed": pushed, "task": task}  # type: ignore[dict-item]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def _webhook_to_pushed(url: str, client: RegistryClient, source: Reference, driver: str) -> tuple[float, str]:
    """Seconds from the webhook's answer to the target tag in the registry, and the task's id."""
    target = Reference.parse(f"{source.name}:{source.tag}-{driver}")
    payload = {
        "type": "PUSH_ARTIFACT",
        "occur_at": int(time.time()),
        "operator": "bench",
        "event_data": {"resources": [{"resource_url": str(source), "tag": source.tag}]},
    }
    resp = httpx.post(
        f"{url}/api/v1/conversions", json=payload, headers={"Authorization": WEBHOOK_SECRET}, timeout=60
    )
    accepted = time.perf_counter()
    resp.raise_for_status()
    task_id = str(resp.json()["tasks"][0]["id"])
    while True:
        try:
            client.resolve(target)
            return time.perf_counter() - accepted, task_id
        except Exception:
            if time.perf_counter() - accepted > 600:
                raise SystemExit("service: the target never appeared") from None
            time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=200, help="generated image size in MiB (without --tar)")
    parser.add_argument("--tar", action="append", default=[], help="an uncompressed layer tar (repeatable)")
    parser.add_argument("--driver", default="nydus")
    parser.add_argument("--rounds", type=int, default=3, help="cold calls, each paired with a peer call")
    parser.add_argument("--no-service", dest="service", action="store_false", help="skip the webhook figure")
    parser.add_argument("--peer", type=Path, default=Path("/work/peer/bin"), help="the Go peer's bin dir")
    parser.add_argument("-v", "--verbose", action="store_true", help="print accelctl's progress lines")
    parser.add_argument(
        "--timeline", action="store_true", help="print the last cold call's task runs on a time line"
    )
    parser.add_argument("--keep", action="store_true", help="leave the local server running (its state dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="accel-oneshot-") as tmp:
        work = Path(tmp)
        store = ContentStore(work / "source")
        built = source_image(store, args.mb, args.tar)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env["ACCEL_STATE_DIR"] = str(work / "state")
        os.environ["ACCEL_STATE_DIR"] = env["ACCEL_STATE_DIR"]  # where `service.local` finds them
        env["PATH"] = os.pathsep.join(
            [str(ROOT / ".tools/bin"), str(Path(sys.executable).parent), env["PATH"]]
        )
        rows: dict[str, float | None] = {}
        with anonymous_registry(work / "registry") as registry:
            names = ["first", *(f"cold-{n}" for n in range(args.rounds))]
            names += [*(f"peer-{n}" for n in range(args.rounds)), "serve", "in-process"]
            # acceld's untimed first webhook converts another, small image: with the same layers, Prefect's
            # task cache and the content store would answer the timed conversion.
            warmups = ["serve-warmup", "in-process-warmup"]
            sources = {
                name: Reference.parse(f"{registry.host}/bench/oneshot-{name}:v1") for name in names + warmups
            }
            warmup_image = imagegen.big_image(store, total_bytes=MB, seed=25, layer_count=1)
            with RegistryClient({registry.host: HostConfig()}) as client:
                pushing.push(client, store, sources["first"], built)
                for name in names[1:]:  # the same blobs, mounted: each repository is a cold source
                    publish.push_image(
                        client, sources[name], pushing.as_built(built), store, [sources["first"].repository]
                    )
                for name in warmups:
                    pushing.push(client, store, sources[name], warmup_image)
            print(f"image: {len(built.layers)} layers, {sum(x.size for x in built.layers) / MB:.1f} MiB gzip")

            def process_cpu() -> dict[str, float]:
                info = local.server_info()
                registry_proc = getattr(registry, "_proc", None)
                pids = {
                    "runner+builder": local.runner_pid(),
                    "prefect server": info.pid if info else None,
                    "registry": registry_proc.pid if registry_proc else None,
                }
                return {name: _process_cpu_seconds(pid) for name, pid in pids.items()}

            def convert(name: str, ref: Reference, work_name: str) -> float:
                config = _config(work / f"{work_name}.yaml", registry.host, args.driver, work / work_name)
                before = process_cpu()
                wall, proc = _accelctl(env, "convert", "--timings", "--config", str(config), str(ref))
                used = {k: v - before.get(k, 0.0) for k, v in process_cpu().items()}
                print(f"  {name:<28} {wall:7.2f} s  {CPU_SECONDS[-1]:5.2f} CPU-s   {proc.stdout.strip()}")
                print("      CPU-s by process: " + ", ".join(f"{k} {v:.2f}" for k, v in used.items()))
                if args.verbose:
                    print("    " + proc.stderr.replace("\n", "\n    "))
                return wall

            cold: list[float] = []
            peer: list[float] = []
            cold_breakdowns: list[dict[str, float]] = []
            timeline: list[str] = []
            try:
                rows["one-time first call (starts server)"] = convert("first call", sources["first"], "w1")
                load_before = os.getloadavg()[0]
                for n in range(args.rounds):
                    cold.append(convert(f"cold call {n + 1}", sources[f"cold-{n}"], f"cold-{n}"))
                    cold_breakdowns.append(BREAKDOWNS[-1])
                    if args.timeline and n == args.rounds - 1:
                        info = local.running_server()
                        timeline = _task_timeline(info.api_url) if info else []
                    wall = _peer(
                        args.peer, registry.host, str(sources[f"peer-{n}"]), args.driver, work / f"peer-{n}"
                    )
                    if wall is not None:
                        peer.append(wall)
                        label = f"peer cold call {n + 1}"
                        print(f"  {label:<28} {wall:7.2f} s  {CPU_SECONDS[-1]:5.2f} CPU-s")
                load_after = os.getloadavg()[0]
                rows["one-time warm (all cached)"] = convert("warm (cache answers)", sources["first"], "w3")
                warm_breakdown = BREAKDOWNS[-1]
                client_rss = max(CLIENT_RSS)
                rows[f"one-time cold, median of {len(cold)}"] = statistics.median(cold) if cold else None
                rows[f"peer one-time cold, median of {len(peer)}"] = statistics.median(peer) if peer else None
                if cold and peer:
                    ratio = statistics.median(cold) / statistics.median(peer)
                    rows["ratio accel / peer (goal ≤ 1.25)"] = ratio
                runner_rss = _peak_rss_mib(local.runner_pid())
                info = local.server_info()
                server_rss = _peak_rss_mib(info.pid if info else None)
                if args.service:
                    for label, name, extra in (
                        ("service webhook→pushed (serve)", "serve", ()),
                        ("service webhook→pushed (in-process runs)", "in-process", ("--in-process-runs",)),
                    ):
                        pair = (sources[f"{name}-warmup"], sources[name])
                        service = _service(env, registry.host, pair, args.driver, work, *extra)
                        rows[label] = service["webhook→pushed"]  # type: ignore[assignment]
                        print(f"  {label}: task {json.dumps(service['task'])[:400]}")
            finally:
                if not args.keep:
                    _accelctl(env, "server", "stop")

        print(f"\n{describe(args.mb, args.tar)}, driver {args.driver}")
        print(f"  load average (1 min) {load_before:.2f} before the cold rounds, {load_after:.2f} after")
        if cold and args.service:
            # Issue 25's service goal: webhook → pushed within the same image's one-time cold wall + 1 s.
            rows["service goal: one-time cold + 1 s"] = statistics.median(cold) + 1
        for name, value in rows.items():
            unit = "" if name.startswith("ratio") else " s"
            print(f"  {name:<40} {'n/a' if value is None else f'{value:7.2f}{unit}'}")
        if cold_breakdowns:
            print(f"  where a cold call's time goes (median of {len(cold_breakdowns)}):")
            _print_breakdown(cold_breakdowns)
        if args.timeline and timeline:
            print("  the last cold call's task runs, from the flow run's start:")
            print("\n".join(f"      {line}" for line in timeline))
        if warm_breakdown:
            print("  where the warm call's time goes:")
            _print_breakdown([warm_breakdown])
        print(f"  {'peak RSS accelctl client':<40} {client_rss:7.1f} MiB")
        print(f"  {'peak RSS local runner (the conversions)':<40} {runner_rss or 0:7.1f} MiB")
        print(f"  {'peak RSS local Prefect server':<40} {server_rss or 0:7.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
