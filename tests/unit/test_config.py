import base64
from pathlib import Path

import pytest

from accel.config import check_cron, check_file, check_settings, load_file, load_settings, parse_size
from accel.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_acceld_layout_loads(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"""
server: {{name: API, host: 0.0.0.0, port: 2077}}
metric: {{enabled: true}}
provider:
  source:
    hub.harbor.com:
      auth: {_auth("robot$accel", "pa:ss")}
      insecure: true
      webhook: {{auth_header: secret-header}}
    localhost:
  work_dir: work
  gcpolicy: {{threshold: 1000MB}}
  cache_size: 200
  cache_version: v1
converter:
  worker: 5
  harbor_annotation: true
  platforms: linux/amd64,linux/arm64/v8
  driver:
    type: estargz
    config: {{work_dir: /tmp, compression_level: 6}}
  rules:
    - tag_suffix: -esgz
    - cache_tag: esgz-cache
"""
    )
    s = load_file(cfg)
    assert s.provider.work_dir == tmp_path / "work"  # relative to the config file
    assert s.host("hub.harbor.com").insecure is True
    assert s.host("localhost") is None or s.host("localhost").auth is None
    assert [str(p) for p in s.converter.platform_filter()] == ["linux/amd64", "linux/arm64/v8"]
    assert s.converter.tag_suffix == "-esgz"
    assert s.converter.cache_tag == "esgz-cache"
    driver = s.converter.find_driver("estargz")
    assert s.converter.suffix_for(driver) == "-esgz"
    assert "work_dir" not in driver.driver_config()
    # Secrets never show in reprs.
    assert "pa:ss" not in repr(s) and _auth("robot$accel", "pa:ss") not in repr(s)
    assert "secret-header" not in repr(s)


def test_several_drivers_get_distinct_suffixes():
    s = load_settings(
        {
            "converter": {
                "drivers": [{"type": "estargz"}, {"type": "zstdchunked", "tag_suffix": "-zc"}],
                "rules": [{"tag_suffix": "-ignored-with-two-drivers"}],
            }
        }
    )
    suffixes = [s.converter.suffix_for(d) for d in s.converter.all_drivers()]
    assert suffixes == ["-estargz", "-zc"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"converter": {}}, "set converter.driver"),
        ({"converter": {"driver": {"type": "foo"}}}, "unknown driver type 'foo'"),
        ({"converter": {"driver": {"type": "estargz"}, "platforms": "linux"}}, "os/arch"),
        ({"converter": {"driver": {"type": "estargz"}, "rules": [{"tag_suffix": "a b"}]}}, "usable in a tag"),
        (
            {
                "provider": {"source": {"h": {"auth": "bm9jb2xvbg=="}}},
                "converter": {"driver": {"type": "estargz"}},
            },
            "provider.source.h.auth",
        ),
        (
            {"provider": {"gcpolicy": {"threshold": "lots"}}, "converter": {"driver": {"type": "estargz"}}},
            "size",
        ),
    ],
)
def test_invalid_configs_name_the_field(data, message):
    with pytest.raises(ConfigError) as exc:
        load_settings(data)
    assert message in str(exc.value)


