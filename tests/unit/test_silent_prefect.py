"""Degraded mode (issue 9): with a Prefect API that accepts connections and never answers, acceld's read
endpoints answer 503 in seconds instead of hanging."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from accel.config import load_settings
from service.api import create_app
from service.api import prefect_backend as backend_module
from service.api.prefect_backend import PrefectBackend


@pytest.fixture
def silent_api() -> Iterator[str]:
    """A TCP server that accepts connections and reads requests, never answering; yields its API URL."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/api"
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    server.close()


def test_reads_are_503_when_prefect_does_not_answer(silent_api, tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setattr(backend_module, "ANSWER_WITHIN", 0.5)
    settings = load_settings(
        {"provider": {"work_dir": str(tmp_path / "work")}, "converter": {"driver": {"type": "estargz"}}}
    )
    with temporary_settings({PREFECT_API_URL: silent_api}):
        backend = PrefectBackend(settings, str(tmp_path / "config.yaml"))
        with TestClient(create_app(settings, backend)) as client:
            listed = client.get("/api/v1/conversions")
            got = client.get(f"/api/v1/conversions/{uuid.uuid4()}")
    for r in (listed, got):
        assert r.status_code == 503, r.text
        assert "did not answer within 0.5 s" in r.json()["reason"]
