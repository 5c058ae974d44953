"""Limits on a conversion (issue 9): a decompression bomb fails at the configured limit, in seconds,
naming the limit, and leaves nothing behind in the content store."""

from __future__ import annotations

import tarfile
import time
import zlib
from pathlib import Path

import pytest

from accel import constants as mt
from accel.compression import ExpansionLimits, ImageBudget, open_uncompressed
from accel.config import load_settings
from accel.drivers import LayerInput, load_driver
from accel.errors import ConfigError, LimitExceeded
from accel.model import SourceImage, SourceLayer, SourceManifest
from accel.oci import Descriptor
from accel.store import ContentStore
from tests.harness import configs

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


# --- converter.limits.max_image_size: the layers of one image together ----------------------------------


def _plain_layer(store: ContentStore, size: int, seed: int) -> tuple[Descriptor, str]:
    """A gzip'd tar holding one file of `size` bytes; returns (descriptor, diff_id)."""
    import hashlib
    import io

    info = tarfile.TarInfo(f"file-{seed}")
    info.size = size
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(bytes([seed]) * size))
    data = raw.getvalue()
    blob = _gzip_member(data)
    desc = Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=store.put_bytes(blob), size=len(blob))
    return desc, "sha256:" + hashlib.sha256(data).hexdigest()


def test_an_image_budget_counts_each_layer_once_and_names_the_limit():
    budget = ImageBudget(1000, "host/repo@sha256:abc (linux/amd64)")
    budget.charge("a", 300)
    budget.charge("a", 600)  # the same layer read further: its largest count, not the sum
    budget.charge("a", 200)  # read again from its start
    budget.charge("b", 400)
    assert budget.total == 1000 and budget.counted("a") == 600
    with pytest.raises(LimitExceeded) as caught:
        budget.charge("c", 1)
    assert "converter.limits.max_image_size" in str(caught.value)
    assert "host/repo@sha256:abc (linux/amd64)" in str(caught.value)
    assert "1,000 bytes" in str(caught.value)


