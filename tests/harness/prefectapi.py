"""Pointing this test process's Prefect at another API server for a while."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any


def _restart_workers() -> None:
    """Prefect's event and log workers are one per process and keep the API URL they started with (the key of
    a running server's events client holds no URL): drained, they start again on their next use, with the
    URL set then. Without it, a flow run in-process here reports its task runs to the previous server."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (EventsWorker, APILogWorker):
        worker.drain_all(timeout=30)


@contextlib.contextmanager
def reporting_to(api_url: str, settings: Mapping[Any, Any] | None = None) -> Iterator[None]:
    """In-process flows report to `api_url` inside the block (with further Prefect `settings`, setting →
    value), and to the previous server after it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    _restart_workers()
    with temporary_settings(updates={PREFECT_API_URL: api_url, **(settings or {})}):
        try:
            yield
        finally:
            _restart_workers()
