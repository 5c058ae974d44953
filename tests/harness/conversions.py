"""Asking a running acceld (tests/harness/services.Acceld) about its conversions, and checking what it
pushed: the e2e tests judge a conversion by the task API and the registry, never by acceld's internals."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from accel import constants as mt
from accel.reference import Reference
from accel.registry import HostConfig, RegistryClient
from tests.harness.services import SUFFIX, WEBHOOK_AUTH, Acceld


def tasks_for(acceld: Acceld, ref: Reference) -> list[dict[str, Any]]:
    """The tasks acceld lists for `ref`'s repository and tag (any digest)."""
    listed = httpx.get(
        f"{acceld.url}/api/v1/conversions", params={"limit": 1000}, headers=WEBHOOK_AUTH, timeout=30
    ).json()
    return [t for t in listed if t["source"].startswith(f"{ref.name}:")]


def wait_listed(acceld: Acceld, ref: Reference, timeout: float = 60) -> list[dict[str, Any]]:
    """Tasks for `ref` once listed (an answer may leave a slow run creation "pending")."""
    deadline = time.monotonic() + timeout
    while not (listed := tasks_for(acceld, ref)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return listed


def wait_task(acceld: Acceld, task_id: str, timeout: float = 120.0) -> dict[str, Any]:
    """The task once it is no longer PROCESSING, or as it stands after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        task = httpx.get(
            f"{acceld.url}/api/v1/conversions/{task_id}", headers=WEBHOOK_AUTH, timeout=30
        ).json()
        if task["status"] != "PROCESSING" or time.monotonic() > deadline:
            return task
        time.sleep(0.5)


def assert_converted(ref: Reference) -> dict[str, Any]:
    """The target tag exists, is eStargz, and records the source digest it was made from."""
    target = ref.with_tag(f"{ref.tag}{SUFFIX}")
    with RegistryClient({ref.registry: HostConfig()}) as client:
        _, raw = client.fetch_manifest(target)
    manifest = json.loads(raw)
    assert manifest["annotations"][mt.ACCEL_SOURCE_DIGEST] == ref.digest
    assert all(mt.ESTARGZ_TOC_DIGEST in layer.get("annotations", {}) for layer in manifest["layers"])
    return manifest
