"""Session-wide processes for the e2e suite: one Prefect server, one acceld, two registries.

`registry` (tests/conftest.py) takes Harbor-style webhooks posted by the tests; `notifying_registry` sends
distribution notifications to acceld itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.harness import registry as harness
from tests.harness.postgres import PostgresServer
from tests.harness.postgres import available as postgres_available
from tests.harness.services import WEBHOOK_SECRET, Acceld, PrefectServer, acceld_settings, tail

E2E_TESTS = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test below this directory is `e2e` and runs Prefect. (A `pytestmark` here would do nothing:
    pytest reads it from test modules only, and this hook sees the whole session's items.)"""
    for item in items:
        if E2E_TESTS in item.path.resolve().parents:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.prefect)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    if not postgres_available():
        pytest.skip("PostgreSQL server binaries are not installed (scripts/setup installs them)")
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def prefect_server(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer
) -> Iterator[PrefectServer]:
    """A real Prefect server on PostgreSQL: the scale-out mode's database."""
    server = PrefectServer(tmp_path_factory.mktemp("prefect"), database_url=postgres.url)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def acceld_port() -> int:
    return harness.free_port()


@pytest.fixture(scope="session")
def notifying_registry(
    tmp_path_factory: pytest.TempPathFactory, acceld_port: int
) -> Iterator[harness.RegistryServer]:
    """A docker-registry whose notifications go to acceld's distribution endpoint."""
    if not harness.registry_available():
        pytest.skip(f"{harness.REGISTRY_BINARY} is not installed")
    server = harness.RegistryServer(tmp_path_factory.mktemp("notifying-registry"))
    config = yaml.safe_load(server.config_path.read_text())
    config["notifications"] = {
        "endpoints": [
            {
                "name": "acceld",
                "url": f"http://127.0.0.1:{acceld_port}/api/v1/notifications/distribution",
                "headers": {"Authorization": [WEBHOOK_SECRET]},
                "timeout": "2s",
                "threshold": 3,
                "backoff": "1s",
            }
        ]
    }
    server.config_path.write_text(yaml.safe_dump(config))
    with server:
        yield server


@pytest.fixture(scope="session")
def stalling_proxy(registry: harness.RegistryServer) -> Iterator[harness.FaultProxy]:
    """A FaultProxy in front of `registry` that acceld also takes webhooks for: tests that must stop a
    conversion at a chosen request name their images by the proxy's host (`proxy.stall(...)`), and clear
    their stalls when done."""
    with harness.fault_proxy(registry.host) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def acceld(
    tmp_path_factory: pytest.TempPathFactory,
    prefect_server: PrefectServer,
    registry: harness.RegistryServer,
    notifying_registry: harness.RegistryServer,
    stalling_proxy: harness.FaultProxy,
    acceld_port: int,
) -> Iterator[Acceld]:
    workdir: Path = tmp_path_factory.mktemp("acceld")
    hosts = [registry.host, notifying_registry.host, stalling_proxy.host]
    settings = acceld_settings(workdir, acceld_port, hosts, metrics=True)
    service = Acceld(workdir, prefect_server, settings)
    service.start()
    yield service
    service.stop()
    print(tail(service.log_path, 3000))
