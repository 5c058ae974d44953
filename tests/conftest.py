"""Shared fixtures. Real registries are session-scoped (one process each); tests use unique repo names."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# The engine never imports Prefect: the Prefect settings below still come first.
from accel.registry import HostConfig, RegistryClient
from accel.store import ContentStore
from tests.harness import registry as harness

# Prefect reads these when first imported: keep its home (results, task cache) private to this test session
# and keep its server from phoning home (there is no internet here).
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="accel-test-prefect-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

# The password contains ':' on purpose: Basic auth must split on the first colon only.
TEST_ACCOUNT = harness.Account("accel-tester", "s3cret:with:colons")


def _require_registry() -> None:
    if not harness.registry_available():
        pytest.skip(f"{harness.REGISTRY_BINARY} is not installed")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.RegistryServer]:
    """An anonymous `docker-registry` on loopback (restartable with .stop()/.start())."""
    _require_registry()
    with harness.anonymous_registry(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture(scope="session")
def htpasswd_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.RegistryServer]:
    """A registry with htpasswd auth; its `.account` holds the user and password."""
    _require_registry()
    with harness.htpasswd_registry(tmp_path_factory.mktemp("htpasswd-registry"), TEST_ACCOUNT) as server:
        yield server


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.RegistryServer]:
    """A registry with bearer-token auth; `.token_server` records requests, `.account` is the user."""
    _require_registry()
    with harness.token_registry(tmp_path_factory.mktemp("token-registry"), TEST_ACCOUNT) as server:
        yield server


@pytest.fixture(scope="module")
def client(registry: harness.RegistryServer) -> Iterator[RegistryClient]:
    """A client of the session's anonymous `registry`."""
    with RegistryClient({registry.host: HostConfig()}) as c:
        yield c


@pytest.fixture
def fault_proxy(registry: harness.RegistryServer) -> Iterator[harness.FaultProxy]:
    """A FaultProxy in front of the anonymous `registry`, stopped after the test."""
    with harness.fault_proxy(registry.host) as proxy:
        yield proxy


@pytest.fixture
def repo_name() -> str:
    """A repository name no other test uses."""
    return f"test/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    """An empty content store of this test's own."""
    return ContentStore(tmp_path / "store")


@pytest.fixture(scope="module")
def source_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ContentStore:
    """One content store per test module for the source images its tests generate and push: images a
    module builds repeatedly (the standard layers) are written once."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    return ContentStore(tmp_path_factory.mktemp(f"{module}-source"))
