"""Live progress: the engine's byte counters (accel/progress.py), the run's reporter (tasks/progress.py) and
the terminal display (service/progress.py), without a Prefect run."""

from __future__ import annotations

import gzip
import io
import pickle
import re
import threading
import time

from rich.console import Console

from accel import digest as dg
from accel import progress
from accel.drivers.base import LayerInput
from accel.model import SourceImage, SourceLayer, SourceManifest
from accel.oci import Descriptor
from accel.progress import ByteMeter, CountingReader, metering
from accel.store import ContentStore
from service.progress import Progress
from tasks import progress as run_progress
from tasks.progress import RunProgress, counting, progress_markdown

GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def test_a_counting_reader_counts_up_to_the_total_and_never_back():
    meter = ByteMeter(total=10)
    reader = CountingReader(io.BytesIO(b"x" * 8), meter)
    assert reader.read(3) == b"xxx" and meter.value == 3
    assert len(reader.read()) == 5 and meter.value == 8
    again = CountingReader(io.BytesIO(b"y" * 16), meter)  # a second read of the layer
    again.read(4)
    assert meter.value == 8  # not back to 4
    again.read()
    assert meter.value == 10 and meter.fraction() == 1.0  # capped at the total
    meter.done()
    assert meter.finished and meter.fraction() == 1.0


def test_a_meter_is_picklable_as_task_parameters_must_be():
    meter = ByteMeter(total=5)
    meter.add(2)
    copy = pickle.loads(pickle.dumps(meter))
    assert (copy.value, copy.total, copy.finished) == (2, 5, False)


def test_metering_is_per_context_and_ends_with_its_block():
    meter = ByteMeter()
    seen: list[ByteMeter | None] = []
    with metering(meter):
        assert progress.current() is meter
        other = threading.Thread(target=lambda: seen.append(progress.current()))
        other.start()
        other.join()
    assert progress.current() is None and seen == [None]  # a new thread starts without it


def _stored_layer(store: ContentStore, data: bytes) -> tuple[Descriptor, str]:
    blob = gzip.compress(data)
    digest = store.put_bytes(blob)
    return Descriptor(media_type=GZIP_LAYER, digest=digest, size=len(blob)), dg.of_bytes(data)


def test_a_layer_read_by_its_conversion_counts_its_compressed_bytes(tmp_path):
    store = ContentStore(tmp_path)
    descriptor, diff_id = _stored_layer(store, b"tar bytes " * 200_000)
    meter = ByteMeter(total=descriptor.size)
    with metering(meter), LayerInput(descriptor, diff_id, store).open_tar() as tar:
        while tar.read(1 << 16):
            pass
    assert meter.value == descriptor.size  # counted on the reading thread, which this context is not
    with LayerInput(descriptor, diff_id, store).open_tar() as tar:  # nobody watching: nothing counted
        tar.read()


def _image(sizes: list[int]) -> tuple[SourceImage, list[SourceLayer]]:
    layers = [
        SourceLayer(
            descriptor=Descriptor(media_type=GZIP_LAYER, digest=dg.of_bytes(bytes([n])), size=size),
            diff_id=dg.of_bytes(bytes([n, n])),
        )
        for n, size in enumerate(sizes)
    ]
    config = Descriptor(
        media_type="application/vnd.oci.image.config.v1+json", digest=dg.of_bytes(b"c"), size=1
    )
    root = Descriptor(
        media_type="application/vnd.oci.image.manifest.v1+json", digest=dg.of_bytes(b"m"), size=1
    )
    manifest = SourceManifest(descriptor=root, config=config, layers=tuple(layers))
    return SourceImage(reference="registry:5000/app:v1", root=root, manifests=(manifest,)), layers


