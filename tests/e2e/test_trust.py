"""acceld as operators leave it running (issue 9): failed conversions retry, re-pushed tags convert again.

Real registry, real Prefect server, acceld with its own runner; each test uses its own repository.
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from accel import constants as mt
from accel.reference import Reference
from accel.registry import HostConfig, RegistryClient
from accel.store import ContentStore
from tests.e2e.test_acceld import (
    AUTH,
    KiB,
    assert_converted,
    harbor_payload,
    tasks_for,
    wait_task,
)
from tests.harness import imagegen, pushing
from tests.harness.services import SUFFIX

pytestmark = [pytest.mark.registry, pytest.mark.prefect]


@pytest.fixture(scope="module")
def source_store(tmp_path_factory: pytest.TempPathFactory) -> ContentStore:
    return ContentStore(tmp_path_factory.mktemp("e2e-trust-source"))


def push_to(ref: Reference, store: ContentStore, seed: int) -> Reference:
    """A small synthetic image (distinct per seed) pushed to `ref`; returns `ref` pinned to its digest."""
    extra = imagegen.TarBuilder(auto_parents=True)
    extra.file("seed.txt", f"trust seed {seed}\n".encode())
    image = imagegen.build_image([*imagegen.standard_layers(32 * KiB), extra], store)
    with RegistryClient({ref.registry: HostConfig()}) as client:
        return ref.with_digest(pushing.push(client, store, ref, image))


def post(acceld, body: dict) -> dict:
    r = httpx.post(f"{acceld.url}/api/v1/conversions", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 202, r.text
    [task] = r.json()["tasks"]
    return task


def converted_from(target: Reference) -> str:
    with RegistryClient({target.registry: HostConfig()}) as client:
        _, raw = client.fetch_manifest(target)
    return json.loads(raw)["annotations"][mt.ACCEL_SOURCE_DIGEST]


def test_a_failed_conversion_is_retried_by_the_same_webhook(acceld, registry, source_store):
    """The first event names a digest the repository does not hold yet (the run fails); once it is
    pushed, the same event starts a new run that converts it, and a third event is that COMPLETED run."""

    def fresh() -> Reference:
        return Reference.parse(f"{registry.host}/e2e/{uuid.uuid4().hex[:10]}:retry")

    elsewhere = push_to(fresh(), source_store, 1)
    ref = fresh().with_digest(elsewhere.digest)
    first = post(acceld, harbor_payload(ref))
    assert wait_task(acceld, first["id"], timeout=180)["status"] == "FAILED"

    assert push_to(ref.with_tag("retry"), source_store, 1) == ref  # the same image, now in this repository
    second = post(acceld, harbor_payload(ref))
    assert second["id"] != first["id"]
    assert wait_task(acceld, second["id"], timeout=180)["status"] == "COMPLETED"
    assert_converted(ref)

    assert post(acceld, harbor_payload(ref))["id"] == second["id"]  # COMPLETED is still one conversion
    statuses = sorted(t["status"] for t in tasks_for(acceld, ref))
    assert statuses == ["COMPLETED", "FAILED"]


def test_a_re_pushed_tag_is_converted_again(acceld, registry, source_store):
    """A tag-only request (what `accelctl task create host/repo:tag` sends) is keyed by the digest the tag
    names when it arrives: after a re-push of the tag the new digest is converted."""
    tag_ref = Reference.parse(f"{registry.host}/e2e/{uuid.uuid4().hex[:10]}:moving")
    by_tag = {"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": str(tag_ref)}]}}
    target = tag_ref.with_tag(f"moving{SUFFIX}")

    old = push_to(tag_ref, source_store, 2)
    first = post(acceld, by_tag)
    assert first["source"] == str(old)
    assert wait_task(acceld, first["id"], timeout=180)["status"] == "COMPLETED"
    assert converted_from(target) == old.digest

    new = push_to(tag_ref, source_store, 3)
    assert new.digest != old.digest
    second = post(acceld, by_tag)
    assert second["id"] != first["id"]
    assert second["source"] == str(new)
    assert wait_task(acceld, second["id"], timeout=180)["status"] == "COMPLETED"
    assert converted_from(target) == new.digest
