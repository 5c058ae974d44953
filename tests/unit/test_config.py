import base64
from pathlib import Path

import pytest

from accel.config import load_file, load_settings, parse_size
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
