"""The intake journal: a push answered 2xx survives acceld's death; one that cannot be recorded gets 503."""

from __future__ import annotations

import threading

from fastapi.testclient import TestClient

from service.api import create_app
from service.api.app import CreationRetry
from service.intake import IntakeJournal
from tests.harness.api import DIGEST, FakeBackend, harbor, wait_until

OPEN_HOST = "open.test"


def _settings(tmp_path):
    from accel.config import load_settings

    return load_settings(
        {
            "provider": {
                "source": {OPEN_HOST: {"webhook": {"allow_unauthenticated": True}}},
                "work_dir": str(tmp_path / "work"),
            },
            "converter": {"driver": {"type": "estargz"}},
        }
    )


def test_the_journal_keeps_what_is_unsettled_across_reopening(tmp_path):
    path = tmp_path / "intake.sqlite"
    journal = IntakeJournal(path)
    first, second, third = journal.record("harbor", ["r/a:1", "r/b:1", "r/c:1"])
    journal.attempt(second, "BackendUnavailable: 503")
    journal.settle(first, "task-1")
    journal.settle(third, None, "ConfigError: no such driver")
    journal.close()

    reopened = IntakeJournal(path)
    [left] = reopened.unsettled()
    assert (left.id, left.reference, left.source, left.attempts) == (second, "r/b:1", "harbor", 1)
    reopened.forget_settled(older_than=-1)  # settled entries go; the unsettled one stays
    assert [e.id for e in reopened.unsettled()] == [second]


def test_accepted_webhooks_are_created_by_the_next_acceld_when_this_one_died_first(tmp_path):
    """Prefect does not answer: every push is answered 202 `pending`, then acceld goes away before any run
    exists. The next acceld on the same work dir creates each of them, once."""
    settings = _settings(tmp_path)
    journal_path = settings.provider.work_dir / "intake.sqlite"
    hung = FakeBackend()
    hung.gate = threading.Event()  # never set: creation hangs, as with a stopped Prefect
    sources = [f"{OPEN_HOST}/team/app{i}:v1" for i in range(5)]
    app = create_app(settings, hung, answer_within=0.1, journal=IntakeJournal(journal_path))
    with TestClient(app) as client:
        for source in sources:
            r = client.post("/api/v1/conversions", json=harbor(source))
            assert r.status_code == 202 and r.json()["pending"] == [f"{source}@{DIGEST}"], r.text
    assert hung.tasks == {}  # acceld is gone; nothing was created

    backend = FakeBackend()
    app = create_app(settings, backend, journal=IntakeJournal(journal_path), replay_every=0.05)
    with TestClient(app):
        wait_until(lambda: len(backend.tasks) == 5, timeout=30, what="the five journalled pushes")
        wait_until(lambda: not IntakeJournal(journal_path).unsettled(), timeout=30, what="settled entries")
    assert sorted(t.source for t in backend.tasks.values()) == sorted(f"{s}@{DIGEST}" for s in sources)


def test_a_push_is_refused_503_when_it_cannot_be_recorded(tmp_path):
    settings = _settings(tmp_path)
    journal = IntakeJournal(settings.provider.work_dir / "intake.sqlite")
    journal.close()  # unusable from now on, as a full or broken disk makes it
    backend = FakeBackend()
    with TestClient(create_app(settings, backend, journal=journal)) as client:
        r = client.post("/api/v1/conversions", json=harbor(f"{OPEN_HOST}/team/app:v1"))
    assert r.status_code == 503, r.text
    assert "send it again" in r.json()["reason"]
    assert backend.requests == []  # nothing was started that the sender's retry would repeat


class _RefusingBackend(FakeBackend):
    async def submit(self, request):
        raise RuntimeError("no such deployment")


def test_a_request_that_cannot_become_a_run_is_not_replayed_forever(tmp_path):
    settings = _settings(tmp_path)
    journal_path = settings.provider.work_dir / "intake.sqlite"
    retry = CreationRetry(first_delay=0.01)
    app = create_app(settings, _RefusingBackend(), creation_retry=retry, journal=IntakeJournal(journal_path))
    with TestClient(app) as client:
        r = client.post("/api/v1/conversions", json=harbor(f"{OPEN_HOST}/team/app:v1"))
    assert r.status_code == 422, r.text
    [refused] = r.json()["refused"]
    assert refused == {
        "reference": f"{OPEN_HOST}/team/app:v1@{DIGEST}",
        "reason": "RuntimeError: no such deployment",
    }
    assert IntakeJournal(journal_path).unsettled() == []
