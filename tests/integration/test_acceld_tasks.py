"""acceld's tasks are the runs acceld's API created (issue 23): a run of the same deployment started another
way (the UI, `prefect deployment run`, a one-time conversion on the same server) is not one of them."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from accel.config import load_settings
from accel.reference import Reference
from service.api.conversions import SubmitRequest, TaskNotFound

pytestmark = [pytest.mark.prefect]

HOST = "registry.test:5000"
DIGEST = "sha256:" + "cd" * 32


def test_only_runs_acceld_submitted_are_its_tasks(prefect_api, tmp_path):
    from prefect import get_client

    from flows.convert_image import convert_image
    from service.api.prefect_backend import PrefectBackend

    settings = load_settings(
        {
            "provider": {"source": {HOST: {}}, "work_dir": str(tmp_path / "work")},
            "converter": {"driver": {"type": "estargz"}},
        }
    )
    name = f"convert-image-{uuid.uuid4().hex[:8]}"  # a deployment of this test's own; nobody serves it
    deployment_id = convert_image.to_deployment(name=name).apply()
    backend = PrefectBackend(settings, str(tmp_path / "config.yaml"), deployment_name=f"convert-image/{name}")
    source = Reference.parse(f"{HOST}/team/app:v1@{DIGEST}")
    request = SubmitRequest(
        source,
        ("estargz",),
        None,
        f"accel-test-{uuid.uuid4().hex}",
        {"estargz": f"{HOST}/team/app:v1-esgz"},
    )

    async def scenario() -> tuple[object, object, list[object]]:
        submitted = await backend.submit(request)
        async with get_client() as client:  # as the UI or `prefect deployment run` would
            other = await client.create_flow_run_from_deployment(
                deployment_id, parameters={"source": f"{HOST}/team/other:v1"}
            )
            run = await client.read_flow_run(uuid.UUID(submitted.id))
        listed = await backend.list(1000)
        with pytest.raises(TaskNotFound):
            await backend.get(str(other.id))
        await backend.aclose()
        return submitted, run, listed

    submitted, run, listed = asyncio.run(scenario())
    assert [t.id for t in listed] == [submitted.id]
    assert run.name == f"convert {source}"  # named when created, not when it starts
    assert listed[0].targets == [f"{HOST}/team/app:v1-esgz"] and listed[0].drivers == ["estargz"]
