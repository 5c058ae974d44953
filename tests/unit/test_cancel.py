"""accel.cancel: a cancellation reaches engine work that is already running — a registry read that waits
for bytes, a reader waiting for its pull, a conversion waiting for a slot, nydus-image — within a second,
and work outside any token is untouched."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from accel import cancel
from accel.drivers.nydus.builder import run_builder
from accel.oci import Descriptor
from accel.reference import Reference
from accel.registry import HostConfig, RegistryClient
from accel.store import ContentStore
from tasks.slots import ConversionSlots


def _cancelled_soon(work: Callable[[], object], after: float = 0.3) -> tuple[BaseException | None, float]:
    """Run `work` in a thread under a token that is set `after` seconds in; what it raised and how long
    it took to return after the token was set."""
    token = cancel.CancelToken()
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            work()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    with cancel.cancelled_by(token):
        thread = threading.Thread(target=cancel.in_this_context(run))
    thread.start()
    time.sleep(after)
    set_at = time.monotonic()
    token.cancel("cancelled (test)")
    thread.join(10)
    assert not thread.is_alive(), "the work did not notice the cancellation"
    return outcome[0], time.monotonic() - set_at


def test_the_token_runs_callbacks_cuts_sleeps_and_stays_in_its_context() -> None:
    token = cancel.CancelToken()
    called = []
    with cancel.cancelled_by(token), cancel.on_cancel(lambda: called.append(1)):
        seen_in_thread = []
        thread = threading.Thread(
            target=cancel.in_this_context(lambda: seen_in_thread.append(cancel.current()))
        )
        thread.start()
        thread.join()
        assert seen_in_thread == [token]
        token.cancel("cancelled (first)")
        token.cancel("cancelled (second)")  # the first reason stays, callbacks run once
        assert called == [1]
        with pytest.raises(cancel.Cancelled, match="first"):
            cancel.check()
        started = time.monotonic()
        with pytest.raises(cancel.Cancelled):
            cancel.sleep(30)
        assert time.monotonic() - started < 1
    assert cancel.current() is None
    cancel.check()  # outside the token: nothing to look at
    cancel.sleep(0)


def test_a_reader_waiting_for_its_pull_stops(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")
    digest = "sha256:" + hashlib.sha256(b"never").hexdigest()
    store.expect(digest)  # a pull is announced, and never writes
    reader = store.open_following(digest)
    error, took = _cancelled_soon(lambda: reader.read(10))
    assert isinstance(error, cancel.Cancelled) and took < 2


def test_a_conversion_waiting_for_a_slot_stops() -> None:
    slots = ConversionSlots(1)

    def wait_for_slot() -> None:
        with slots.slot("second", 1):
            pass

    with slots.slot("first", 2):
        error, took = _cancelled_soon(wait_for_slot)
    assert isinstance(error, cancel.Cancelled) and took < 1
    with slots.slot("third", 1):  # the cancelled one holds nothing back
        pass


def test_the_builder_is_killed(tmp_path: Path) -> None:
    sleeper = tmp_path / "nydus-image"
    sleeper.write_text("#!/bin/sh\nexec sleep 60\n")
    sleeper.chmod(0o755)
    error, took = _cancelled_soon(lambda: run_builder(sleeper, [], what="create"))
    assert isinstance(error, cancel.Cancelled) and took < 2  # not a DriverError "killed by signal 9"


class _SlowBlob(http.server.BaseHTTPRequestHandler):
    """Answers a blob GET with its headers and a few bytes, then nothing (a stalled registry)."""

    protocol_version = "HTTP/1.1"
    body = b"x" * (4 << 20)

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body[:1000])
        self.wfile.flush()
        time.sleep(30)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stalled_registry() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowBlob)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_download_stalled_mid_body_stops(stalled_registry: str, tmp_path: Path) -> None:
    """The read blocked on the socket returns at once (the socket is shut), and no retry follows."""
    store = ContentStore(tmp_path / "store")
    body = _SlowBlob.body
    blob = Descriptor(
        media_type="application/octet-stream",
        digest="sha256:" + hashlib.sha256(body).hexdigest(),
        size=len(body),
    )
    with RegistryClient({stalled_registry: HostConfig()}) as client:
        ref = Reference.parse(f"{stalled_registry}/team/app:v1")
        error, took = _cancelled_soon(lambda: client.fetch_blob(ref, blob, store), after=1.0)
    assert isinstance(error, cancel.Cancelled) and took < 1.5, (error, took)
    assert not store.exists(blob.digest)
