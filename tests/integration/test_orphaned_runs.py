"""Runs a dead runner left behind (issue 22, "No orphans" and the kill-burst acceptance).

A conversion whose push was answered 2xx and whose run was RUNNING or PENDING when acceld (or its runner)
was killed with SIGKILL must be converted all the same: Harbor does not send the push again, and the run's
idempotency key answers a re-sent one with that same run. So the next acceld schedules it again, as itself;
only a run that keeps dying with its runner, a bulk run or one being cancelled ends there.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelling, Completed, Pending, Running, Scheduled

from service.api.prefect_backend import recover_orphaned_runs

pytestmark = [pytest.mark.prefect]


async def _deployment(client, name: str) -> uuid.UUID:
    flow_name, deployment_name = name.split("/")
    flow_id = await client.create_flow_from_name(flow_name)
    return await client.create_deployment(flow_id=flow_id, name=deployment_name)


async def _run_in(client, deployment: uuid.UUID, *states) -> uuid.UUID:
    run = await client.create_flow_run_from_deployment(deployment, parameters={})
    for state in states:
        await client.set_flow_run_state(run.id, state, force=True)
    return run.id


def test_orphaned_conversions_run_again_and_the_rest_end(prefect_api):
    suffix = uuid.uuid4().hex[:8]  # deployments of this test only, on the session's Prefect server
    convert, bulk = f"convert-{suffix}/convert-{suffix}", f"bulk-{suffix}/bulk-{suffix}"

    async def scenario() -> tuple[dict[str, StateType], dict[str, str], object]:
        async with get_client() as client:
            conversions, bulks = await _deployment(client, convert), await _deployment(client, bulk)
            runs = {
                "running": await _run_in(client, conversions, Pending(), Running()),
                "pending": await _run_in(client, conversions, Pending()),
                "completed": await _run_in(client, conversions, Pending(), Running(), Completed()),
                "scheduled": await _run_in(client, conversions),
                "cancelling": await _run_in(client, conversions, Pending(), Running(), Cancelling()),
                # Started three times already, each time with a runner that died.
                "dies again": await _run_in(client, conversions, *[Scheduled(), Pending(), Running()] * 3),
                "bulk": await _run_in(client, bulks, Pending(), Running()),
            }
            recovered = await recover_orphaned_runs([convert], [bulk], "the runner died", max_starts=3)
            states = {name: await client.read_flow_run(run_id) for name, run_id in runs.items()}
            return (
                {name: run.state.type for name, run in states.items()},
                {name: run.state.message or "" for name, run in states.items()},
                (recovered, runs),
            )

    types, messages, (recovered, runs) = asyncio.run(scenario())
    assert types == {
        "running": StateType.SCHEDULED,  # run again, as itself: its webhook was answered 2xx
        "pending": StateType.SCHEDULED,
        "completed": StateType.COMPLETED,  # never run twice
        "scheduled": StateType.SCHEDULED,  # the next runner picks it up as it is
        "cancelling": StateType.CANCELLED,
        "dies again": StateType.FAILED,
        "bulk": StateType.FAILED,
    }
    assert sorted(recovered.rescheduled) == sorted([runs["running"], runs["pending"]])
    assert sorted(recovered.failed) == sorted([runs["dies again"], runs["bulk"]])
    assert recovered.cancelled == [runs["cancelling"]]
    assert messages["running"] == "the runner died; running it again (start 2 of at most 3)"
    assert "3 times; not started again" in messages["dies again"]
    assert messages["bulk"] == "the runner died"
