"""acceld's config shapes, written out from the keys its config struct and sample files document.

Each key either does what it does in acceld or is refused with a message naming it; keys nobody knows are
what acceld ignores silently: a warning at load, an error in strict mode (`accelctl config check`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from accel.config import load_file, load_settings
from accel.drivers import load_driver
from accel.errors import ConfigError
from tests.harness.acceld_samples import ESTARGZ, ESTARGZ_ZSTDCHUNKED, NYDUS_ALL, NYDUS_REF


def _load(text: str, tmp_path: Path, name: str = "config.yaml", **kw: Any):
    path = tmp_path / name
    path.write_text(text)
    return load_file(path, **kw)


def _with_driver_config(text: str, **options: Any) -> dict[str, Any]:
    data = yaml.safe_load(text)
    data["converter"]["driver"]["config"].update(options)
    return data


def test_estargz_sample(tmp_path: Path) -> None:
    s = _load(ESTARGZ, tmp_path)
    [driver] = s.converter.all_drivers()
    assert driver.type == "estargz" and driver.driver_config() == {"docker2oci": True}
    assert s.converter.suffix_for(driver) == "-esgz"
    assert s.server.name == "API" and s.server.uds is None and s.provider.cache_size == 200


def test_estargz_zstdchunked_sample_runs_the_zstdchunked_driver(tmp_path: Path) -> None:
    s = _load(ESTARGZ_ZSTDCHUNKED, tmp_path)
    [driver] = s.converter.all_drivers()
    # What acceld wrote (stargz-snapshotter's zstd:chunked): the zstdchunked driver's stargz variant.
    assert driver.type == "zstdchunked"
    assert driver.driver_config() == {"docker2oci": True, "variant": "stargz"}
    loaded = load_driver(driver.type, driver.driver_config())
    assert loaded.name == "zstdchunked" and loaded.options.variant == "stargz"  # type: ignore[attr-defined]
    assert s.converter.suffix_for(driver) == "-estargz-zstdchunked"
    # `compression: estargz` (acceld's default) is the estargz driver.
    plain = load_settings(_with_driver_config(ESTARGZ, compression="estargz"))
    assert plain.converter.all_drivers()[0].type == "estargz"


@pytest.mark.parametrize("sample", [ESTARGZ, ESTARGZ_ZSTDCHUNKED, NYDUS_REF])
def test_with_referrer_is_every_drivers_option(sample: str) -> None:
    """Unset: `subject` on (accel's default); `with_referrer: false` is acceld's output (no `subject`),
    for eStargz and acceld's zstd:chunked too, whose Go drivers never wrote one."""
    for value, subject in ((None, True), (False, False), (True, True)):
        data = yaml.safe_load(sample)
        data["converter"]["driver"]["config"].pop("with_referrer", None)
        if value is not None:
            data["converter"]["driver"]["config"]["with_referrer"] = value
        [driver] = load_settings(data).converter.all_drivers()
        loaded = load_driver(driver.type, driver.driver_config())
        assert loaded.writes_subject() is subject
        assert "with_referrer" not in loaded.options.output_options()  # not in the cache key


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"compression": "lz4"}, "config.compression 'lz4' is not a compression of the estargz driver"),
        (
            {"compression": "zstdchunked", "prioritized_files": ["a"]},
            "config.prioritized_files: not an option of zstd:chunked",
        ),
    ],
)
def test_estargz_compression_refusals_name_the_key(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(_with_driver_config(ESTARGZ, **options))


def test_nydus_ref_sample(tmp_path: Path) -> None:
    s = _load(NYDUS_REF, tmp_path)
    [driver] = s.converter.all_drivers()
    options = load_driver("nydus", driver.driver_config()).options
    assert options.oci_ref is True and options.with_referrer is True  # type: ignore[attr-defined]
    assert s.converter.cache_tag == "nydus-cache" and s.converter.tag_suffix == "-nydus-oci-ref"


def test_nydus_sample_with_every_documented_option(tmp_path: Path) -> None:
    s = _load(NYDUS_ALL, tmp_path)
    driver = load_driver("nydus", s.converter.all_drivers()[0].driver_config())
    o = driver.options
    assert (o.fs_version, o.compressor, o.chunk_size, o.fs_align_chunk) == ("6", "zstd", "0x100000", False)  # type: ignore[attr-defined]
    assert o.builder == "nydus-image" and o.docker2oci is False and o.merge_manifest is False  # type: ignore[attr-defined]
    assert o.chunk_dict_ref is None and o.prefetch_input == "/\n"  # type: ignore[attr-defined]
    assert o.backend_dir == Path("/path/to/dir") and o.backend_force_push is False  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"compressor": "gzip"}, "compressor 'gzip' is not supported by nydus-image 2.2.0"),
        ({"backend_type": "oss"}, "backend_type 'oss' is an untested blob storage backend"),
        ({"backend_type": "s3"}, "backend_type 's3' is an untested blob storage backend"),
        ({"encrypt_recipients": "age1abc"}, "'encrypt_recipients' (bootstrap encryption) is not supported"),
        ({"batch_size": "0x100000"}, "'batch_size' (--batch-size) is not supported"),
    ],
)
def test_nydus_refusals_name_the_key(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(_with_driver_config(NYDUS_ALL, **options))
    assert message in str(exc.value)
    assert "Extra inputs" not in str(exc.value)


def test_nydus_old_names_and_v6_alignment(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = yaml.safe_load(NYDUS_REF)
    data["converter"]["driver"]["config"] = {"rafs_version": "5", "rafs_compressor": "lz4_block"}
    options = load_driver("nydus", load_settings(data).converter.all_drivers()[0].driver_config()).options
    assert (options.fs_version, options.compressor) == ("5", "lz4_block")  # type: ignore[attr-defined]
    with caplog.at_level(logging.WARNING):
        aligned = load_driver("nydus", {"fs_align_chunk": "true", "fs_version": "6"})
    assert aligned.options.fs_align_chunk is False  # type: ignore[attr-defined]
    assert "fs_align_chunk has no effect with fs_version 6" in caplog.text


def test_server_uds_name_and_cache_switches(tmp_path: Path) -> None:
    text = ESTARGZ.replace("  port: 2077\n", "  port: 2077\n  uds: /run/accel/acceld.sock\n  name: Conv\n", 1)
    text = text.replace("  name: API\n", "", 1)
    text = text.replace("  cache_size: 200\n", "  cache_size: 0\n  cache_index_root: true\n")
    s = _load(text, tmp_path)
    assert s.server.uds == Path("/run/accel/acceld.sock") and s.server.name == "Conv"
    # 0 keeps no records (acceld's cache with 0 keeps none either); the index-root switch is accel's own.
    assert s.provider.cache_size == 0 and s.provider.cache_index_root is True
    assert load_settings({"converter": {"driver": {"type": "estargz"}}}).provider.cache_index_root is False


def test_unknown_keys_warn_and_strict_mode_refuses_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = ESTARGZ.replace("metric:\n", "servr: {}\nmetric:\n  exported: yes\n", 1)
    text = text.replace("      docker2oci: true\n", "      docker2oci: true\n      nope: 1\n", 1)
    text = text.replace("    - tag_suffix: -esgz\n", "    - tag_suffix: -esgz\n      colour: blue\n")
    text = text.replace("        auth_header: header\n", "        auth_header: header\n        secret: x\n")
    expected = [
        "servr",
        "metric.exported",
        "provider.source.hub.harbor.com.webhook.secret",
        "converter.driver.config.nope",
        "converter.rules.0.colour",
    ]
    with caplog.at_level(logging.WARNING, logger="accel.config"):
        s = _load(text, tmp_path)
    assert s.converter.all_drivers()[0].driver_config() == {"docker2oci": True}
    [record] = [r for r in caplog.records if "unknown keys" in r.getMessage()]
    assert all(path in record.getMessage() for path in expected)
    with pytest.raises(ConfigError) as exc:
        _load(text, tmp_path, "strict.yaml", strict=True)
    # One line per unknown key, and no other.
    lines = str(exc.value).splitlines()[1:]
    assert sorted(line.strip().split(": unknown key")[0] for line in lines) == sorted(expected)
    assert all(": unknown key (acceld would ignore it" in line for line in lines)
    assert "Extra inputs" not in str(exc.value)
    # A clean file passes strict mode.
    _load(ESTARGZ, tmp_path, "clean.yaml", strict=True)


def test_acceld_test_configs_load(tmp_path: Path) -> None:
    # The shape of acceld's integration-test config: a plain-HTTP local source, nydus with work_dir.
    text = json.dumps(
        {
            "server": {"name": "API", "host": "0.0.0.0", "port": 2077},
            "metric": {"enabled": True},
            "provider": {
                "source": {"0.0.0.0": {"auth": "YWRtaW46SGFyYm9yMTIzNDU=", "insecure": True,
                                       "webhook": {"auth_header": "acceleration-service"}}},
                "work_dir": "/tmp",
                "gcpolicy": {"threshold": "10MB"},
            },
            "converter": {
                "worker": 5,
                "harbor_annotation": True,
                "driver": {"type": "nydus", "config": {"work_dir": "/tmp", "with_referrer": True}},
                "rules": [{"tag_suffix": "-nydus"}],
            },
        }
    )  # fmt: skip
    s = _load(text, tmp_path, strict=True)
    assert s.host("0.0.0.0").insecure is True  # type: ignore[union-attr]