def test_an_image_budget_is_shared_by_layers_streaming_in_parallel_threads():
    import threading

    budget = ImageBudget(10_000_000, "img")
    exceeded: list[str] = []

    def stream(layer: str) -> None:
        try:
            for total in range(0, 3_000_001, 1000):
                budget.charge(layer, total)
        except LimitExceeded:
            exceeded.append(layer)

    threads = [threading.Thread(target=stream, args=(f"layer-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 4 × 3 MB = 12 MB > 10 MB: the layers that charged past the limit stopped, and the count is exact.
    assert exceeded
    assert budget.total <= 10_000_000 + 4 * 1000


@pytest.mark.parametrize("driver_type", ["estargz", "zstdchunked", "nydus"])
def test_layers_each_under_the_layer_limit_stop_together_at_the_image_limit(tmp_path, driver_type):
    store = ContentStore(tmp_path / "store")
    first, first_diff = _plain_layer(store, 3 * MiB, 1)
    second, second_diff = _plain_layer(store, 3 * MiB, 2)
    budget = ImageBudget(5 * MiB, "host/repo@sha256:feed")
    limits = ExpansionLimits(max_bytes=4 * MiB, max_ratio=None, images=(budget,))
    driver = load_driver(driver_type)
    driver.convert_layer(LayerInput(first, first_diff, store, limits))  # alone under both limits
    blobs_before = set((store.root / "blobs" / "sha256").iterdir())
    with pytest.raises(
        LimitExceeded, match=r"image host/repo@sha256:feed .*converter\.limits\.max_image_size"
    ):
        driver.convert_layer(LayerInput(second, second_diff, store, limits))
    assert leftovers(store) == []  # the refused layer's partial outputs are gone
    assert set((store.root / "blobs" / "sha256").iterdir()) == blobs_before
    assert budget.total > 5 * MiB


def test_max_image_size_has_a_default_and_is_checked():
    settings = load_settings({"converter": {"driver": {"type": "estargz"}}})
    assert settings.converter.limits.max_image_bytes == 32 * GiB
    custom = load_settings(
        {"converter": {"driver": {"type": "estargz"}, "limits": {"max_image_size": "100MiB"}}}
    )
    assert custom.converter.limits.max_image_bytes == 100 * MiB
    for bad, why in (("lots", "not a size"), ("0", "must be more than 0 bytes"), ("-1GiB", "not a size")):
        with pytest.raises(ConfigError, match=rf"converter\.limits\.max_image_size: {why}"):
            load_settings({"converter": {"driver": {"type": "estargz"}, "limits": {"max_image_size": bad}}})


def test_recorded_layer_sizes_count_for_layers_a_run_does_not_stream(tmp_path):
    """A retried run's earlier layers come from the task cache: their sizes, recorded when they streamed,
    still count toward the image (per platform: each image of an index alone)."""
    from accel.oci import Platform
    from tasks.limits import LayerSizes, check_image_sizes, images_of_layers

    settings = load_settings(
        {
            "provider": {"work_dir": str(tmp_path / "work")},
            "converter": {"driver": {"type": "estargz"}, "limits": {"max_image_size": "10MiB"}},
        }
    )

    def layer(n: int) -> SourceLayer:
        desc = Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=f"sha256:{n:064x}", size=10)
        return SourceLayer(descriptor=desc, diff_id=f"sha256:{n + 100:064x}")

    def manifest(n: int, arch: str, layers: list[SourceLayer]) -> SourceManifest:
        desc = Descriptor(
            media_type=mt.OCI_MANIFEST,
            digest=f"sha256:{n + 200:064x}",
            size=10,
            platform=Platform(os="linux", architecture=arch),
        )
        config = Descriptor(media_type=mt.OCI_CONFIG, digest=f"sha256:{n + 300:064x}", size=10)
        return SourceManifest(descriptor=desc, config=config, layers=tuple(layers))

    shared, amd, arm = layer(1), layer(2), layer(3)
    index = Descriptor(media_type=mt.OCI_INDEX, digest=f"sha256:{999:064x}", size=10)
    image = SourceImage(
        reference="host/repo:v1",
        root=index,
        manifests=(manifest(1, "amd64", [shared, amd]), manifest(2, "arm64", [shared, arm])),
    )
    assert images_of_layers(image)[shared.descriptor.digest] == [
        f"host/repo@sha256:{201:064x} (linux/amd64)",
        f"host/repo@sha256:{202:064x} (linux/arm64)",
    ]
    sizes = LayerSizes(settings)
    sizes.record(shared.descriptor.digest, 4 * MiB)
    sizes.record(amd.descriptor.digest, 5 * MiB)
    check_image_sizes(settings, image)  # 9 MiB each (arm64 has only one recorded layer)
    sizes.record(arm.descriptor.digest, 7 * MiB)
    with pytest.raises(LimitExceeded, match=r"\(linux/arm64\) expands to more than 10,485,760 bytes"):
        check_image_sizes(settings, image)


def test_only_a_timed_out_run_in_its_own_process_ends_the_process(monkeypatch):
    """The on_failure hook exits only for Prefect's TimedOut state, and only in the process the runner
    started for that run (PREFECT__FLOW_RUN_ID), never in a runner or test process running it in a thread."""
    from types import SimpleNamespace

    import tasks.limits

    exits: list[int] = []
    monkeypatch.setattr(tasks.limits.os, "_exit", exits.append)
    run = SimpleNamespace(id="0f0e6a3c-0000-4000-8000-000000000001")
    timed_out, failed = SimpleNamespace(name="TimedOut"), SimpleNamespace(name="Failed")

    monkeypatch.delenv("PREFECT__FLOW_RUN_ID", raising=False)
    tasks.limits.end_timed_out_process(None, run, timed_out)
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "another-run")
    tasks.limits.end_timed_out_process(None, run, timed_out)
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", run.id)
    tasks.limits.end_timed_out_process(None, run, failed)
    assert exits == []
    tasks.limits.end_timed_out_process(None, run, timed_out)
    assert exits == [0]


def test_partial_files_of_interrupted_runs_are_swept_once_no_live_run_can_own_them(tmp_path):
    """A run killed or timed out mid-write leaves its ingest file; collect-garbage removes such files once
    they are older than any live run can be."""
    import os

    from tasks.store import sweep_abandoned_ingest

    store = ContentStore(tmp_path / "store")
    ingest = store.root / "ingest"
    abandoned, fresh = ingest / "ingest-abandoned", ingest / "scratch-live"
    abandoned.write_bytes(b"partial")
    fresh.write_bytes(b"being written")
    (ingest / "a-dir").mkdir()
    old = time.time() - 7300
    os.utime(abandoned, (old, old))
    os.utime(ingest / "a-dir", (old, old))
    assert sweep_abandoned_ingest(ingest, 7200) == 1
    assert sorted(p.name for p in ingest.iterdir()) == ["a-dir", "scratch-live"]


def _image_of(layers: int) -> SourceImage:
    """A one-platform image of `layers` layers (descriptors only: nothing is read)."""
    desc = Descriptor(media_type=mt.OCI_MANIFEST, digest=f"sha256:{1:064x}", size=10)
    config = Descriptor(media_type=mt.OCI_CONFIG, digest=f"sha256:{2:064x}", size=10)
    source_layers = tuple(
        SourceLayer(
            descriptor=Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=f"sha256:{n + 10:064x}", size=10),
            diff_id=f"sha256:{n + 20_000:064x}",
        )
        for n in range(layers)
    )
    return SourceImage(
        reference="host/repo:v1",
        root=desc,
        manifests=(SourceManifest(descriptor=desc, config=config, layers=source_layers),),
    )


