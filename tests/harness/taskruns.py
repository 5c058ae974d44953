"""What a flow run's task runs became, as the Prefect server records them."""

from __future__ import annotations

from tests.harness.api import wait_until


def completed_task_runs(flow_run_id: object, prefix: str = "", at_least: int = 0) -> list[str]:
    """Names of the flow run's completed task runs starting with `prefix`, once the server has every task run
    as final and at least `at_least` (and one) of those: task runs reach it through its event pipeline, some a
    moment after the flow run has returned."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def final() -> list[str] | None:
        with get_client(sync_client=True) as prefect:
            runs = prefect.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        if not runs or any(r.state is None or not r.state.is_final() for r in runs):
            return None
        names = [r.name for r in runs if r.name.startswith(prefix) and r.state and r.state.is_completed()]
        return names if len(names) >= max(at_least, 1) else None

    return wait_until(final, 60, f"the task runs' final states ({at_least} or more named {prefix!r}…)")


def task_run_count(api_url: str, flow_run_id: object) -> int:
    """How many task runs the server recorded for the flow run (any state), once none is unfinished and the
    count has held for a second: the count endpoint, since a listing stops at the server's page limit."""
    import time

    import httpx
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    previous = -1

    def settled() -> int | None:
        nonlocal previous
        answer = httpx.post(
            f"{api_url}/task_runs/count", json={"flow_runs": {"id": {"any_": [str(flow_run_id)]}}}, timeout=30
        )
        answer.raise_for_status()
        total = int(answer.json())
        with get_client(sync_client=True) as prefect:
            runs = prefect.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200
            )
        unfinished = [r for r in runs if r.state is None or not r.state.is_final()]
        if total and total == previous and not unfinished:
            return total
        previous = total
        time.sleep(1)
        return None

    return wait_until(settled, 120, "the flow run's task runs, all final")


def named_layers(names: list[str]) -> list[str]:
    """The short layer digests (`sha256:` and 12 hex) task run names list, as often as they are listed; a
    batch's run lists at most a few of its layers (tasks.policy)."""
    import re

    return [digest for name in names for digest in re.findall(r"sha256:[0-9a-f]{12}\b", name)]
