"""The convert flow's own de-duplication (runs started by the event trigger carry no idempotency key)."""

from __future__ import annotations

import datetime as dt
import uuid

from prefect.client.schemas.objects import FlowRun

from accel.config import load_settings
from accel.plan import plan_conversion
from accel.reference import Reference
from flows.duplicates import DUPLICATE_TAG, earliest_of, identity

SOURCE = "r.example/team/app:v1@sha256:" + "a" * 64
SETTINGS = load_settings(
    {
        "provider": {"source": {"r.example": {}}},
        "converter": {
            "drivers": [
                {"type": "estargz", "tag_suffix": "-esgz"},
                {"type": "zstdchunked", "tag_suffix": "-zc"},
            ],
            "rules": [{"drivers": ["estargz"]}],
        },
    }
)
KEY = identity(plan_conversion(SETTINGS, Reference.parse(SOURCE)))
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _run(seconds: int, tags: tuple[str, ...] = (), **parameters: object) -> FlowRun:
    return FlowRun(
        id=uuid.uuid4(),
        flow_id=uuid.uuid4(),
        created=T0 + dt.timedelta(seconds=seconds),
        tags=list(tags),
        parameters={"source": SOURCE, "config": "/etc/accel.yaml", **parameters},
    )


def test_trigger_run_and_acceld_run_of_one_image_are_one_conversion_the_earliest_wins():
    from_trigger = _run(5)  # no drivers: the rule's
    from_acceld = _run(3, drivers=["estargz"], target_repository=None)
    assert earliest_of([from_trigger, from_acceld], SETTINGS, KEY) is from_acceld
    # Every racer computes the same winner, whichever order it reads the runs in.
    assert earliest_of([from_acceld, from_trigger], SETTINGS, KEY) is from_acceld


def test_other_images_drivers_duplicates_and_unplannable_runs_do_not_count():
    me = _run(9)
    others = [
        _run(1, source="r.example/team/app:v2@sha256:" + "b" * 64),
        _run(2, drivers=["zstdchunked"]),
        _run(3, tags=(DUPLICATE_TAG,)),
        _run(4, drivers=["no-such-driver"]),
        _run(5, source="not a reference"),
        _run(6, target="r.example/elsewhere/app:x"),  # same key today, another destination
    ]
    assert earliest_of([*others, me], SETTINGS, KEY) is me
    assert earliest_of(others[:2], SETTINGS, KEY) is None
