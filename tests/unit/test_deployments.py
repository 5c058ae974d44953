"""Deployments are declared once (deployments/definitions.py); prefect.yaml is their rendering."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

from accel.config import load_settings
from deployments.definitions import DEFAULT_BULK_SCHEDULE, DEFAULT_CONCURRENCY, definitions
from deployments.render import render
from flows.names import BULK_DEPLOYMENT, CONVERT_DEPLOYMENT

REPO = Path(__file__).resolve().parents[2]


def _settings(**bulk: object):
    return load_settings({"converter": {"driver": {"type": "estargz"}, "worker": 3}, "bulk": bulk})


def test_checked_in_prefect_yaml_is_the_rendering_of_the_definitions():
    assert (REPO / "prefect.yaml").read_text() == render(), "run: python -m deployments.render > prefect.yaml"


def test_names_and_entrypoints_point_at_the_flows():
    convert, bulk = definitions()
    assert (convert.full_name, bulk.full_name) == (CONVERT_DEPLOYMENT, BULK_DEPLOYMENT)
    for d in (convert, bulk):
        flow = getattr(importlib.import_module(d.module), d.function)
        assert flow.name == d.flow_name
        path, function = d.path_entrypoint.split(":")
        assert (REPO / path).is_file() and function == d.function


def test_prefect_yaml_declares_schedule_trigger_and_limits_from_the_definitions():
    document = yaml.safe_load(render())
    convert, bulk = document["deployments"]
    assert convert["name"] == "convert-image" and bulk["name"] == "bulk-reconvert"
    assert convert["concurrency_limit"] == DEFAULT_CONCURRENCY == 5
    assert "schedules" not in convert
    assert bulk["schedules"] == [{"cron": DEFAULT_BULK_SCHEDULE, "timezone": "UTC", "active": True}]
    # No config is baked in at deploy time: each worker's ACCEL_CONFIG applies (own work_dir per worker).
    assert all(d["parameters"] == {} and d["work_pool"]["name"] == "accel" for d in (convert, bulk))
    assert "ACCEL_CONFIG" not in render().split("deployments:", 1)[1]
    [trigger] = convert["triggers"]
    assert trigger["expect"] == ["harbor.artifact.pushed"]
    assert trigger["parameters"] == {"source": "{{ event.payload.source }}"}
    # What `prefect deploy` builds from it.
    parsed = DeploymentEventTrigger(**{k: v for k, v in trigger.items() if k != "type"})
    assert parsed.expect == {"harbor.artifact.pushed"}


def test_with_a_config_acceld_takes_bulk_schedule_and_worker_from_it():
    convert, bulk = definitions(_settings(schedule="*/5 * * * *"))
    assert convert.concurrency_limit == 3
    assert bulk.schedule == "*/5 * * * *"
    # Unset: on demand only (acceld), while prefect.yaml keeps the default.
    _, bulk = definitions(_settings())
    assert bulk.schedule is None


def test_render_with_a_config_uses_its_schedule(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"converter": {"driver": {"type": "estargz"}}, "bulk": {"schedule": "0 1 * * *"}})
    )
    _, bulk = yaml.safe_load(render(str(config)))["deployments"]
    assert bulk["schedules"][0]["cron"] == "0 1 * * *"


def test_run_form_lists_every_driver_and_describes_every_parameter():
    from accel.drivers import DRIVER_TYPES
    from flows.convert_image import convert_image

    properties = convert_image.parameters.model_dump()["properties"]
    assert all(properties[name].get("description") for name in properties), properties
    [array, _null] = properties["drivers"]["anyOf"]
    assert array["items"]["enum"] == list(DRIVER_TYPES)


def test_artifact_keys_are_per_image_and_what_prefect_accepts():
    import re

    from flows.convert_image import artifact_key

    digest = "sha256:" + "abcdef0123456789" * 4
    assert (
        artifact_key("r.example:5000/team/my_app.v2:v1", digest) == "conversion-team-my-app-v2-abcdef012345"
    )
    assert artifact_key("r.example/a/b:v1", "") == "conversion-a-b-unresolved"
    assert re.fullmatch(r"[a-z0-9-]+", artifact_key("not a reference", digest))


def test_checked_in_automations_are_the_rendering_and_prefect_accepts_them():
    from prefect.events.schemas.automations import AutomationCore

    from deployments.render import render_automations

    assert (REPO / "prefect-automations.yaml").read_text() == render_automations(), (
        "run: python -m deployments.render --automations > prefect-automations.yaml"
    )
    automation = AutomationCore.model_validate(yaml.safe_load(render_automations()))
    assert automation.trigger.within.total_seconds() == 90
    for deployment in yaml.safe_load(render())["deployments"]:
        assert deployment["work_pool"]["job_variables"]["env"] == {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}


def test_acceld_serves_the_push_trigger_and_gives_bulk_its_own_slot(tmp_path):
    """acceld's served deployments are prefect.yaml's: the `harbor.artifact.pushed` trigger too (so
    `prefect event emit` converts under acceld), and a bulk run never takes one of the conversions' slots."""
    from service.acceld import runner_deployments

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"converter": {"driver": {"type": "estargz"}, "worker": 1}}))
    (convert, _, convert_limit), (bulk, _, bulk_limit) = runner_deployments(str(config))
    [trigger] = convert.triggers
    [declared] = yaml.safe_load(render())["deployments"][0]["triggers"]
    assert trigger.expect == set(declared["expect"]) and trigger.parameters == declared["parameters"]
    assert trigger.match.model_dump() == declared["match"] and trigger.enabled
    assert not bulk.triggers
    assert (convert_limit, bulk_limit) == (1, 1)
