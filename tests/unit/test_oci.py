import json

import pytest

from accel import constants as mt
from accel.errors import InvalidImage, UnsupportedMediaType
from accel.oci import Descriptor, ImageConfig, Index, Manifest, Platform


def test_manifest_keeps_raw_bytes_for_digest():
    # Odd spacing and key order: re-serialising would change the digest.
    config = b'{"mediaType":"%s","size":2,"digest":"sha256:%s"}' % (mt.OCI_CONFIG.encode(), b"0" * 64)
    raw = b'{ "schemaVersion":2, "mediaType":"%s", "layers":[], "config":%s }' % (
        mt.OCI_MANIFEST.encode(),
        config,
    )
    m = Manifest.parse(raw)
    assert m.raw == raw
    assert m.descriptor().digest == Descriptor.of(mt.OCI_MANIFEST, raw).digest
    assert m.config.size == 2


def test_media_type_detection_and_rejection():
    idx = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    assert Index.parse(idx).media_type == mt.OCI_INDEX
    with pytest.raises(UnsupportedMediaType):
        Manifest.parse(idx, mt.OCI_INDEX)
    with pytest.raises(UnsupportedMediaType):
        Manifest.parse(b'{"mediaType":"application/vnd.docker.distribution.manifest.v1+json"}')
    with pytest.raises(InvalidImage):
        Manifest.parse(b"not json")


def test_descriptor_json_uses_oci_names():
    d = Descriptor(
        media_type=mt.OCI_MANIFEST,
        digest="sha256:" + "1" * 64,
        size=3,
        platform=Platform.parse("linux/arm64/v8"),
    )
    assert d.to_dict() == {
        "mediaType": mt.OCI_MANIFEST,
        "digest": "sha256:" + "1" * 64,
        "size": 3,
        "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
    }
    assert Descriptor.model_validate(d.to_dict()) == d


def test_platform_filter_matching():
    assert Platform.parse("linux/arm64").matches(Platform.parse("linux/arm64/v8"))
    assert not Platform.parse("linux/arm64/v7").matches(Platform.parse("linux/arm64/v8"))
    assert not Platform.parse("linux/amd64").matches(Platform.parse("windows/amd64"))


def test_config_diff_ids_rewrite_keeps_other_fields():
    raw = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["A=1"]},
            "rootfs": {"type": "layers", "diff_ids": ["x"]},
        }
    ).encode()
    c = ImageConfig.parse(raw).with_diff_ids(["y", "z"])
    assert c.doc["rootfs"]["diff_ids"] == ["y", "z"]
    assert c.doc["config"] == {"Env": ["A=1"]}
    assert c.platform == Platform.parse("linux/amd64")
    with pytest.raises(InvalidImage):
        ImageConfig.parse(b'{"os":"linux"}')
