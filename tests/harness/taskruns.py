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