def test_unreadable_and_non_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("converter: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_file(bad)


def test_parse_size():
    assert parse_size("1000MB") == 1000 << 20
    assert parse_size("10GiB") == 10 << 30
    assert parse_size("512") == 512


SAMPLE_DRIVER_CONFIGS = {
    "estargz": {"compression_level": 9, "chunk_size": 4194304, "docker2oci": True},
    "zstdchunked": {"level": 3, "docker2oci": True},
    "nydus": {
        "fs_version": 6,
        "compressor": "zstd",
        "fs_align_chunk": False,
        "prefetch_patterns": "/usr/bin\n/etc\n",
        "oci_ref": False,
        "docker2oci": True,
        "with_referrer": True,
        "merge_manifest": False,
    },
}
# Options as the drivers read them (a few per format: the ones the samples exist to show).
SAMPLE_PARSED_OPTIONS = {
    "estargz": {"compression_level": 9, "chunk_size": 4 << 20},
    "zstdchunked": {"level": 3},
    "nydus": {"compressor": "zstd", "oci_ref": False, "with_referrer": True},
}


def test_every_sample_config_is_covered():
    assert sorted(p.name for p in (REPO / "configs").glob("*.yaml")) == sorted(
        f"config.{d}.yaml" for d in SAMPLE_DRIVER_CONFIGS
    )


@pytest.mark.parametrize("driver_type", sorted(SAMPLE_DRIVER_CONFIGS))
def test_sample_configs_load_with_their_driver_suffix_cache_and_options(driver_type):
    from accel.drivers import load_driver
    from accel.plan import plan_conversion
    from accel.reference import Reference

    settings = load_file(REPO / "configs" / f"config.{driver_type}.yaml")
    converter = settings.converter
    assert [d.type for d in converter.all_drivers()] == [driver_type]
    assert converter.worker == 5 and converter.harbor_annotation is True
    assert settings.provider.work_dir == (REPO / ".state" / "work").resolve()
    host = settings.host("localhost:5000")
    assert host is not None and host.webhook.auth_header is not None
    assert host.webhook.auth_header.get_secret_value() == "change-me"
    driver = converter.find_driver(driver_type)
    assert driver.driver_config() == SAMPLE_DRIVER_CONFIGS[driver_type]
    options = load_driver(driver_type, driver.driver_config()).options
    for name, value in SAMPLE_PARSED_OPTIONS[driver_type].items():
        assert getattr(options, name) == value, name
    plan = plan_conversion(settings, Reference.parse("localhost:5000/library/app:v1"))
    assert plan.target_names() == {driver_type: f"localhost:5000/library/app:v1-{driver_type}"}
    assert str(plan.cache) == f"localhost:5000/library/app:{driver_type}-cache"


def test_webhook_hosts_by_authentication():
    settings = load_settings(
        {
            "provider": {
                "source": {
                    "secured.test": {"webhook": {"auth_header": "Bearer x"}},
                    "open.test": {"webhook": {"allow_unauthenticated": True}},
                    "empty.test": {"webhook": {"auth_header": ""}},
                    "bare.test": None,
                }
            },
            "converter": {"driver": {"type": "estargz"}},
        }
    )
    assert settings.unauthenticated_hosts() == ["open.test"]
    assert settings.unprotected_hosts() == ["bare.test", "empty.test"]


# --- one check for every reader (issue 24) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "why"),
    [
        ("61 * * * *", "bad minute"),
        ("0 25 * * *", "bad hour"),
        ("* * * 13 *", "bad month"),
        ("0 3 * *", "needs 5 fields"),
        ("*/5 * * * * *", "needs 5 fields"),
    ],
)
def test_bulk_schedule_is_checked_by_a_cron_library(cron: str, why: str) -> None:
    with pytest.raises(ConfigError, match=f"bulk.schedule: .*{why}"):
        load_settings({"converter": {"driver": {"type": "estargz"}}, "bulk": {"schedule": cron}})
    assert check_cron("0 3 * * MON-FRI") == "0 3 * * MON-FRI"


def test_unknown_keys_are_returned_as_one_warning_with_the_likely_spelling(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "converter:\n  drivers:\n  - type: estargz\n    tag_sufix: -x\n    config: {compresion_level: 9}\n"
    )
    checked = check_file(config)
    [warning] = checked.warnings
    assert "tag_sufix (did you mean tag_suffix?)" in warning
    assert "compresion_level (did you mean compression_level?)" in warning
    with pytest.raises(ConfigError, match=r"tag_sufix: unknown key .*did you mean tag_suffix"):
        check_file(config, strict=True)


def test_what_acceld_refuses_says_what_to_add(tmp_path: Path) -> None:
    checked = check_settings(
        {"provider": {"source": {"harbor.test": {}}}, "converter": {"driver": {"type": "estargz"}}}
    )
    [problem] = checked.service_problems()
    assert (
        "harbor.test" in problem
        and "webhook: {auth_header:" in problem
        and "allow_unauthenticated" in problem
    )
    allowed = {"harbor.test": {"webhook": {"allow_unauthenticated": True}}}
    assert not check_settings(
        {"provider": {"source": allowed}, "converter": {"driver": {"type": "estargz"}}}
    ).service_problems()


def test_a_yaml_syntax_error_is_one_line_with_its_position(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("converter:\n  driver: [\n")
    with pytest.raises(ConfigError) as exc:
        check_file(config)
    assert "not valid YAML: line 3, column 1" in str(exc.value) and "\n" not in str(exc.value)