def test_an_image_with_more_layers_than_max_layers_is_refused_naming_it():
    from tasks.limits import check_layer_count

    settings = load_settings({"converter": {"driver": {"type": "estargz"}}})
    assert settings.converter.limits.max_layers == 500  # as deep as overlayfs stacks layers
    check_layer_count(settings, _image_of(500))
    with pytest.raises(
        LimitExceeded, match=r"has 10,000 layers, more than 500 \(converter.limits.max_layers\)"
    ):
        check_layer_count(settings, _image_of(10_000))
    with pytest.raises(ConfigError, match="max_layers"):
        load_settings({"converter": {"driver": {"type": "estargz"}, "limits": {"max_layers": 0}}})


# --- converter.limits.max_entries: tar entries of one layer -------------------------------------------

# Each way a driver walks a layer's tar: eStargz streamed with tarfile, or spooled and read at random (with
# prioritized files); zstd:chunked's writer; Nydus's one read feeding the builder, its scan before a
# normalised second read, and zran's scan of the original blob.
ENTRY_WALKS = {
    "estargz": ("estargz", {}),
    "estargz-prioritized": ("estargz", {"prioritized_files": ["d0000/f0003"]}),
    "zstdchunked": ("zstdchunked", {}),
    "nydus": ("nydus", {}),
    "nydus-normalised": ("nydus", {}),
    "nydus-oci-ref": ("nydus", {"oci_ref": True}),
}


def _entries_layer(store: ContentStore, count: int, walk: str) -> tuple[Descriptor, str]:
    """A gzip'd layer of `count` tar entries (directories of empty files); for "nydus-normalised" one that
    nydus-image cannot take as it is (its last entry repeats the first directory), so it is read twice."""
    import hashlib
    import io

    from tests.harness import imagegen

    raw = io.BytesIO()
    if walk == "nydus-normalised":
        imagegen.ManyEntriesLayer(count - 1, per_directory=10).write_tar(raw)
        repeated = imagegen.tar_members((imagegen.tar_info("d0000/", tarfile.DIRTYPE), None), closed=True)
        data = raw.getvalue()[:-1024] + repeated
    else:
        imagegen.ManyEntriesLayer(count, per_directory=10).write_tar(raw)
        data = raw.getvalue()
    blob = _gzip_member(data)
    desc = Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=store.put_bytes(blob), size=len(blob))
    return desc, "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("walk", ENTRY_WALKS)
