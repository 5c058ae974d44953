"""Live progress (issue 24, Output): `accelctl convert` of a 200 MiB image on a terminal shows its per-layer
display, redrawn at least every 2 s from the first line to the end, with the run's own byte counts moving;
in a pipe only the result lines; and the run's Prefect progress artifact reaches 100 %."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from accel.reference import Reference
from accel.registry import HostConfig, RegistryClient
from accel.store import ContentStore
from tests.harness import configs, imagegen, pushing

pytestmark = [pytest.mark.runtime, pytest.mark.registry, pytest.mark.prefect]  # a local server and runner

REPO = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PERCENT = re.compile(r": (\d+\.\d) % \(\d+:\d\d\)")


@dataclass
class Local:
    env: dict[str, str]
    config: Path
    registry: str
    store: ContentStore

    def command(self, source: str) -> list[str]:
        return [sys.executable, "-m", "service.accelctl", "convert", "--config", str(self.config), source]

    def push(self, name: str, layers: list[imagegen.TarBuilder]) -> str:
        ref = Reference.parse(f"{self.registry}/progress/{name}:v1")
        with RegistryClient({self.registry: HostConfig()}) as client:
            pushing.push(client, self.store, ref, imagegen.generate_image(layers, self.store))
        return str(ref)


@pytest.fixture(scope="module")
def local(registry, tmp_path_factory) -> Iterator[Local]:
    tmp = tmp_path_factory.mktemp("progress")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ACCEL_"))}
    env["ACCEL_STATE_DIR"] = str(tmp / "state")
    config = configs.write_config(tmp / "config.yaml", {registry.host: {}}, [configs.driver("zstdchunked")])
    world = Local(env, config, registry.host, ContentStore(tmp / "source"))
    yield world
    subprocess.run(
        [sys.executable, "-m", "service.accelctl", "server", "stop"], cwd=REPO, env=env, timeout=120
    )


def _on_a_terminal(
    command: list[str], env: dict[str, str]
) -> tuple[float, float, list[tuple[float, str]], bytes, str, int]:
    """Run `command` with stderr on a pseudo-terminal (120 columns) and stdout in a pipe: when it started and
    ended, each chunk the terminal got (when, text without escape sequences), all of it raw, stdout, exit."""
    terminal, stderr = pty.openpty()
    fcntl.ioctl(stderr, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # rows, columns
    launched = time.monotonic()
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    os.close(stderr)
    chunks: list[tuple[float, str]] = []
    raw = b""
    while True:
        try:
            data = os.read(terminal, 65536)
        except OSError:  # the other end closed: the command exited
            break
        if not data:
            break
        raw += data
        chunks.append((time.monotonic(), ANSI.sub("", data.decode(errors="replace"))))
    out = proc.communicate(timeout=600)[0]
    ended = time.monotonic()
    os.close(terminal)
    return launched, ended, chunks, raw, out, proc.returncode


def _erased_at_the_end(raw: bytes) -> bool:
    """The display is gone when the command ends: after its last line only escape sequences, which erase
    its lines (cursor up, erase line) and show the cursor again."""
    tail = raw.rsplit(b"\r\n", 1)[-1]
    return re.fullmatch(rb"(?:\x1b\[[0-9;?]*[A-Za-z]|\r)+", tail) is not None and b"\x1b[2K" in tail


def _server_status(local: Local) -> dict:
    command = [sys.executable, "-m", "service.accelctl", "server", "status", "--json"]
    done = subprocess.run(command, cwd=REPO, env=local.env, capture_output=True, text=True, timeout=60)
    return yaml.safe_load(done.stdout)


def test_a_pipe_gets_only_the_result_lines(local):
    """Also starts the local server and runner (their two lines) for the terminal test."""
    layers = []
    for n in range(3):
        layer = imagegen.TarBuilder(auto_parents=True)
        layer.file_from_generator(f"part{n}.bin", 8 << 20, seed=500 + n)
        layers.append(layer)
    source = local.push("piped", layers)
    done = subprocess.run(
        local.command(source), cwd=REPO, env=local.env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    [result] = done.stdout.splitlines()
    assert result.startswith(f"zstdchunked\t{source}-zstdchunked\tsha256:")
    others = [line for line in done.stderr.splitlines() if not line.startswith("accelctl: started the local")]
    assert others == [] and "\x1b" not in done.stderr  # no display, no escape sequences


def test_a_terminal_shows_progress_at_least_every_2_s_and_the_artifact_reaches_100(local):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
        FlowRunFilter,
        FlowRunFilterName,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    image = imagegen.big_image(local.store, 200 * imagegen.MiB, seed=24, layer_count=2)
    source = f"{local.registry}/progress/big:v1"
    with RegistryClient({local.registry: HostConfig()}) as client:
        pushing.push(client, local.store, Reference.parse(source), image)
    assert sum(layer.size for layer in image.layers) > 150 * imagegen.MiB  # random data: barely compressed

    launched, ended, chunks, raw, out, returncode = _on_a_terminal(local.command(source), local.env)
    shown = "".join(text for _, text in chunks)
    assert returncode == 0, shown
    [result] = out.splitlines()  # stdout: the result line only
    assert result.startswith(f"zstdchunked\t{source}-zstdchunked\t")

    draws = [when for when, text in chunks if f"converting {source}" in text]
    assert draws and draws[0] - launched < 15, shown  # the display starts with the command
    gaps = [b - a for a, b in zip([*draws], [*draws[1:], ended], strict=True)]
    assert max(gaps) <= 2.0, f"silent for {max(gaps):.1f} s of {ended - launched:.0f} s"
    print(f"{len(draws)} draws in {ended - draws[0]:.1f} s, the longest gap {max(gaps):.2f} s")
    # The run's own bytes move: the whole run's percent advances through many values, per layer rows too.
    percents = [float(p) for p in PERCENT.findall(shown)]
    assert len(set(percents)) >= 5 and max(percents) >= 90, sorted(set(percents))
    for layer in image.layers:
        assert layer.digest.removeprefix("sha256:")[:12] in shown
    assert "zstdchunked" in shown and "converted" in shown and "pulled" in shown
    assert _erased_at_the_end(raw), raw[-300:]

    status = _server_status(local)
    with (
        temporary_settings(updates={PREFECT_API_URL: status["server"]["api_url"]}),
        get_client(sync_client=True) as client,
    ):
        [run] = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"convert {source}"]))
        )
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]),
                type=ArtifactFilterType(any_=["progress", "markdown"]),
            )
        )
    [progress] = [a for a in artifacts if a.type == "progress"]
    assert progress.data == 100
    [layers] = [a for a in artifacts if a.type == "markdown" and str(a.description).startswith("layers of")]
    for layer in image.layers:
        assert f"`{layer.digest[:19]}`" in str(layers.data)
    assert "done after" in str(layers.data)


def test_in_process_conversions_show_the_display_too(local):
    """`--in-process` (against the local server, as with PREFECT_API_URL) draws its own run's snapshots."""
    layers = []
    for n in range(2):
        layer = imagegen.TarBuilder(auto_parents=True)
        layer.file_from_generator(f"part{n}.bin", 16 << 20, seed=520 + n)
        layers.append(layer)
    source = local.push("in-process", layers)
    status = _server_status(local)
    env = {**local.env, "PREFECT_API_URL": status["server"]["api_url"]}
    _, _, chunks, raw, out, returncode = _on_a_terminal([*local.command(source), "--in-process"], env)
    shown = "".join(text for _, text in chunks)
    assert returncode == 0, shown
    [result] = out.splitlines()
    assert result.startswith(f"zstdchunked\t{source}-zstdchunked\t")
    assert PERCENT.search(shown) and "Traceback" not in shown, shown
    assert _erased_at_the_end(raw), raw[-300:]
