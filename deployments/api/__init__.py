"""acceld's HTTP API: Harbor acceleration-service compatible webhooks and task listing over Prefect runs."""

from deployments.api.app import create_app
from deployments.api.tasks import (
    BackendUnavailable,
    ConversionBackend,
    ConversionTask,
    SubmitRequest,
    TaskNotFound,
)

__all__ = [
    "BackendUnavailable",
    "ConversionBackend",
    "ConversionTask",
    "SubmitRequest",
    "TaskNotFound",
    "create_app",
]
