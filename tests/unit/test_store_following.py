"""Reading a blob while it arrives (`ContentStore.open_following`): a conversion reads behind its pull."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from accel import digest as dg
from accel.errors import DigestMismatch
from accel.store import BlobUnavailable, BlobWriter, ContentStore

DATA = os.urandom(3 << 20) + b"tail"
DIGEST = dg.of_bytes(DATA)
PIECE = 256 << 10


@pytest.fixture(autouse=True)
def _followers_told_of_every_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each piece a test's writer writes is told to the followers at once (by default they are told once a
    MiB has gathered: `test_followers_are_told_once_a_mib_has_gathered_and_at_the_commit`)."""
    monkeypatch.setattr(BlobWriter, "TELL_FOLLOWERS_BYTES", PIECE)


def _read_all(reader, seconds: float = 30) -> bytes:
    """The rest of `reader`, or its error; a reader still waiting after `seconds` fails the test (instead of
    hanging the suite)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        out = bytearray()
        try:
            while chunk := reader.read(100_000):
                out += chunk
            outcome["data"] = bytes(out)
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the follower still waits after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["data"]


class Gate:
    """Lets a writer thread go on one step at a time, so a test decides what the follower has seen."""

    def __init__(self) -> None:
        self._steps = threading.Semaphore(0)

    def step(self, count: int = 1) -> None:
        for _ in range(count):
            self._steps.release()

    def wait(self) -> None:
        assert self._steps.acquire(timeout=30), "the test never let the writer go on"


def _write(
    store: ContentStore,
    data: bytes,
    gate: Gate | None,
    fail_at: int | None = None,
    started: threading.Event | None = None,
) -> None:
    with store.writer(expected=DIGEST) as writer:
        if started is not None:
            started.set()
        for offset in range(0, len(data), PIECE):
            if gate is not None:
                gate.wait()
            if fail_at is not None and offset >= fail_at:
                raise ConnectionResetError("the registry hung up")
            writer.write(data[offset : offset + PIECE])


def _start(target, *args) -> threading.Thread:
    def run() -> None:
        with contextlib.suppress(ConnectionResetError, DigestMismatch):  # the failures made on purpose
            target(*args)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_follower_reads_the_blob_while_it_is_written_and_ends_only_at_the_commit(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    store.expect(DIGEST)
    gate = Gate()
    writer = _start(_write, store, DATA, gate)
    with store.open_following(DIGEST) as follower:
        gate.step(2)  # two pieces written: the follower reads them before the blob is complete
        first = follower.read(2 * PIECE)
        assert first == DATA[: 2 * PIECE]
        assert not store.exists(DIGEST)
        gate.step(len(DATA) // PIECE + 1)
        rest = _read_all(follower)
    writer.join(10)
    assert first + rest == DATA
    assert store.exists(DIGEST)


def test_a_follower_carries_on_in_the_next_attempt_after_a_broken_download(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    store.expect(DIGEST)
    gate = Gate()
    broken = _start(_write, store, DATA, gate, 5 * PIECE)
    with store.open_following(DIGEST) as follower:
        gate.step(3)
        first = follower.read(3 * PIECE)
        gate.step(3)  # two more pieces, then the attempt fails
        broken.join(10)
        retry = _start(_write, store, DATA, None)  # the client's retry writes the blob from its start
        rest = _read_all(follower)
    retry.join(10)
    assert first + rest == DATA


def test_a_follower_fails_when_the_pull_gives_up(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    store.expect(DIGEST)
    gate = Gate()
    broken = _start(_write, store, DATA, gate, 2 * PIECE)
    with store.open_following(DIGEST) as follower:
        gate.step()
        assert follower.read(PIECE) == DATA[:PIECE]
        gate.step(2)  # one more piece, then the download breaks and no retry comes
        broken.join(10)
        store.give_up(DIGEST, "its pull-layer task run failed")
        with pytest.raises(BlobUnavailable, match="its pull-layer task run failed"):
            _read_all(follower)
    assert not store.exists(DIGEST)


def test_bytes_that_fail_the_digest_check_are_never_the_end_of_a_follower(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    store.expect(DIGEST)
    tampered = DATA[:-4] + b"TAIL"
    writer = _start(_write, store, tampered, None)
    with store.open_following(DIGEST) as follower:
        writer.join(10)  # the whole tampered blob was written, then refused by its digest
        store.give_up(DIGEST, "digest mismatch")
        with pytest.raises(BlobUnavailable, match="digest mismatch"):
            _read_all(follower)


def test_a_writer_nobody_announced_fails_its_followers_when_it_fails(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    gate = Gate()
    started = threading.Event()
    broken = _start(_write, store, DATA, gate, PIECE, started)
    assert started.wait(10)
    with store.open_following(DIGEST) as follower:  # no `expect`: it follows the writer it finds
        gate.step(2)
        broken.join(10)
        with pytest.raises(BlobUnavailable, match="only writer failed"):
            _read_all(follower)


def test_without_a_writer_it_is_the_stored_blob(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    with pytest.raises(FileNotFoundError):
        store.open_following(DIGEST)
    store.put_bytes(DATA)
    with store.open_following(DIGEST) as reader:
        assert _read_all(reader) == DATA
    assert store.wait_for(DIGEST) == store.path(DIGEST)


def test_wait_for_returns_once_the_blob_is_committed(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    store.expect(DIGEST)
    gate = Gate()
    writer = _start(_write, store, DATA, gate)
    waited: list[Path] = []
    waiter = threading.Thread(target=lambda: waited.append(store.wait_for(DIGEST)), daemon=True)
    waiter.start()
    gate.step(2)
    waiter.join(0.2)
    assert waiter.is_alive() and not waited  # two pieces are no blob yet
    gate.step(len(DATA) // PIECE + 1)
    waiter.join(10)
    writer.join(10)
    assert waited == [store.path(DIGEST)]
    assert store.path(DIGEST).read_bytes() == DATA


def test_one_of_two_pulls_of_a_blob_giving_up_leaves_the_other_to_finish(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    store.expect(DIGEST)  # two runs in one process pull the same layer
    store.expect(DIGEST)
    with store.open_following(DIGEST) as follower:
        store.give_up(DIGEST, "the first run's pull failed")
        writer = _start(_write, store, DATA, None)  # the second run's pull
        assert _read_all(follower) == DATA
    writer.join(10)
    store.give_up(DIGEST, "the second run's pull ended")  # after the commit: nothing to fail
    with store.open_following(DIGEST) as reader:
        assert _read_all(reader) == DATA


def test_followers_are_told_once_a_mib_has_gathered_and_at_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(BlobWriter, "TELL_FOLLOWERS_BYTES", 1 << 20)
    store = ContentStore(tmp_path)
    store.expect(DIGEST)
    arrival = store._arrivals[DIGEST]
    gate = Gate()
    writer = _start(_write, store, DATA, gate)
    with store.open_following(DIGEST) as follower:
        gate.step(3)  # 768 KiB written: not told yet
        gate.step(1)  # a MiB: told
        first = follower.read(1 << 20)
        assert first == DATA[: 1 << 20]
        assert arrival.written == 1 << 20
        gate.step(len(DATA) // PIECE + 1)  # the rest, short of a MiB at the end: told at the commit
        rest = _read_all(follower)
    writer.join(10)
    assert first + rest == DATA
    assert store.exists(DIGEST)
