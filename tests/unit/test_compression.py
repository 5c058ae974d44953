"""accel.compression: the background digester behind the DiffID check and zstd:chunked's stream digest."""

from __future__ import annotations

import hashlib
import random

import pytest

from accel.compression import BackgroundDigester, BackgroundWriter


def test_background_digester_hashes_pieces_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BackgroundDigester, "BATCH_BYTES", 1000)  # many batches on the thread
    monkeypatch.setattr(BackgroundDigester, "MAX_BATCHES", 2)  # and back-pressure on the producer
    rng = random.Random(1)
    pieces = [rng.randbytes(rng.choice([0, 1, 100, 999, 5000])) for _ in range(400)]
    digester = BackgroundDigester()
    for piece in pieces:
        digester.update(piece)
    joined = b"".join(pieces)
    assert digester.size == len(joined)
    assert digester.digest() == "sha256:" + hashlib.sha256(joined).hexdigest()
    assert digester.digest() == "sha256:" + hashlib.sha256(joined).hexdigest()  # stable once closed


def test_background_digester_of_nothing_and_close_without_digest() -> None:
    assert BackgroundDigester().digest() == "sha256:" + hashlib.sha256(b"").hexdigest()
    unused = BackgroundDigester()
    unused.update(bytes(2 << 20))  # starts the thread
    unused.close()
    unused.close()


class _Sink:
    def __init__(self, fail_at: int | None = None) -> None:
        self.parts: list[bytes] = []
        self._fail_at = fail_at

    def write(self, data: bytes) -> int:
        if len(self.parts) == self._fail_at:
            raise OSError("disk full")
        self.parts.append(data)
        return len(data)


def test_background_writer_writes_in_order_and_flush_waits() -> None:
    sink = _Sink()
    writer = BackgroundWriter(sink)
    pieces = [bytes([i]) * (i + 1) for i in range(50)]
    for piece in pieces:
        writer.write(piece)
    writer.flush()
    assert sink.parts == pieces
    writer.close()


def test_background_writer_raises_what_a_write_raised() -> None:
    writer = BackgroundWriter(_Sink(fail_at=3))
    with pytest.raises(OSError, match="disk full"):
        for _ in range(10):
            writer.write(b"x")
        writer.flush()
    writer.close()
