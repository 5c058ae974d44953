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


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_sample_configs_are_valid(path):
    load_file(path)
