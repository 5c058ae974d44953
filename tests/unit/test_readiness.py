"""acceld is ready only once Prefect's deployment runs with acceld's own config."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from types import SimpleNamespace

from accel.config import load_settings
from service.api.prefect_backend import PrefectBackend


class _Prefect:
    """The few Prefect client calls readiness makes; the deployment's default parameters are settable."""

    api_url = "http://prefect.invalid/api"

    def __init__(self, config: str) -> None:
        self.deployment = SimpleNamespace(id=uuid.uuid4(), parameters={"config": config})

    async def api_healthcheck(self) -> None:
        return None

    async def read_deployment_by_name(self, name: str) -> SimpleNamespace:
        return self.deployment

    async def read_deployment(self, deployment_id: uuid.UUID) -> SimpleNamespace:
        return self.deployment


def _backend(tmp_path, prefect: _Prefect, serves: bool) -> PrefectBackend:
    settings = load_settings(
        {"provider": {"work_dir": str(tmp_path)}, "converter": {"driver": {"type": "estargz"}}}
    )
    backend = PrefectBackend(settings, "/etc/accel/new.yaml", serves_deployments=serves)

    @contextlib.asynccontextmanager
    async def client():
        yield prefect

    backend._client = client  # type: ignore[method-assign]
    return backend


def test_not_ready_until_the_runner_registered_this_config(tmp_path):
    prefect = _Prefect("/etc/accel/old.yaml")  # registered by the acceld that ran before, with its config
    backend = _backend(tmp_path, prefect, serves=True)
    [problem] = asyncio.run(backend.problems())
    assert "runs with config /etc/accel/old.yaml, not /etc/accel/new.yaml" in problem
    prefect.deployment.parameters = {"config": "/etc/accel/new.yaml"}  # this acceld's runner registered it
    assert asyncio.run(backend.problems()) == []


def test_an_api_only_acceld_does_not_ask_for_its_config(tmp_path):
    # Work-pool mode: prefect.yaml binds no config; workers use their own ACCEL_CONFIG.
    backend = _backend(tmp_path, _Prefect("/somewhere/else.yaml"), serves=False)
    assert asyncio.run(backend.problems()) == []
