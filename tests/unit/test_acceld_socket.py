"""acceld as the Go service's clients see it: its unix socket, its error bodies, its metric names.

The servers are the real ones (uvicorn on a unix socket and a loopback TCP socket, `ApiServers`) over an
in-memory backend. Requests are written byte for byte as the Go accelctl (`pkg/client`) sends them: no
Authorization header, `Content-Type: application/json`, Go's `json.Marshal` of its one-resource payload.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from accel.config import load_settings
from service.acceld import ApiServers, bind_unix_socket
from service.api import create_app
from service.metrics import Metrics
from tests.harness.api import FakeBackend, wait_until

HOST = "harbor.test:8443"
SECRET = "Bearer s3cret"
SOURCE = f"{HOST}/library/app:v1"
# Go's json.Marshal of model.Payload{Type, EventData{Resources: [{ResourceURL}]}}: fields in struct order.
GO_PAYLOAD = json.dumps(
    {"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": SOURCE}]}}, separators=(",", ":")
).encode()


def go_client_request(extra_headers: str = "") -> bytes:
    """What `accelctl --addr localhost:2077 task create SOURCE` writes (net/http adds Host, User-Agent,
    Content-Length and Accept-Encoding)."""
    return (
        "POST /api/v1/conversions?sync=false HTTP/1.1\r\n"
        "Host: localhost:2077\r\n"
        "User-Agent: Go-http-client/1.1\r\n"
        f"Content-Length: {len(GO_PAYLOAD)}\r\n"
        "Content-Type: application/json\r\n"
        f"{extra_headers}"
        "Accept-Encoding: gzip\r\n"
        "\r\n"
    ).encode() + GO_PAYLOAD


def exchange(sock: socket.socket, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on a connected socket; (status, headers, body)."""
    with sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed before the response headers: {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
        length = int(headers["content-length"])
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, "connection closed inside the response body"
            body += chunk
    return int(status_line.split()[1]), headers, body


@pytest.fixture
def acceld(tmp_path: Path) -> Iterator[tuple[Path, tuple[str, int], FakeBackend]]:
    settings = load_settings(
        {
            "server": {"name": "API", "uds": str(tmp_path / "run" / "acceld.sock")},
            "provider": {"source": {HOST: {"webhook": {"auth_header": SECRET}}}, "work_dir": str(tmp_path)},
            "converter": {"driver": {"type": "estargz"}, "rules": [{"tag_suffix": "-esgz"}]},
        }
    )
    backend = FakeBackend()
    app = create_app(settings, backend, Metrics(settings.server.name))
    assert settings.server.uds is not None
    uds = bind_unix_socket(settings.server.uds, settings.server.uds_file_mode)
    tcp = socket.create_server(("127.0.0.1", 0))
    servers = ApiServers(app, tcp=tcp, uds=uds, log_level="warning")
    thread = threading.Thread(target=asyncio.run, args=(servers.serve(),), daemon=True)
    thread.start()
    try:
        wait_until(lambda: servers.started, timeout=30, what="the API servers to start")
        yield settings.server.uds, tcp.getsockname()[:2], backend
    finally:
        servers.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()


def unix_connection(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    return sock


def test_socket_is_private_and_a_stale_one_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "acceld.sock"
    first = bind_unix_socket(path, 0o600)
    first.close()  # a previous acceld's socket file stays behind
    with bind_unix_socket(path, 0o660):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    regular = tmp_path / "not-a-socket"
    regular.write_text("keep me")
    with pytest.raises(OSError, match="not a socket"):
        bind_unix_socket(regular, 0o600)
    assert regular.read_text() == "keep me"


def test_go_accelctl_request_over_the_socket_gets_a_task_and_over_tcp_a_401(acceld) -> None:
    uds, tcp, backend = acceld
    assert stat.S_IMODE(os.stat(uds).st_mode) == 0o600

    status, _, body = exchange(unix_connection(uds), go_client_request())
    assert status == 202, body
    [task] = json.loads(body)["tasks"]
    assert task["status"] == "PROCESSING" and task["id"] in backend.tasks
    assert [str(r.source) for r in backend.requests] == [SOURCE]

    status, _, body = exchange(socket.create_connection(tcp), go_client_request())
    assert status == 401
    error = json.loads(body)
    # The Go client prints `message`; clients matching on `code` get acceld's.
    assert error["code"] == "ERR_UNAUTHORIZED" and "Authorization" in error["message"]
    assert len(backend.requests) == 1

    status, _, _ = exchange(socket.create_connection(tcp), go_client_request(f"Authorization: {SECRET}\r\n"))
    assert status == 202


def test_error_bodies_carry_acceld_codes(acceld) -> None:
    uds, _, _ = acceld

    def call(request: bytes) -> tuple[int, dict[str, str]]:
        status, _, body = exchange(unix_connection(uds), request)
        return status, json.loads(body)

    status, body = call(b"GET /api/v1/nothing-here HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert (status, body["code"]) == (404, "ERR_INVALID_ENDPOINT") and body["message"]
    bad = b"{not json"
    status, body = call(
        b"POST /api/v1/conversions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(bad), bad)
    )
    assert (status, body["code"]) == (400, "ERR_ILLEGAL_PARAMETER") and body["message"] == body["reason"]
    unknown = GO_PAYLOAD.replace(HOST.encode(), b"elsewhere.test")
    status, body = call(
        b"POST /api/v1/conversions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(unknown), unknown)
    )
    # Even over the socket, a registry acceld has no config for is refused.
    assert (status, body["code"]) == (403, "ERR_UNAUTHORIZED")


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_in_acceld_names(acceld) -> None:
    uds, tcp, _ = acceld

    def scrape() -> str:  # over the socket: metrics take the webhook header over TCP
        _, _, body = exchange(unix_connection(uds), b"GET /metrics HTTP/1.1\r\nHost: localhost:2077\r\n\r\n")
        return body.decode()

    labels = {"code": "202", "host": "localhost:2077", "method": "POST", "url": "/api/v1/conversions"}
    before = scrape()
    exchange(unix_connection(uds), go_client_request())
    exchange(socket.create_connection(tcp), go_client_request())  # 401
    after = scrape()
    name = "acceleration_service_api_requests_total"
    assert _sample(after, name, **labels) == _sample(before, name, **labels) + 1
    assert (
        _sample(after, name, **(labels | {"code": "401"}))
        == _sample(before, name, **(labels | {"code": "401"})) + 1
    )
    for family in ("request_duration_seconds", "request_size_bytes", "response_size_bytes"):
        assert _sample(after, f"acceleration_service_api_{family}_count", **labels) >= 1
    # Go's approximation: path, method, protocol, headers but Host, the host, the body.
    request_size = _sample(after, "acceleration_service_api_request_size_bytes_sum", **labels)
    headers = ["User-Agent", "Go-http-client/1.1", "Content-Length", str(len(GO_PAYLOAD)), "Content-Type"]
    headers += ["application/json", "Accept-Encoding", "gzip"]
    expected = len("/api/v1/conversions") + len("POST") + len("HTTP/1.1") + sum(map(len, headers))
    assert request_size == expected + len("localhost:2077") + len(GO_PAYLOAD)
    # /metrics itself is not counted, and process metrics are there as in Go's registry.
    assert 'url="/metrics"' not in after
    assert "process_cpu_seconds_total" in after or "process_start_time_seconds" in after


def test_accelctl_over_the_socket_needs_no_auth_header(acceld, capsys: pytest.CaptureFixture[str]) -> None:
    from service import accelctl

    uds, tcp, backend = acceld
    assert accelctl.main(["task", "create", "--server", f"unix:{uds}", SOURCE]) == 0
    [task_id] = capsys.readouterr().out.split()
    assert task_id in backend.tasks
    # acceld's `--addr host:port` works too; without the header TCP refuses, and the message is printed.
    assert accelctl.main(["task", "create", "--addr", f"{tcp[0]}:{tcp[1]}", SOURCE]) == 1
    assert "Authorization header missing" in capsys.readouterr().err
    assert accelctl.main(["task", "list", "--server", f"unix:{uds}", "--json"]) == 0
    assert task_id in capsys.readouterr().out


def test_accelctl_config_check_is_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from service import accelctl

    clean = tmp_path / "clean.yaml"
    clean.write_text("server: {uds: /run/accel/acceld.sock}\nconverter: {driver: {type: estargz}}\n")
    assert accelctl.main(["config", "check", str(clean)]) == 0
    assert f"{clean}: ok" in capsys.readouterr().out
    typo = tmp_path / "typo.yaml"
    typo.write_text("converter: {driver: {type: estargz, config: {docker2ocl: true}}, workers: 3}\n")
    assert accelctl.main(["config", "check", str(typo)]) == 1
    err = capsys.readouterr().err
    assert (
        "converter.driver.config.docker2ocl: unknown key" in err and "converter.workers: unknown key" in err
    )