def test_the_run_progress_weights_pull_conversion_and_push_by_bytes():
    image, (big, small) = _image([300, 100])
    run = RunProgress("registry:5000/app:v1", image)
    assert run.percent() == 0.0
    run.conversions({"estargz": [big], "zstdchunked": [big, small]})  # estargz's small layer: a cache hit
    pulls = [run.pull_meter(big), run.pull_meter(small)]
    for meter in pulls:
        meter.set(meter.total)
    # Pulled 400 of the 400 + (300 + 400) converted + (300 + 400) pushed source bytes.
    assert round(run.percent(), 1) == round(100 * 400 / 1800, 1)
    with counting(run.convert_meter(big, "estargz")):
        pass  # a conversion that returned is done, whatever it counted
    snapshot = run.snapshot()
    [first, second] = snapshot["layers"]
    assert first["pulled"] == [300, 300, False]
    assert first["drivers"]["estargz"]["converted"] == [300, 300, True]
    assert second["drivers"]["estargz"] == {"cached": True, "converted": None, "uploaded": None}
    run.push_meter("estargz").done()
    run.push_meter("zstdchunked").done()
    assert 50 < run.percent() < 100
    run.stop(finished=True)  # never started: the last state only
    assert run.percent() == 100.0
    table = progress_markdown(run.snapshot())
    assert f"`{dg.short(big.descriptor.digest)}`" in table and "cache hit" in table and "done after" in table


def test_a_watcher_of_the_calling_thread_gets_snapshots_while_the_run_moves():
    image, (layer,) = _image([1000])
    got: list[dict] = []
    with run_progress.watching(got.append):
        run = RunProgress("registry:5000/app:v1", image)
    run.start()  # outside a flow run: no artifacts, the watcher only
    meter = run.pull_meter(layer)
    for step in range(1, 5):
        meter.set(step * 200)
        deadline = time.monotonic() + 10
        while not any(s["layers"][0]["pulled"] == [step * 200, 1000, False] for s in got):
            assert time.monotonic() < deadline, got[-1:]  # each step is seen, without being asked
            time.sleep(0.05)
    run.stop(finished=True)
    pulled = [s["layers"][0]["pulled"][0] for s in got if s["layers"][0]["pulled"]]
    assert pulled == sorted(pulled)
    assert got[-1]["finished"] and got[-1]["percent"] == 100.0


def test_progress_artifacts_only_for_runs_that_last(monkeypatch):
    """A run whose layers are done within ARTIFACTS_AFTER_SECONDS sends the Prefect API nothing for its
    progress; a longer one creates its artifacts then, and updates them once more when it stops."""
    calls: list[str] = []
    monkeypatch.setattr(run_progress, "_create_artifacts", lambda run: calls.append("create") or ("p", "t"))
    monkeypatch.setattr(run_progress, "_update_artifacts", lambda ids, snapshot: calls.append("update"))
    monkeypatch.setattr(run_progress, "WATCH_SECONDS", 0.02)
    monkeypatch.setattr(run_progress, "ARTIFACTS_AFTER_SECONDS", 0.3)
    image, (layer,) = _image([1000])

    short = RunProgress("registry:5000/app:v1", image).start()
    short.pull_meter(layer).set(1000)
    short.stop(finished=True)
    assert calls == []

    lasting = RunProgress("registry:5000/app:v1", image).start()
    lasting.pull_meter(layer).set(500)
    deadline = time.monotonic() + 10
    while calls != ["create"]:
        assert time.monotonic() < deadline and calls in ([], ["create"]), calls
        time.sleep(0.02)
    lasting.stop(finished=True)
    assert calls == ["create", "update"]  # the last state, 100 %


def test_the_display_shows_each_layer_and_driver():
    image, (big, _small) = _image([300_000_000, 1000])
    run = RunProgress("registry:5000/app:v1", image)
    run.conversions({"nydus": [big]})
    run.pull_meter(big).set(150_000_000)
    run.convert_meter(big, "nydus").set(30_000_000)
    display = Progress("registry:5000/app:v1", stream=io.StringIO())
    display.update(run.snapshot())
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(display)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "converting registry:5000/app:v1: " in text
    assert re.search(r"nydus\s+nydus\s*\n.*converted\s+pushed", text), text
    assert "50 % 150.0 MB" in text and "10 % 30.0 MB" in text and "cache hit" in text
    assert big.descriptor.digest.removeprefix("sha256:")[:12] in text
