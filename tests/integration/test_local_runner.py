"""One-time mode without PREFECT_API_URL: `accelctl convert` starts the local Prefect server and the warm
runner once, later calls reuse both, a dead runner is replaced, and `accelctl server stop` ends them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from accel.reference import Reference
from accel.registry import HostConfig, RegistryClient
from accel.store import ContentStore
from tests.harness import configs, imagegen, pushing
from tests.harness.api import wait_until

pytestmark = [pytest.mark.runtime, pytest.mark.registry, pytest.mark.prefect]  # a local server and runner

REPO = Path(__file__).resolve().parents[2]
STARTED_SERVER = "started the local Prefect server"
STARTED_RUNNER = "started the local runner"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["ACCEL_STATE_DIR"] = str(tmp_path / "state")
    yield env
    subprocess.run(
        [sys.executable, "-m", "service.accelctl", "server", "stop"], cwd=REPO, env=env, timeout=120
    )


def _accelctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.accelctl", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _status(env: dict[str, str]) -> dict:
    return json.loads(_accelctl(env, "server", "status", "--json").stdout)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_convert_reuses_the_local_server_and_runner(registry, tmp_path, env):
    store = ContentStore(tmp_path / "source")
    image = imagegen.standard_image(store, big_file_size=1024)
    sources = [Reference.parse(f"{registry.host}/local/cli-{n}:v1") for n in ("a", "b", "c", "d")]
    with RegistryClient({registry.host: HostConfig()}) as client:
        for ref in sources:
            pushing.push(client, store, ref, image)
        config = configs.write_config(
            tmp_path / "config.yaml", {registry.host: {}}, [configs.driver("zstdchunked")]
        )

        first = _accelctl(env, "convert", "-v", "--config", str(config), str(sources[0]))
        assert first.returncode == 0, first.stderr
        assert STARTED_SERVER in first.stderr and STARTED_RUNNER in first.stderr
        # Logs streamed from the runner: each layer's conversion (in its batch's task run) ended.
        for layer in image.layers:
            finished = rf"Task run 'convert [^']*{layer.digest[:19]}[^']* \(zstdchunked\)' - Finished in"
            assert re.search(finished, first.stderr), first.stderr
        [(driver, target, digest)] = [line.split("\t") for line in first.stdout.splitlines()]
        assert (driver, target) == ("zstdchunked", f"{sources[0].name}:v1-zstdchunked")
        assert client.resolve(Reference.parse(target)).digest == digest
        up = _status(env)
        assert up["server"]["healthy"] and up["runner"] is not None

        second = _accelctl(env, "convert", "--timings", "--config", str(config), str(sources[1]))
        assert second.returncode == 0, second.stderr
        assert STARTED_SERVER not in second.stderr and STARTED_RUNNER not in second.stderr
        assert _status(env) == up  # the same processes answered
        [timings] = [line for line in second.stderr.splitlines() if line.startswith("accelctl: timings ")]
        stamps = json.loads(timings.removeprefix("accelctl: timings "))
        assert stamps["sent"] <= stamps["received"] <= stamps["started"] <= stamps["finished"]
        assert "pull+convert" in stamps["stages"]

        # With the runner up, the runner checks the request (the client does not): bad input still fails
        # before any flow run, with the same message, and the runner stays.
        bad = _accelctl(env, "convert", "--config", str(config), "--driver", "estargz", str(sources[1]))
        assert bad.returncode == 2  # ExitCode.USAGE
        assert f"accelctl: conversion of {sources[1]} failed:" in bad.stderr
        assert "driver 'estargz' is not configured" in bad.stderr
        assert "Beginning flow run" not in bad.stderr
        assert _status(env) == up
        assert client.resolve(Reference.parse(f"{sources[1].name}:v1-zstdchunked"))

        # --target reaches the runner: the converted image lands in an OCI layout, as named, a relative path
        # meaning the caller's directory (the runner works in another).
        layout = tmp_path / "layout"
        relative = os.path.relpath(layout, REPO)
        local = _accelctl(
            env, "convert", "--config", str(config), "--target", f"oci:{relative}:z", str(sources[1])
        )
        assert local.returncode == 0, local.stderr
        [(_, _, written_digest)] = [line.split("\t") for line in local.stdout.splitlines()]
        index = json.loads((layout / "index.json").read_text())
        assert [
            (m["digest"], m["annotations"]["org.opencontainers.image.ref.name"]) for m in index["manifests"]
        ] == [(written_digest, "z")]

        failed = _accelctl(env, "convert", "--config", str(config), f"{registry.host}/local/nope:v1")
        assert failed.returncode == 4  # ExitCode.NOT_FOUND
        assert f"accelctl: conversion of {registry.host}/local/nope:v1 failed:" in failed.stderr
        assert _status(env) == up  # a failed conversion does not take the runner down

        # A runner that died (its socket file left behind) is replaced; the server is not restarted.
        os.kill(up["runner"]["pid"], signal.SIGKILL)
        wait_until(lambda: not _alive(up["runner"]["pid"]), 30, "the runner to die")
        third = _accelctl(env, "convert", "--config", str(config), str(sources[2]))
        assert third.returncode == 0, third.stderr
        assert STARTED_RUNNER in third.stderr and STARTED_SERVER not in third.stderr
        replaced = _status(env)
        assert replaced["server"] == up["server"] and replaced["runner"]["pid"] != up["runner"]["pid"]

        # A server that died leaves a stale record (pid, port): the next call starts a new server, and a new
        # runner, since the live one talks to the dead server's port.
        os.kill(up["server"]["pid"], signal.SIGKILL)
        wait_until(lambda: not _alive(up["server"]["pid"]), 30, "the server to die")
        fourth = _accelctl(env, "convert", "--config", str(config), str(sources[3]))
        assert fourth.returncode == 0, fourth.stderr
        assert STARTED_SERVER in fourth.stderr and STARTED_RUNNER in fourth.stderr
        after = _status(env)
        assert after["server"]["pid"] != up["server"]["pid"] and after["server"]["healthy"]
        assert after["runner"]["pid"] != replaced["runner"]["pid"]
        assert not _alive(replaced["runner"]["pid"])

    stopped = _accelctl(env, "server", "stop")
    assert stopped.returncode == 0
    assert "runner" in stopped.stdout and "Prefect server" in stopped.stdout
    assert not _alive(after["server"]["pid"]) and not _alive(after["runner"]["pid"])
    down = _accelctl(env, "server", "status")
    assert down.returncode == 3 and "Prefect server: not running" in down.stdout
