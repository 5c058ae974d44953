"""The real Go accelctl against accel's acceld, and accel's accelctl against the real Go acceld (issue 23).

Needs the Go binaries built from goharbor/acceleration-service (v0.2.9) in ACCEL_GO_PEER_BIN (default
/work/peer/bin); skipped without them (CI has no peer). accel's acceld here has the registry host open
(`webhook.allow_unauthenticated`), as README "Switching from acceld" says the Go accelctl needs, and it
logs JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from accel.store import ContentStore
from tests.harness import registry as harness
from tests.harness.pushing import push_seeded_image
from tests.harness.services import REPO, SUFFIX, Acceld, PrefectServer, _stop, _wait, tail

PEER_BIN = Path(os.environ.get("ACCEL_GO_PEER_BIN", "/work/peer/bin"))
GO_ACCELCTL, GO_ACCELD = PEER_BIN / "accelctl", PEER_BIN / "acceld"

pytestmark = [
    pytest.mark.registry,
    pytest.mark.skipif(
        not (GO_ACCELCTL.is_file() and GO_ACCELD.is_file()),
        reason=f"the Go accelctl and acceld (goharbor/acceleration-service v0.2.9) are not in {PEER_BIN} "
        "(set ACCEL_GO_PEER_BIN)",
    ),
]


@pytest.fixture(scope="module")
def open_acceld(tmp_path_factory: pytest.TempPathFactory, registry) -> Iterator[Acceld]:
    prefect = PrefectServer(tmp_path_factory.mktemp("prefect-go-peer"))
    prefect.start()
    workdir = tmp_path_factory.mktemp("acceld-go-peer")
    settings = {
        "server": {"name": "API", "host": "127.0.0.1", "port": harness.free_port()},
        "provider": {
            "source": {registry.host: {"webhook": {"allow_unauthenticated": True}}},
            "work_dir": str(workdir / "work"),
        },
        "converter": {
            "worker": 2,
            "driver": {"type": "estargz", "config": {"compression_level": 1}},
            "rules": [{"tag_suffix": SUFFIX}],
        },
    }
    service = Acceld(workdir, prefect, settings, args=("--log-format", "json"))
    service.start()
    yield service
    service.stop()
    prefect.stop()
    print(tail(service.log_path, 3000))


@pytest.fixture(scope="module")
def go_acceld(tmp_path_factory: pytest.TempPathFactory, registry) -> Iterator[str]:
    """The Go acceld converting to `-goesgz` on the test registry; yields its host:port."""
    workdir = tmp_path_factory.mktemp("go-acceld")
    port = harness.free_port()
    config = {
        "server": {"name": "API", "host": "127.0.0.1", "port": port},
        "metric": {"enabled": False},
        "provider": {
            "source": {registry.host: {"insecure": True, "webhook": {"auth_header": "Bearer go-peer"}}},
            "work_dir": str(workdir / "work"),
            "gcpolicy": {"threshold": "1000MB"},
        },
        "converter": {
            "worker": 2,
            "driver": {"type": "estargz", "config": {"docker2oci": True}},
            "rules": [{"tag_suffix": "-goesgz"}],
        },
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    log = workdir / "acceld.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(GO_ACCELD), "--config", str(workdir / "config.yaml")], stdout=out, stderr=subprocess.STDOUT
        )
    _wait(f"http://127.0.0.1:{port}/api/v1/health", proc, log, 30, ok=(200, 404))
    yield f"127.0.0.1:{port}"
    _stop(proc)
    print(tail(log, 2000))


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=REPO)


def test_the_go_accelctl_against_accel(open_acceld, registry, tmp_path):
    source = push_seeded_image(registry.host, ContentStore(tmp_path / "source"), seed=23)
    tagged = str(source).split("@")[0]
    addr = f"127.0.0.1:{open_acceld.port}"
    created = run(str(GO_ACCELCTL), "task", "--addr", addr, "create", "--sync", tagged)
    assert created.returncode == 0 and "Task has been completed." in created.stderr, created.stderr
    listed = run(str(GO_ACCELCTL), "task", "--addr", addr, "ls")
    assert listed.returncode == 0, listed.stderr
    [row] = [line.split() for line in listed.stdout.splitlines()[1:] if tagged in line]
    assert row[3] == "COMPLETED"  # ID, CREATED (date, time), STATUS, SOURCE as the Go accelctl prints them
    lines = open_acceld.log().splitlines()
    entries = [json.loads(line) for line in lines if line.strip()]  # every line of acceld.log is JSON
    pushed = [e for e in entries if e["message"].startswith(f"pushed {tagged}{SUFFIX}@sha256:")]
    assert pushed and len(pushed[0]["digests"][0]) == len("sha256:") + 64 and "flow_run_id" in pushed[0]


def test_accel_accelctl_against_the_go_acceld(go_acceld, registry, tmp_path):
    source = push_seeded_image(registry.host, ContentStore(tmp_path / "source"), seed=24)
    tagged = str(source).split("@")[0]
    accelctl = [sys.executable, "-m", "service.accelctl", "task", "--addr", go_acceld]
    created = run(*accelctl, "create", "--sync", "--auth-header", "Bearer go-peer", tagged)
    assert created.returncode == 0 and f"acceld converted {tagged}: Ok" in created.stderr, created.stderr
    listed = run(*accelctl, "ls")
    assert listed.returncode == 0, listed.stderr
    [row] = [line.split("\t") for line in listed.stdout.splitlines()[1:] if tagged in line]
    assert row[1] == "COMPLETED"
