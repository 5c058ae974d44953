"""One-time mode's local services without starting any: bad input fails before Prefect, stale records.

The real start, reuse and stop are in tests/integration/test_local_runner.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import configs

REPO = Path(__file__).resolve().parents[2]


def _env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["ACCEL_STATE_DIR"] = str(state)
    return env


# Runs accelctl in a fresh interpreter and reports whether Prefect was ever imported.
_PROBE = """
import sys
from service.accelctl import main
code = main(sys.argv[1:])
imported = any(m == "prefect" or m.startswith("prefect.") for m in sys.modules)
print("PREFECT_IMPORTED" if imported else "NO_PREFECT")
sys.exit(code)
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return configs.write_config(tmp_path / "config.yaml", {"registry.invalid": {}}, [configs.driver("nydus")])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["registry.invalid/app:v1", "--driver", "estargz"], "driver 'estargz' is not configured"),
        (["registry.invalid/UPPER:v1"], "invalid repository 'UPPER'"),
        (["registry.invalid/app:bad tag"], "invalid image reference"),
    ],
)
def test_bad_input_fails_before_prefect_and_starts_nothing(tmp_path, config, args, message):
    state = tmp_path / "state"
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, "convert", "--config", str(config), *args],
        cwd=REPO,
        env=_env(state),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2  # ExitCode.USAGE: the command line, config or reference is wrong
    assert message in proc.stderr and "accelctl: conversion of" in proc.stderr
    assert "NO_PREFECT" in proc.stdout
    assert not (state / "local").exists() and not (state / "prefect").exists()


def test_bad_config_fails_before_prefect(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text("converter:\n  drivers: 7\n")
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, "convert", "--config", str(bad), "registry.invalid/app:v1"],
        cwd=REPO,
        env=_env(tmp_path / "state"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2  # ExitCode.USAGE
    assert f"{bad} is invalid" in proc.stderr
    assert "NO_PREFECT" in proc.stdout
    assert not (tmp_path / "state" / "local").exists()


@pytest.fixture
def local(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCEL_STATE_DIR", str(tmp_path / "state"))
    from service import local

    return local


def test_a_record_naming_a_dead_process_is_not_a_server(local):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (local.local_dir() / "server.json").write_text(json.dumps({"pid": gone.pid, "port": 1}))
    (local.local_dir() / "runner.pid").write_text(str(gone.pid))

    assert local.server_info() is None and local.running_server() is None
    assert local.runner_pid() is None
    assert local.status()["server"] is None and local.status()["runner"] is None
    assert local.stop() == []
    assert not (local.local_dir() / "server.json").exists()  # the stale record is cleared
    assert not (local.local_dir() / "runner.pid").exists()


def test_a_recycled_pid_is_never_signalled(local):
    """A pid that now belongs to another program (here: this test) is neither reused nor stopped."""
    (local.local_dir() / "server.json").write_text(json.dumps({"pid": os.getpid(), "port": 1}))
    (local.local_dir() / "runner.pid").write_text(str(os.getpid()))

    assert local.server_info() is None and local.runner_pid() is None
    assert local.stop() == []  # we are still alive to assert this


def test_a_stale_runner_socket_is_not_a_runner(local):
    path = local.runner_socket()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))  # bound, never listening, then closed: the file stays behind
    listener.close()
    assert path.exists()
    assert local.connect_runner() is None


def test_server_status_without_a_server(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "service.accelctl", "server", "status", "--json"],
        cwd=REPO,
        env=_env(tmp_path / "state"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3
    assert json.loads(proc.stdout)["server"] is None


def test_a_server_that_does_not_answer_yet_is_waited_for_never_replaced(local):
    """A recorded server that is ours but not healthy (still starting, or hung) is not replaced by a second
    one: the call fails with what to do, and `stop` ends it."""
    from tests.harness.registry import free_port

    port = free_port()  # nothing listens: the health check never answers
    # The command-line shape of a real one (`-m service.prefectserver --host H --port P`); it only sleeps.
    script = "import time; time.sleep(120)"
    fake = subprocess.Popen(
        [sys.executable, "-c", script, "service.prefectserver", "--host", "127.0.0.1", "--port", str(port)]
    )
    try:
        record = json.dumps({"pid": fake.pid, "port": port})
        (local.local_dir() / "server.json").write_text(record)
        assert local.server_info() == local.ServerInfo(pid=fake.pid, port=port)

        with pytest.raises(local.LocalServiceError, match=r"does not answer after 1s.*accelctl server stop"):
            local.ensure_server(timeout=1)
        assert fake.poll() is None  # not killed
        assert (local.local_dir() / "server.json").read_text() == record  # and no second server recorded

        assert local.stop() == [f"Prefect server (pid {fake.pid}, http://127.0.0.1:{port}/api)"]
        assert fake.wait(timeout=30) is not None
        assert not (local.local_dir() / "server.json").exists()
    finally:
        if fake.poll() is None:
            fake.kill()
            fake.wait()


def test_relative_local_paths_are_sent_to_the_runner_from_the_callers_directory(tmp_path, monkeypatch):
    from accel.transports.names import LOCAL_TRANSPORTS
    from service import accelctl

    # The client spells the local transports itself (no engine import): they must stay the engine's.
    assert tuple(f"{name}:" for name in LOCAL_TRANSPORTS) == accelctl.LOCAL_TRANSPORT_PREFIXES
    monkeypatch.chdir(tmp_path)
    assert accelctl._absolute_location("oci:out/app:v1") == f"oci:{tmp_path}/out/app:v1"
    assert accelctl._absolute_location("docker-archive:img.tar") == f"docker-archive:{tmp_path}/img.tar"
    for unchanged in ("oci:/abs/app:v1", "registry.invalid/app:v1", "docker://registry.invalid/a:b", None):
        assert accelctl._absolute_location(unchanged) == unchanged


def test_each_class_of_failure_has_its_exit_code():
    from accel.errors import ConfigError, DriverError, InvalidReference, LimitExceeded
    from accel.registry.errors import (
        AuthenticationError,
        Forbidden,
        NotFound,
        RegistryUnreachable,
        TransientRegistryError,
    )
    from service.onetime import ExitCode, describe_failure

    expected = {
        ConfigError("x"): ExitCode.USAGE,
        InvalidReference("x"): ExitCode.USAGE,
        NotFound("x"): ExitCode.NOT_FOUND,
        AuthenticationError("x"): ExitCode.DENIED,
        Forbidden("x"): ExitCode.DENIED,
        RegistryUnreachable("x"): ExitCode.UNREACHABLE,
        TransientRegistryError("x"): ExitCode.UNREACHABLE,
        LimitExceeded("x"): ExitCode.REFUSED,
        DriverError("x"): ExitCode.FAILED,
        KeyError("x"): ExitCode.BUG,
    }
    for exc, code in expected.items():
        assert describe_failure(exc).code is code, exc
    assert "this is a bug in accel" in describe_failure(KeyError("x")).message
    assert describe_failure(NotFound("line one\nline two")).message == "line one line two"
