"""acceld is secure by default: it will not serve webhooks anyone could send unless told so explicitly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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
