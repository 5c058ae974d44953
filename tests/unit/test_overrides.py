"""accelctl's skopeo-like flags (`--src-creds`, `--dest-tls-verify`, `--override-arch`, …): bound to the
registry hosts they are for, applied to one request's context only, and never shown."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from accel.context import context_for
from accel.errors import ConfigError
from accel.oci import Platform
from accel.overrides import HostAccess, Overrides, overriding
from service import accelctl
from service.onetime import ExitCode, request_overrides
from tests.harness import configs

SECRET = "s3cr:et"  # a password with a colon


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_flags_bind_to_the_source_and_target_hosts() -> None:
    overrides = request_overrides(
        "src.example/team/app:v1",
        "dst.example/team/app:v1-esgz",
        {
            "src_creds": f"alice:{SECRET}",
            "dest_creds": "bob:pw",
            "dest_tls_verify": False,
            "platform": "linux/arm64",
        },
    )
    assert overrides is not None
    assert overrides.hosts == {
        "src.example": HostAccess(_auth("alice", SECRET)),
        "dst.example": HostAccess(_auth("bob", "pw"), tls_verify=False),
    }
    assert overrides.platforms() == [Platform.parse("linux/arm64")]
    assert SECRET not in repr(overrides) and _auth("alice", SECRET) not in repr(overrides)
    # Without --target the target is beside the source: one host, one account.
    same = request_overrides("src.example/team/app:v1", None, {"dest_creds": "bob:pw"})
    assert same is not None and same.hosts == {"src.example": HostAccess(_auth("bob", "pw"))}
    assert request_overrides("src.example/team/app:v1", None, {}) is None


def test_flags_that_cannot_apply_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"two accounts for src\.example"):
        request_overrides("src.example/a:v1", None, {"src_creds": "a:1", "dest_creds": "b:2"})
    with pytest.raises(ConfigError, match=r"--src-creds: .* is not in a registry"):
        request_overrides(f"oci:{tmp_path}/in:v1", None, {"src_creds": "a:1"})
    with pytest.raises(ConfigError, match="--dest-creds: credentials must be USER:PASSWORD"):
        request_overrides("src.example/a:v1", None, {"dest_creds": ":pw"})
    with pytest.raises(ConfigError, match="os/arch"):
        request_overrides("src.example/a:v1", None, {"platform": "linux"})


def test_a_context_under_overrides_has_them_and_the_config_s_own_does_not(tmp_path: Path) -> None:
    config = configs.write_config(tmp_path / "config.yaml", {"src.example": {}}, [configs.driver("estargz")])
    plain = context_for(config)
    overrides = Overrides(
        hosts={"src.example": HostAccess(_auth("alice", SECRET), tls_verify=False)}, platform="linux/arm64"
    )
    with overriding(overrides):
        ctx = context_for(config)
        assert context_for(config) is ctx  # one per request's overrides, shared by its task runs
    host = ctx.settings.provider.source["src.example"]
    assert host.auth is not None and host.auth.get_secret_value() == _auth("alice", SECRET) and host.insecure
    assert ctx.settings.converter.platform_filter() == [Platform.parse("linux/arm64")]
    assert ctx.store.root == plain.store.root  # the same content store (and Prefect task cache)
    assert context_for(config) is plain and plain.settings.provider.source["src.example"].auth is None
    assert SECRET not in repr(ctx.settings) and _auth("alice", SECRET) not in repr(ctx.client)


def test_a_missing_password_is_asked_for_only_on_a_terminal(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    config = configs.write_config(tmp_path / "config.yaml", {"src.example": {}}, [configs.driver("estargz")])
    code = accelctl.main(["convert", "--config", str(config), "--src-creds", "alice", "src.example/a:v1"])
    assert code == ExitCode.USAGE
    assert "--src-creds alice: no password, and no terminal to ask for it on" in capsys.readouterr().err

    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("getpass.getpass", lambda prompt: SECRET)
    args = accelctl.build_parser().parse_args(
        ["convert", "--src-creds", "alice", "--dest-tls-verify=false", "--override-arch", "arm64", "x/y:z"]
    )
    access = accelctl._access(args)
    assert access == {"src_creds": f"alice:{SECRET}", "dest_tls_verify": False, "platform": "linux/arm64"}


def test_tls_verify_reads_as_skopeo_does() -> None:
    parse = accelctl.build_parser().parse_args
    assert parse(["convert", "--src-tls-verify=1", "x/y:z"]).src_tls_verify is True
    assert parse(["convert", "--src-tls-verify=false", "x/y:z"]).src_tls_verify is False
    assert parse(["convert", "x/y:z"]).src_tls_verify is None
    with pytest.raises(SystemExit):
        parse(["convert", "--dest-tls-verify=maybe", "x/y:z"])


def test_the_detach_line_names_the_run_and_how_to_cancel_it() -> None:
    """A second Ctrl-C leaves the runner's run going: one line with the command that cancels it."""
    line = accelctl._detached_line("r.example/a:v1", {"id": "0193-run", "api_url": "http://127.0.0.1:1/api"})
    assert line.startswith("accelctl: detached: the conversion of r.example/a:v1 continues")
    assert "`PREFECT_API_URL=http://127.0.0.1:1/api " in line and "flow-run cancel 0193-run`" in line
    assert "\n" not in line
    assert "accelctl server stop" in accelctl._detached_line("r.example/a:v1", {})  # before the run exists