def test_a_layer_past_max_entries_stops_naming_the_limit_the_layer_and_its_image(tmp_path, walk, caplog):
    driver_type, options = ENTRY_WALKS[walk]
    driver = load_driver(driver_type, options)
    image = ImageBudget(GiB, "host/repo@sha256:feed (linux/amd64)")

    def limits(max_entries: int) -> ExpansionLimits:
        return ExpansionLimits(max_bytes=GiB, max_ratio=None, images=(image,), max_entries=max_entries)

    store = ContentStore(tmp_path / "at-limit")
    layer, diff_id = _entries_layer(store, 25, walk)
    with caplog.at_level("INFO", logger="accel.drivers.nydus.driver"):
        converted = driver.convert_layer(LayerInput(layer, diff_id, store, limits(25)))
    assert store.exists(converted.descriptor.digest)  # exactly at the limit: converted
    assert ("normalised for nydus-image" in caplog.text) == (walk == "nydus-normalised")

    store = ContentStore(tmp_path / "past-limit")
    layer, diff_id = _entries_layer(store, 25, walk)
    blobs_before = set((store.root / "blobs" / "sha256").iterdir())
    with pytest.raises(LimitExceeded) as refused:
        driver.convert_layer(LayerInput(layer, diff_id, store, limits(24)))
    assert str(refused.value) == (
        f"layer {layer.digest} of host/repo@sha256:feed (linux/amd64) has more than 24 tar entries "
        "(converter.limits.max_entries)"
    )
    assert leftovers(store) == []  # the refused layer's partial outputs are gone
    assert set((store.root / "blobs" / "sha256").iterdir()) == blobs_before


def test_max_entries_has_a_default_and_is_checked():
    settings = load_settings({"converter": {"driver": {"type": "estargz"}}})
    assert settings.converter.limits.max_entries == 200_000
    custom = load_settings({"converter": {"driver": {"type": "estargz"}, "limits": {"max_entries": 1}}})
    assert custom.converter.limits.max_entries == 1
    for bad in (0, -5, "many"):
        with pytest.raises(ConfigError, match=r"converter\.limits\.max_entries"):
            load_settings({"converter": {"driver": {"type": "estargz"}, "limits": {"max_entries": bad}}})


def test_the_tar_scanner_stops_at_the_entry_past_its_limit():
    import io

    from accel.tarstream import EntryLimit, TarScanner
    from tests.harness import imagegen

    raw = io.BytesIO()
    imagegen.ManyEntriesLayer(5).write_tar(raw)
    scanner = TarScanner(io.BytesIO(raw.getvalue()), EntryLimit(5, "layer x"))
    assert [m.header.name for m in scanner][-1] == b"d0000/f0004"  # five entries: all of them
    scanner = TarScanner(io.BytesIO(raw.getvalue()), EntryLimit(4, "layer x"))
    names = []
    with pytest.raises(LimitExceeded, match=r"^layer x has more than 4 tar entries"):
        for member in scanner:
            names.append(member.header.name)
    assert len(names) == 4  # the fifth was never handed out


def test_a_driver_whose_format_holds_fewer_layers_is_refused_by_name_before_the_pull(tmp_path):
    """Nydus (nydus-image 2.2.0's merge) holds 255 layers: a deeper image refuses that driver only, naming
    the image and the bound; the other drivers go on."""
    from accel.context import context_for
    from tasks.limits import drivers_over_their_layer_bound

    drivers = [configs.driver("estargz"), configs.driver("nydus")]
    config = configs.write_config(tmp_path / "config.yaml", {"host": {}}, drivers, work_dir=tmp_path)
    ctx = context_for(config)
    assert drivers_over_their_layer_bound(ctx, _image_of(255), ["estargz", "nydus"]) == {}
    refused = drivers_over_their_layer_bound(ctx, _image_of(256), ["estargz", "nydus"])
    assert list(refused) == ["nydus"]
    assert "host/repo@sha256:" in refused["nydus"]
    assert "has 256 layers, more than the 255 a nydus image holds" in refused["nydus"]
