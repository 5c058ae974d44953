"""acceld --in-process-runs: webhook runs executed as threads of the warm runner process, against their own
Prefect server (two accelds serving the same deployment names would take each other's runs)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from accel.reference import Reference
from accel.registry import HostConfig, RegistryClient
from accel.store import ContentStore
from tests.harness import registry as harness
from tests.harness.api import harbor_for
from tests.harness.pushing import push_seeded_image
from tests.harness.services import SUFFIX, WEBHOOK_AUTH, WEBHOOK_SECRET, Acceld, PrefectServer, tail

pytestmark = [pytest.mark.registry, pytest.mark.prefect]


@pytest.fixture(scope="module")
def in_process_acceld(tmp_path_factory: pytest.TempPathFactory, registry) -> Iterator[Acceld]:
    prefect = PrefectServer(tmp_path_factory.mktemp("prefect-in-process"))  # SQLite: one run at a time here
    prefect.start()
    workdir = tmp_path_factory.mktemp("acceld-in-process")
    settings = {
        "server": {"name": "API", "host": "127.0.0.1", "port": harness.free_port()},
        "metric": {"enabled": False},
        "provider": {
            "source": {registry.host: {"webhook": {"auth_header": WEBHOOK_SECRET}}},
            "work_dir": str(workdir / "work"),
        },
        "converter": {
            "worker": 2,
            "driver": {"type": "estargz", "config": {"compression_level": 1}},
            "rules": [{"tag_suffix": SUFFIX}],
        },
    }
    service = Acceld(workdir, prefect, settings, args=("--in-process-runs",))
    service.start()
    yield service
    service.stop()
    prefect.stop()
    print(tail(service.log_path, 3000))


def test_webhook_runs_in_the_runner_process(in_process_acceld, registry, tmp_path):
    acceld = in_process_acceld
    ref = push_seeded_image(registry.host, ContentStore(tmp_path / "source"))
    r = httpx.post(
        f"{acceld.url}/api/v1/conversions?sync=true", json=harbor_for(ref), headers=WEBHOOK_AUTH, timeout=300
    )
    assert r.status_code == 200, r.text
    [done] = r.json()["tasks"]
    assert done["status"] == "COMPLETED", done
    assert done["target"] == f"{ref.name}:{ref.tag}{SUFFIX}"
    with RegistryClient({registry.host: HostConfig()}) as client:
        assert client.resolve(Reference.parse(done["target"]))
    assert f"running flow run {done['id']} in-process" in acceld.log()
