"""Limits on a conversion (issue 9): a decompression bomb fails at the configured limit, in seconds,
naming the limit, and leaves nothing behind in the content store."""

from __future__ import annotations

import tarfile
import time
import zlib
from pathlib import Path

import pytest

from accel import constants as mt
from accel.compression import ExpansionLimits, open_uncompressed
from accel.config import load_settings
from accel.drivers import LayerInput, load_driver
from accel.errors import ConfigError, LimitExceeded
from accel.oci import Descriptor
from accel.store import ContentStore

GiB = 1 << 30
MiB = 1 << 20


def _gzip_member(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip wrapper
    return compressor.compress(data) + compressor.flush()


def gzip_bomb(store: ContentStore, uncompressed: int = 20 * GiB) -> Descriptor:
    """A gzip'd tar holding one file of `uncompressed` zero bytes: a tar header member, then the same
    all-zero member repeated (gzip readers read concatenated members as one stream)."""
    info = tarfile.TarInfo("zeros")
    info.size = uncompressed
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    block = 64 * MiB
    zeros = _gzip_member(bytes(block))
    parts = [_gzip_member(header), *([zeros] * (uncompressed // block))]
    data = b"".join(parts)
    digest = store.put_bytes(data)
    return Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=digest, size=len(data))


def leftovers(store: ContentStore) -> list[Path]:
    return [p for p in (store.root / "ingest").iterdir()]


@pytest.mark.parametrize("driver_type", ["estargz", "zstdchunked"])
def test_a_gzip_bomb_stops_at_the_layer_limit(tmp_path, driver_type):
    store = ContentStore(tmp_path / "store")
    bomb = gzip_bomb(store)
    assert bomb.size < 25 * MiB  # ~20 MB of gzip for 20 GiB of zeros
    blobs_before = set((store.root / "blobs" / "sha256").iterdir())
    layer = LayerInput(
        bomb, "sha256:" + "0" * 64, store, ExpansionLimits(max_bytes=256 * MiB, max_ratio=None)
    )
    started = time.monotonic()
    with pytest.raises(LimitExceeded, match=r"converter\.limits\.max_layer_size"):
        load_driver(driver_type).convert_layer(layer)
    assert time.monotonic() - started < 60  # seconds, not the minutes 20 GiB would take
    assert leftovers(store) == []  # scratch and partial blobs are gone
    assert set((store.root / "blobs" / "sha256").iterdir()) == blobs_before


def test_the_expansion_ratio_stops_a_bomb_under_the_size_limit(tmp_path):
    store = ContentStore(tmp_path / "store")
    bomb = gzip_bomb(store, uncompressed=2 * GiB)
    limits = ExpansionLimits(max_bytes=16 * GiB, max_ratio=200)
    with (
        pytest.raises(LimitExceeded, match=r"converter\.limits\.max_expansion_ratio"),
        open_uncompressed(store.path(bomb.digest), bomb.media_type, None, limits) as tar,
    ):
        while tar.read(MiB):
            pass


def test_layers_within_the_limits_read_in_full(tmp_path):
    store = ContentStore(tmp_path / "store")
    small = gzip_bomb(store, uncompressed=128 * MiB)  # a ratio of ~1000, allowed here
    limits = ExpansionLimits(max_bytes=1 * GiB, max_ratio=2000)
    total = 0
    with open_uncompressed(store.path(small.digest), small.media_type, None, limits) as tar:
        while chunk := tar.read(MiB):
            total += len(chunk)
    assert total == 512 + 128 * MiB


def test_limits_in_config_have_defaults_and_are_checked():
    settings = load_settings({"converter": {"driver": {"type": "estargz"}}})
    limits = settings.converter.limits
    assert limits.max_layer_bytes == 16 * GiB and limits.max_expansion_ratio == 200 and limits.timeout == 3600
    custom = load_settings(
        {"converter": {"driver": {"type": "estargz"}, "limits": {"max_layer_size": "1GiB", "timeout": 60}}}
    )
    assert custom.converter.limits.max_layer_bytes == GiB
    for bad in ({"max_layer_size": "lots"}, {"max_expansion_ratio": 0.5}, {"timeout": 0}):
        with pytest.raises(ConfigError, match="limits"):
            load_settings({"converter": {"driver": {"type": "estargz"}, "limits": bad}})


def test_the_conversion_timeout_comes_from_the_environment_acceld_sets(monkeypatch):
    from flows.convert_image import TIMEOUT_ENV, conversion_timeout

    monkeypatch.setenv(TIMEOUT_ENV, "90")
    assert conversion_timeout() == 90
    for unset in ("", "0", "soon"):
        monkeypatch.setenv(TIMEOUT_ENV, unset)
        assert conversion_timeout() is None
