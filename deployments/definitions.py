"""accel's two Prefect deployments, declared once.

acceld's single-process mode serves them (`service.acceld`), and `prefect.yaml` for the work-pool mode is
rendered from them (`python -m deployments.render > prefect.yaml`; a test keeps the checked-in file equal to
the rendering). Names here are the names every caller uses to start runs.

Schedule rule: the bulk re-conversion runs on `bulk.schedule` from the accel config when it is set. acceld
reads the config it is started with, so unset means on demand only. `prefect.yaml` is rendered with
DEFAULT_BULK_SCHEDULE (or with `--config FILE`, from that file's `bulk.schedule`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

from accel.config import ConverterSettings, Settings
from flows.names import BULK_FLOW, CONVERT_FLOW

DEFAULT_BULK_SCHEDULE = "0 3 * * *"  # daily at 03:00 UTC, when the config does not say
DEFAULT_CONCURRENCY = ConverterSettings.model_fields["worker"].default  # converter.worker's default
PUSHED_EVENT = "harbor.artifact.pushed"
TAGS = ("accel",)

# prefect.yaml binds no config: a work-pool flow run reads ACCEL_CONFIG from its worker's environment, so each
# worker can have its own config (its own work_dir) and `prefect deploy` needs none.


# Crashed-run detection in the work-pool mode: a flow run process sends a heartbeat event every
# HEARTBEAT_SECONDS (Prefect's minimum); when a worker machine dies with its runs, the heartbeats stop and the
# automation below marks the run CRASHED, so it is not left RUNNING forever (a re-sent webhook then starts a
# new run on a surviving worker). In the single-process mode acceld fails such runs itself when it restarts.
HEARTBEAT_SECONDS = 30
MISSED_HEARTBEATS = 3
CRASHED_RUN_AUTOMATION = "accel: crash runs whose process died"


def crashed_run_automation() -> dict[str, object]:
    """The automation (`prefect automation create --from-file`) that marks an accel run whose heartbeats
    stopped as CRASHED."""
    seconds = HEARTBEAT_SECONDS * MISSED_HEARTBEATS
    return {
        "name": CRASHED_RUN_AUTOMATION,
        "description": f"An accel flow run with no heartbeat for {seconds} s lost its process (worker died).",
        "enabled": True,
        "trigger": {
            "type": "event",
            "posture": "Proactive",
            "after": ["prefect.flow-run.heartbeat"],
            # Any later event of the run: another heartbeat, or its final state.
            "expect": ["prefect.flow-run.*"],
            "for_each": ["prefect.resource.id"],
            "match": {"prefect.resource.id": "prefect.flow-run.*"},
            "match_related": {
                "prefect.resource.role": "tag",
                "prefect.resource.id": f"prefect.tag.{TAGS[0]}",
            },
            "threshold": 1,
            "within": seconds,
        },
        "actions": [
            {
                "type": "change-flow-run-state",
                "state": "CRASHED",
                "name": "Crashed",
                "message": f"no heartbeat for {seconds} s: the worker or the flow run process died",
            }
        ],
    }


@dataclass(frozen=True)
class EventTrigger:
    """A Prefect event that starts a run; `parameters` are Jinja templates over the event."""

    event: str
    resource_id: str  # glob over `prefect.resource.id`
    parameters: Mapping[str, str]

    def as_prefect(self) -> DeploymentEventTrigger:
        """The trigger as Prefect builds it from prefect.yaml's `triggers` entry, for a served deployment."""
        return DeploymentEventTrigger(
            enabled=True,
            match={"prefect.resource.id": self.resource_id},
            expect={self.event},
            parameters=dict(self.parameters),
        )


@dataclass(frozen=True)
class DeploymentDefinition:
    flow_name: str
    module: str  # importable module of the flow function
    function: str
    description: str
    concurrency_limit: int | None = None  # runs at a time; acceld's runner gives each deployment its own
    schedule: str | None = None  # cron, UTC
    triggers: tuple[EventTrigger, ...] = ()
    tags: tuple[str, ...] = TAGS

    @property
    def name(self) -> str:
        return self.flow_name

    @property
    def full_name(self) -> str:
        return f"{self.flow_name}/{self.name}"

    @property
    def path_entrypoint(self) -> str:
        """`flows/convert_image.py:convert_image`, as prefect.yaml names it."""
        return f"{self.module.replace('.', '/')}.py:{self.function}"

    def parameters(self, config: str) -> dict[str, str]:
        """acceld's served deployments: runs use the config acceld was started with."""
        return {"config": config}


def definitions(settings: Settings | None = None) -> tuple[DeploymentDefinition, DeploymentDefinition]:
    """Both deployments. With `settings`, concurrency and schedule come from them (acceld); without, the
    defaults prefect.yaml is rendered with."""
    concurrency = settings.converter.worker if settings is not None else DEFAULT_CONCURRENCY
    schedule = settings.bulk.schedule if settings is not None else DEFAULT_BULK_SCHEDULE
    convert = DeploymentDefinition(
        flow_name=CONVERT_FLOW,
        module="flows.convert_image",
        function="convert_image",
        description="Convert one image with the configured drivers and push it beside the source.",
        concurrency_limit=concurrency,
        triggers=(
            EventTrigger(
                event=PUSHED_EVENT,
                resource_id="harbor.artifact.*",
                parameters={"source": "{{ event.payload.source }}"},
            ),
        ),
    )
    bulk = DeploymentDefinition(
        flow_name=BULK_FLOW,
        module="flows.bulk_reconvert",
        function="bulk_reconvert",
        description=(
            "Convert every tag of the configured repositories that lacks an up-to-date converted image."
        ),
        schedule=schedule,
        # One bulk run at a time, beside (never in) the conversions' slots: it only plans and waits.
        concurrency_limit=1,
    )
    return convert, bulk
