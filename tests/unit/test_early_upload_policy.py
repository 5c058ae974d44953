"""Which drivers' converted blobs may go to the target before the push (tasks.convert.uploads_early), and
how many layers one flow run converts at a time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from accel.drivers import load_driver
from accel.drivers.base import PlatformDraft
from accel.reference import Reference
from accel.store import ContentStore
from accel.transports import parse_location
from tasks.convert import layer_conversions, uploads_early

REGISTRY_TARGET = Reference.parse("registry.invalid/app:v1-zstd")


def test_a_driver_that_keeps_its_layers_uploads_early_to_a_registry():
    driver = load_driver("zstdchunked", {})
    assert uploads_early(driver, REGISTRY_TARGET, verify=False)


def test_nothing_goes_up_before_verification():
    assert not uploads_early(load_driver("estargz", {}), REGISTRY_TARGET, verify=True)


def test_a_local_target_is_written_whole_at_the_push(tmp_path: Path):
    target = parse_location(f"oci:{tmp_path}:z").reference
    assert not uploads_early(load_driver("zstdchunked", {}), target, verify=False)


def test_a_driver_whose_finish_may_replace_layers_waits_for_the_push():
    base = type(load_driver("zstdchunked", {}))

    class Merging(base):  # type: ignore[misc, valid-type]
        def finish(self, draft: PlatformDraft, store: ContentStore) -> PlatformDraft:
            return draft

    driver = Merging(base.options_model())
    assert not uploads_early(driver, REGISTRY_TARGET, verify=False)


def test_nydus_uploads_its_layer_blobs_early_unless_they_go_to_a_storage_backend(tmp_path: Path):
    # Its finish adds the merged bootstrap and may reorder the blobs, but pushes each blob as it is.
    assert uploads_early(load_driver("nydus", {}), REGISTRY_TARGET, verify=False)
    backend = {"backend_type": "localfs", "backend_config": json.dumps({"dir": str(tmp_path)})}
    assert not uploads_early(load_driver("nydus", backend), REGISTRY_TARGET, verify=False)


@pytest.mark.parametrize(("value", "expected"), [("3", 3), ("", None), ("0", None), ("x", None)])
def test_layer_conversions_at_a_time(monkeypatch, value, expected):
    monkeypatch.setenv("ACCEL_LAYER_CONVERSIONS", value)
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    assert layer_conversions() == (expected or 6)  # one per CPU unless set
