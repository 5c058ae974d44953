"""What the API calls a task (a conversion), and the backend that runs them (Prefect, or a fake in tests)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import BaseModel

from accel.reference import Reference

Status = Literal["PROCESSING", "COMPLETED", "FAILED"]
PROCESSING: Status = "PROCESSING"
COMPLETED: Status = "COMPLETED"
FAILED: Status = "FAILED"


class TargetStatus(BaseModel):
    """One driver's target in a task: its own status, and why it failed."""

    driver: str
    target: str
    status: Status
    reason: str = ""
    digest: str = ""


class ConversionTask(BaseModel):
    """acceleration-service's task fields, plus the drivers and every target when there are several."""

    id: str
    created: dt.datetime
    finished: dt.datetime | None = None
    source: str
    target: str = ""  # comma-separated when several drivers run
    source_size: int = 0
    target_size: int = 0
    status: Status
    reason: str = ""
    drivers: list[str] = []
    targets: list[str] = []
    target_status: list[TargetStatus] = []  # per driver: pushed, failed (with its reason) or processing


@dataclass(frozen=True)
class SubmitRequest:
    source: Reference  # pinned to the pushed digest when the event named one
    drivers: tuple[str, ...]
    target_repository: str | None
    idempotency_key: str
    # driver → target reference, as planned when the request was accepted: recorded with the run, so the
    # task list shows what this run was asked to do, never a reading of a later config.
    targets: Mapping[str, str] = field(default_factory=dict)


class TaskNotFound(LookupError):
    pass


class BackendUnavailable(RuntimeError):
    """The orchestrator (Prefect API) cannot be reached or is not ready; the message says why."""


class ConversionBackend(Protocol):
    async def submit(self, request: SubmitRequest) -> ConversionTask: ...

    async def get(self, task_id: str) -> ConversionTask: ...

    async def list(self, limit: int) -> list[ConversionTask]: ...

    async def wait(self, task_id: str, timeout: float) -> ConversionTask: ...

    async def problems(self) -> list[str]:
        """Why the backend cannot take work now; empty when ready."""
        ...
