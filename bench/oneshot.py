"""One-time and service latency: what a user waits for, end to end, for one image and one driver.

    .venv/bin/python bench/oneshot.py [--mb 200] [--driver nydus] [--no-service] [--peer /work/peer/bin]

Starts a real docker-registry on loopback, pushes a generated image (the same blobs under three
repositories, so each cold call has no conversion cache), and runs `accelctl convert` as a user would, with a
private state dir (ACCEL_STATE_DIR) and no PREFECT_API_URL:

- first call: nothing running; it starts the local Prefect server and the warm runner;
- second call: cold conversion (new repository, fresh work dir), server and runner already up;
- warm call: the first repository again with a fresh work dir: every layer answered by the remote cache;
- service: acceld (API + runner) against the same local Prefect server; a Harbor webhook for a fourth
  repository, timed from the webhook's 200 to the target tag appearing in the registry.

Peak RSS is each process's VmHWM (the accelctl client, the runner, the Prefect server, acceld's runner).
Prints figures only; nothing here passes or fails on speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from accel.reference import Reference  # noqa: E402
from accel.registry import HostConfig, RegistryClient  # noqa: E402
from accel.store import ContentStore  # noqa: E402
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


CLIENT_RSS: list[float] = []  # peak RSS of each accelctl call, MiB


def _accelctl(env: dict[str, str], *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    # /usr/bin/time reports the client's own peak: a child forked from this (big) process would count the
    # pages it shared before exec.
    with tempfile.NamedTemporaryFile() as rss:
        started = time.perf_counter()
        proc = subprocess.run(
            ["/usr/bin/time", "-o", rss.name, "-f", "%M", sys.executable, "-m", "service.accelctl", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
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
    """The Go peer's one-time `accelctl convert`, when E built it; None when it is not there."""
    accelctl = peer_bin / "accelctl"
    if not accelctl.exists():
        return None
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
    started = time.perf_counter()
    proc = subprocess.run(
        [str(accelctl), "convert", "--config", str(config), source], capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        print(f"  peer failed ({proc.returncode}): {proc.stderr[-500:]}")
        return None
    return wall


def _service(
    env: dict[str, str], registry: str, source: Reference, driver: str, work: Path, *acceld_args: str
) -> dict[str, float]:
    from service import local

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
        time.sleep(3)  # let the runner child register its deployments and start polling
        target = Reference.parse(f"{source.name}:{source.tag}-{driver}")
        payload = {
            "type": "PUSH_ARTIFACT",
            "occur_at": int(time.time()),
            "operator": "bench",
            "event_data": {"resources": [{"resource_url": str(source), "tag": source.tag}]},
        }
        with RegistryClient({registry: HostConfig()}) as client:
            resp = httpx.post(
                f"{url}/api/v1/conversions",
                json=payload,
                headers={"Authorization": WEBHOOK_SECRET},
                timeout=60,
            )
            accepted = time.perf_counter()
            resp.raise_for_status()
            task_id = resp.json()["tasks"][0]["id"]
            while True:
                try:
                    client.resolve(target)
                    break
                except Exception:
                    if time.perf_counter() - accepted > 600:
                        raise SystemExit("service: the target never appeared") from None
                    time.sleep(0.05)
            pushed = time.perf_counter() - accepted
        task: dict[str, object] = {}
        for _ in range(100):
            task = httpx.get(f"{url}/api/v1/conversions/{task_id}", timeout=30).json()
            if task.get("status") in ("COMPLETED", "FAILED"):
                break
            time.sleep(0.2)
        return {"webhook→pushed": pushed, "task": task}  # type: ignore[dict-item]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=200, help="uncompressed image size in MiB")
    parser.add_argument("--driver", default="nydus")
    parser.add_argument("--no-service", dest="service", action="store_false", help="skip the webhook figure")
    parser.add_argument("--peer", type=Path, default=Path("/work/peer/bin"), help="the Go peer's bin dir")
    parser.add_argument("-v", "--verbose", action="store_true", help="print accelctl's progress lines")
    parser.add_argument("--keep", action="store_true", help="leave the local server running (its state dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="accel-oneshot-") as tmp:
        work = Path(tmp)
        store = ContentStore(work / "source")
        built = imagegen.big_image(store, total_bytes=args.mb * MB)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env["ACCEL_STATE_DIR"] = str(work / "state")
        env["PATH"] = os.pathsep.join(
            [str(ROOT / ".tools/bin"), str(Path(sys.executable).parent), env["PATH"]]
        )
        rows: dict[str, float | None] = {}
        with anonymous_registry(work / "registry") as registry:
            sources = [Reference.parse(f"{registry.host}/bench/oneshot-{n}:v1") for n in "abcde"]
            with RegistryClient({registry.host: HostConfig()}) as client:
                for ref in sources:
                    pushing.push(client, store, ref, built)
            print(f"image: {len(built.layers)} layers, {sum(x.size for x in built.layers) / MB:.1f} MiB gzip")

            def convert(name: str, ref: Reference, work_name: str) -> float:
                config = _config(work / f"{work_name}.yaml", registry.host, args.driver, work / work_name)
                wall, proc = _accelctl(env, "convert", "--config", str(config), str(ref))
                print(f"  {name:<28} {wall:7.2f} s   {proc.stdout.strip()}")
                if args.verbose:
                    print("    " + proc.stderr.replace("\n", "\n    "))
                return wall

            try:
                rows["one-time first call (starts server)"] = convert("first call", sources[0], "w1")
                rows["one-time second call, cold"] = convert("second call (cold)", sources[1], "w2")
                rows["one-time warm (all cached)"] = convert("warm (cache answers)", sources[0], "w3")
                client_rss = max(CLIENT_RSS)
                rows["peer one-time cold"] = _peer(
                    args.peer, registry.host, str(sources[2]), args.driver, work
                )
                sys.path.insert(0, str(ROOT))
                os.environ["ACCEL_STATE_DIR"] = env["ACCEL_STATE_DIR"]
                from service import local

                runner_rss = _peak_rss_mib(local.runner_pid())
                info = local.server_info()
                server_rss = _peak_rss_mib(info.pid if info else None)
                if args.service:
                    for label, source, extra in (
                        ("service webhook→pushed (serve)", sources[3], ()),
                        ("service webhook→pushed (in-process runs)", sources[4], ("--in-process-runs",)),
                    ):
                        service = _service(env, registry.host, source, args.driver, work, *extra)
                        rows[label] = service["webhook→pushed"]  # type: ignore[assignment]
                        print(f"  {label}: task {json.dumps(service['task'])[:400]}")
            finally:
                if not args.keep:
                    _accelctl(env, "server", "stop")

        print(f"\n{args.mb} MiB generated image, driver {args.driver}")
        for name, value in rows.items():
            print(f"  {name:<40} {'n/a' if value is None else f'{value:7.2f} s'}")
        print(f"  {'peak RSS accelctl client':<40} {client_rss:7.1f} MiB")
        print(f"  {'peak RSS local runner (the conversions)':<40} {runner_rss or 0:7.1f} MiB")
        print(f"  {'peak RSS local Prefect server':<40} {server_rss or 0:7.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
