"""Strict input (issue 9): references follow the distribution grammar before any run is created, and no
webhook body, however malformed, is answered with a 5xx or starts work."""

from __future__ import annotations

import json
import random

import pytest
from fastapi.testclient import TestClient

from accel.config import load_settings
from accel.errors import InvalidReference
from accel.reference import Reference
from service.api import create_app
from tests.harness.api import DIGEST, FakeBackend, harbor, malformed_bodies

HOST = "harbor.test"
SECRET = "Bearer fuzz"
AUTH = {"Authorization": SECRET}

MALFORMED_REFERENCES = [
    f"{HOST}/a/b:vé",  # non-ASCII tag
    f"{HOST}/a/b:版本",
    f"{HOST}/a/b@md5:{'0' * 32}",
    f"{HOST}/a/b@sha256:{'A' * 64}",  # upper-case hex
    f"{HOST}/a/b@sha256:{'a' * 63}",  # wrong length
    f"{HOST}/a/b@sha256:{'a' * 65}",
    f"{HOST}/{'a' * 250}:v1",  # name over 255 characters
    f"{HOST}/{'/'.join(['abcdefghij'] * 24)}:v1",
    f"{HOST}/a/b:{'t' * 129}",
    f"{HOST}/A/b:v1",
]


@pytest.mark.parametrize("text", MALFORMED_REFERENCES)
def test_the_reference_grammar_refuses(text):
    with pytest.raises(InvalidReference):
        Reference.parse(text)


def test_the_grammar_still_takes_what_registries_use():
    for text in (
        f"{HOST}/a/b:v1.2-rc_3",
        f"{HOST}/a/b@{DIGEST}",
        f"{HOST}/a/b:v1@sha512:{'0' * 128}",
        f"{HOST}/{'a' * 240}:v1",  # 11 + 1 + 240 = 252 characters
        "nginx",
    ):
        Reference.parse(text)


@pytest.fixture
def app_and_backend(tmp_path):
    settings = load_settings(
        {
            "provider": {
                "source": {HOST: {"webhook": {"auth_header": SECRET}}},
                "work_dir": str(tmp_path / "work"),
            },
            "converter": {"driver": {"type": "estargz"}},
        }
    )
    backend = FakeBackend()
    with TestClient(create_app(settings, backend)) as client:
        yield client, backend


@pytest.mark.parametrize("text", MALFORMED_REFERENCES)
def test_malformed_references_are_400_with_the_reason(app_and_backend, text):
    client, backend = app_and_backend
    for body in (
        harbor(text, digest=None, tag=None),
        harbor(f"{HOST}/a/b", digest=None, tag=text.split(":")[-1]),
    ):
        r = client.post("/api/v1/conversions", json=body, headers=AUTH)
        if r.status_code == 202:  # the second form only carries the tag part: a valid tag is fine there
            assert body["event_data"]["resources"][0]["tag"].isascii()
            continue
        assert r.status_code == 400, (text, r.text)
        assert r.json()["reason"]
    assert all(str(q.source).isascii() for q in backend.requests)
    assert not any(q.source.digest and "md5" in q.source.digest for q in backend.requests)


def fuzzed_bodies(count: int, seed: int = 9) -> list[bytes]:
    """Malformed webhook bodies: the harness's 50, then valid events with one field broken at random
    (wrong type, malformed reference, digest or tag, missing key), then raw byte mutations."""
    rng = random.Random(seed)
    bodies = list(malformed_bodies())
    bad_values = [None, 7, 1.5, True, [], {}, "", " ", "\x00", "é" * 3, *MALFORMED_REFERENCES]
    while len(bodies) < count:
        event = harbor(f"{HOST}/a/b:v1")
        resource = event["event_data"]["resources"][0]
        choice = rng.randrange(5)
        if choice == 0:
            resource["resource_url"] = rng.choice(bad_values)
        elif choice == 1:
            resource["digest"] = rng.choice([7, "md5:" + "0" * 32, "sha256:" + "A" * 64, "sha256:abc", "x"])
        elif choice == 2:
            resource["tag"] = rng.choice([7, [], "-x", "é", "t" * 129, "a b", "a/b"])
        elif choice == 3:
            event[rng.choice(["type", "event_data"])] = rng.choice(bad_values[:6])
        else:
            event["event_data"]["resources"] = rng.choice([None, "x", 3, [None], [[]], [{"tag": "v1"}]])
        data = json.dumps(event).encode()
        if rng.random() < 0.2:  # and some byte-level damage on top, past the event type (a damaged
            # type would make a well-formed event of another kind, rightly acknowledged and ignored)
            raw = bytearray(data)
            start = data.index(b'"occur_at"')
            raw[rng.randrange(start, len(raw))] = rng.choice(b'{}[]":,\x00\xff')
            data = bytes(raw)
        bodies.append(data)
    return bodies


def test_a_thousand_fuzzed_bodies_are_all_4xx_and_start_nothing(app_and_backend):
    client, backend = app_and_backend
    bodies = fuzzed_bodies(1000)
    assert len(bodies) == 1000
    answers: dict[int, int] = {}
    for i, body in enumerate(bodies):
        path = "/api/v1/conversions" if i % 2 == 0 else "/api/v1/notifications/distribution"
        r = client.post(path, content=body, headers={**AUTH, "Content-Type": "application/json"})
        answers[r.status_code] = answers.get(r.status_code, 0) + 1
        assert 400 <= r.status_code < 500, (path, body[:120], r.text)
    assert not any(status >= 500 for status in answers), answers
    assert backend.requests == [] and backend.tasks == {}
