"""acceld is secure by default: it will not serve webhooks anyone could send unless told so explicitly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service import accelctl
from tests.harness.acceld_samples import SAMPLES

pytestmark = pytest.mark.runtime  # each test starts `python -m service.acceld` and waits for it

REPO = Path(__file__).resolve().parents[2]


def start_acceld(tmp_path: Path, webhook: dict | None, **extra: dict) -> subprocess.CompletedProcess[str]:
    host = {} if webhook is None else {"webhook": webhook}
    config = {
        "provider": {"source": {"registry.test": host}, "work_dir": str(tmp_path / "work")},
        "converter": {"driver": {"type": "estargz"}},
        **extra,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return run_acceld(tmp_path, path)


def run_acceld(tmp_path: Path, path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    # No Prefect API: an acceld that gets past the auth check stops at the next one, without a server.
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_API_URL="")
    return subprocess.run(
        [sys.executable, "-m", "service.acceld", "--config", str(path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("webhook", [None, {}, {"auth_header": ""}, {"auth_header": None}])
def test_refuses_to_start_without_webhook_auth(tmp_path, webhook):
    done = start_acceld(tmp_path, webhook)
    assert done.returncode == 2
    assert "registry.test" in done.stderr and "webhook.auth_header" in done.stderr
    assert "allow_unauthenticated" in done.stderr
    assert "Traceback" not in done.stderr


def test_explicitly_unauthenticated_host_starts_with_a_warning(tmp_path):
    done = start_acceld(tmp_path, {"allow_unauthenticated": True})
    assert "WITHOUT authentication" in done.stderr and "registry.test" in done.stderr
    assert "no Prefect API configured" in done.stderr  # past the auth check


def test_a_configured_auth_header_starts(tmp_path):
    done = start_acceld(tmp_path, {"auth_header": "Bearer x"})
    assert "webhook.auth_header" not in done.stderr
    assert "no Prefect API configured" in done.stderr


@pytest.mark.parametrize("cron", ["61 * * * *", "0 25 * * *", "* * * 13 *"])
def test_an_impossible_bulk_schedule_is_a_config_error_at_load(tmp_path, cron):
    done = start_acceld(tmp_path, {"auth_header": "Bearer x"}, bulk={"schedule": cron})
    assert done.returncode == 2
    assert "bulk.schedule" in done.stderr and cron in done.stderr
    assert "Traceback" not in done.stderr


# --- acceld's own sample configs: `accelctl config check` and acceld agree ------------------------------


def _problem_of_config_check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = accelctl.main(["config", "check", str(path)])
    captured = capsys.readouterr()
    prefix = f"accelctl: {path}: acceld would refuse to start: "
    lines = [line.removeprefix(prefix) for line in captured.err.splitlines() if line.startswith(prefix)]
    return code, "\n".join(lines) or captured.out.strip()


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_config_check_and_acceld_agree_on_each_acceld_sample(tmp_path, capsys, sample):
    """Each sample lists a host (`localhost`) without a webhook auth_header: `accelctl config check` and
    acceld refuse it with the same one line, which names where to add what; with exactly that added, both
    accept it."""
    path = tmp_path / sample
    path.write_text(
        SAMPLES[sample].replace(
            "  work_dir: /tmp\n  gcpolicy:", f"  work_dir: {tmp_path / 'work'}\n  gcpolicy:"
        )
    )
    code, problem = _problem_of_config_check(path, capsys)
    done = run_acceld(tmp_path, path)
    assert code == 1 and done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"acceld: {problem}"]  # the same line, and only it
    assert "provider.source.localhost" in problem and "allow_unauthenticated: true" in problem

    # The fix as the line spells it: the YAML between the first backticks, under the path it names.
    fix = yaml.safe_load(re.search(r"Add `([^`]+)` under provider\.source\.(\S+?),", problem)[1])
    host = re.search(r"under provider\.source\.(\S+?),", problem)[1]
    data = yaml.safe_load(path.read_text())
    data["provider"]["source"][host] = {**(data["provider"]["source"][host] or {}), **fix}
    path.write_text(yaml.safe_dump(data))
    assert _problem_of_config_check(path, capsys) == (0, f"{path}: ok")
    done = run_acceld(tmp_path, path)
    assert "webhook.auth_header" not in done.stderr
    assert "no Prefect API configured" in done.stderr  # past every config check acceld makes
