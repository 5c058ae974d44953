"""The fixed cost of one conversion: Prefect API requests, CPU-seconds of the run's process and of the Prefect
server, for a small image converted by the flow directly (in this process, against the local server).

    .venv/bin/python bench/fixedcost.py [--mb 5] [--layers 3] [--driver estargz] [--rounds 3] [--runner]
                                        [--profile FILE]

Starts a loopback registry and the local Prefect server (a private ACCEL_STATE_DIR), pushes the image once per
round into a fresh repository (each round a cold conversion), runs one warm-up conversion, then `--rounds`
measured ones. Counts every HTTP request the process sends to the Prefect API (method + path, ids folded)
and every event sent over the events websocket (by event name). Prints figures only. `--runner` converts
through the warm local runner's `Runner.convert` (its settings: no heartbeats), as `accelctl convert` does;
`--profile FILE` writes a cProfile of the measured rounds (`python -m pstats FILE`).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from accel import publish  # noqa: E402
from accel.reference import Reference  # noqa: E402
from accel.registry import HostConfig, RegistryClient  # noqa: E402
from accel.store import ContentStore  # noqa: E402
from tests.harness import imagegen, pushing  # noqa: E402
from tests.harness.registry import anonymous_registry  # noqa: E402

MB = 1 << 20
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
requests: collections.Counter[str] = collections.Counter()
events: collections.Counter[str] = collections.Counter()


def _count_requests() -> None:
    import httpx

    original = httpx.AsyncClient.send

    async def send(self, request, *args, **kwargs):  # type: ignore[no-untyped-def]
        requests[f"{request.method} {_ID.sub('{id}', request.url.path)}"] += 1
        return await original(self, request, *args, **kwargs)

    httpx.AsyncClient.send = send  # type: ignore[method-assign]
    original_sync = httpx.Client.send

    def send_sync(self, request, *args, **kwargs):  # type: ignore[no-untyped-def]
        if "/api/" in request.url.path:
            requests[f"{request.method} {_ID.sub('{id}', request.url.path)}"] += 1
        return original_sync(self, request, *args, **kwargs)

    httpx.Client.send = send_sync  # type: ignore[method-assign]

    from prefect.events.clients import PrefectEventsClient

    original_emit = PrefectEventsClient._emit

    async def emit(self, event):  # type: ignore[no-untyped-def]
        events[event.event] += 1
        return await original_emit(self, event)

    PrefectEventsClient._emit = emit  # type: ignore[method-assign]


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=5)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--driver", default="estargz")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--acceld-env",
        action="store_true",
        help="as acceld runs flows: PREFECT_RESULTS_PERSIST_BY_DEFAULT=true",
    )
    parser.add_argument("--runner", action="store_true", help="through service.localrunner.Runner.convert")
    parser.add_argument("--profile", help="write a cProfile of the measured rounds to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="accel-fixedcost-") as tmp:
        work = Path(tmp)
        os.environ["ACCEL_STATE_DIR"] = str(work / "state")
        for name in [k for k in os.environ if k.startswith("PREFECT_")]:
            del os.environ[name]
        from service import local

        info, _ = local.ensure_server()
        os.environ["PREFECT_API_URL"] = info.api_url
        os.environ["PREFECT_HOME"] = str(work / "home")
        if args.acceld_env:
            os.environ["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] = "true"
        store = ContentStore(work / "source")
        built = imagegen.big_image(store, total_bytes=args.mb * MB, layer_count=args.layers)
        with anonymous_registry(work / "registry") as registry:
            names = [f"r{n}" for n in range(args.rounds + 1)]
            refs = {n: Reference.parse(f"{registry.host}/bench/fixed-{n}:v1") for n in names}
            with RegistryClient({registry.host: HostConfig()}) as client:
                pushing.push(client, store, refs[names[0]], built)
                for n in names[1:]:
                    publish.push_image(
                        client, refs[n], pushing.as_built(built), store, [refs[names[0]].repository]
                    )
            _count_requests()
            from flows.convert_image import convert_image

            runner = None
            if args.runner:
                from service.localrunner import Runner

                runner = Runner()
            profile = None
            if args.profile:
                import cProfile

                profile = cProfile.Profile()
            rows = []
            for n in names:
                config = work / f"{n}.yaml"
                config.write_text(
                    yaml.safe_dump(
                        {
                            "metric": {"enabled": False},
                            "provider": {"source": {registry.host: {}}, "work_dir": str(work / f"w-{n}")},
                            "converter": {"drivers": [{"type": args.driver}], "rules": [{"cache_tag": "c"}]},
                        }
                    )
                )
                requests.clear()
                events.clear()
                server0, self0, wall0 = _cpu(info.pid), _self_cpu(), time.monotonic()
                measured = profile is not None and n != names[0]
                if measured:
                    profile.enable()
                if runner is not None:
                    answers: list[dict[str, object]] = []
                    runner.convert({"source": str(refs[n]), "config": str(config)}, answers.append)
                    exit_code = answers[-1].get("exit")
                    state_name = "COMPLETED" if exit_code == 0 else f"exit {exit_code}: {answers[-1]}"
                else:
                    state_name = convert_image(
                        source=str(refs[n]), config=str(config), return_state=True
                    ).name
                if measured:
                    profile.disable()
                wall = time.monotonic() - wall0
                time.sleep(2.0)  # the server's event pipeline records what the run sent
                row = {
                    "state": state_name,
                    "wall": wall,
                    "run cpu": _self_cpu() - self0,
                    "server cpu": _cpu(info.pid) - server0,
                    "requests": sum(requests.values()),
                    "events": sum(events.values()),
                }
                print(n, {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
                if n != names[0]:
                    rows.append(row)
            print("request kinds (last round):")
            for key, count in requests.most_common():
                print(f"  {count:4d} {key}")
            print("events (last round):")
            for key, count in events.most_common():
                print(f"  {count:4d} {key}")
            for key in ("wall", "run cpu", "server cpu", "requests", "events"):
                print(f"median {key}: {statistics.median(r[key] for r in rows):.2f}")
            print(f"load: {os.getloadavg()[0]:.2f}")
            if profile is not None:
                profile.dump_stats(args.profile)
        local.stop()


if __name__ == "__main__":
    main()
