"""acceld's HTTP API: Harbor acceleration-service compatible webhooks and task listing over Prefect runs."""

from service.api.app import create_app
from service.api.conversions import (
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
