"""accel.compression: the background digester behind the DiffID check and zstd:chunked's stream digest, the
background writer, and the read-ahead reader every driver gets its source tar from."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import threading
from pathlib import Path

import pytest

from accel import constants as mt
from accel.compression import BackgroundDigester, BackgroundWriter, PrefetchingReader, open_uncompressed
from accel.errors import DigestMismatch


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


def test_background_writer_writes_parts_in_order_joining_small_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BackgroundWriter, "SMALL_PART", 100)
    sink = _Sink()
    writer = BackgroundWriter(sink)
    small, large = [b"a" * 10, b"b" * 20], [b"c" * 500]
    writer.write(b"first")
    writer.write_parts(small + large + small)
    writer.write_parts([])
    writer.flush()
    assert sink.parts == [b"first", b"a" * 10 + b"b" * 20, b"c" * 500, b"a" * 10 + b"b" * 20]
    writer.close()


class _Chunky(io.RawIOBase):
    """A stream that answers every read with at most `step` bytes (as a decompressor may)."""

    def __init__(self, data: bytes, step: int, fail_after: int | None = None) -> None:
        self._data, self._step, self._pos, self._fail_after = data, step, 0, fail_after

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._fail_after is not None and self._pos >= self._fail_after:
            raise EOFError("compressed stream ended early")
        size = self._step if size < 0 else min(size, self._step)
        data = self._data[self._pos : self._pos + size]
        self._pos += len(data)
        return data


def test_prefetching_reader_serves_any_read_pattern_in_order() -> None:
    rng = random.Random(3)
    data = rng.randbytes(200_000)
    seen: list[bytes] = []
    reader = PrefetchingReader(_Chunky(data, 7000), seen.append, block_size=4096)
    assert reader.peek()[:3] == data[:3] and reader.read(0) == b""
    got = []
    while True:
        size = rng.choice([1, 511, 512, 4096, 5000, 20_000])
        piece = reader.read1(size) if rng.random() < 0.2 else reader.read(size)
        assert len(piece) <= size
        if not piece:
            break
        got.append(piece)
    assert b"".join(got) == data and b"".join(seen) == data  # every block went through the callback
    assert reader.read(10) == b"" and reader.peek() == b"" and reader.read() == b""
    reader.close()
    reader.close()


def test_prefetching_reader_hands_out_whole_blocks_without_copies() -> None:
    blocks: list[bytes] = []
    reader = PrefetchingReader(_Chunky(bytes(range(256)) * 64, 4096), blocks.append, block_size=4096)
    first = reader.read(4096)
    assert first is blocks[0]
    assert reader.read() == (bytes(range(256)) * 64)[4096:]
    reader.close()


def test_prefetching_reader_raises_what_the_stream_raised_after_the_good_bytes() -> None:
    reader = PrefetchingReader(_Chunky(bytes(10_000), 1000, fail_after=3000), lambda block: None, 1000)
    assert reader.read(3000) == bytes(3000)
    with pytest.raises(EOFError, match="ended early"):
        reader.read(1)
    reader.close()


def test_prefetching_reader_stops_its_thread_when_closed_early() -> None:
    reader = PrefetchingReader(_Chunky(bytes(10 << 20), 4096), lambda block: None, block_size=4096)
    assert reader.read(10) == bytes(10)
    reader.close()  # the thread is blocked on a full queue: close must still end it
    assert not [t for t in threading.enumerate() if t.name == "layer-reader" and t.is_alive()]
    with pytest.raises(ValueError, match="closed"):
        reader.read(1 << 20)


def test_a_callback_error_stops_reading_before_the_block_is_handed_out() -> None:
    def refuse_second(block: bytes, calls: list[int] = []) -> None:  # noqa: B006 - counts calls
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("over the limit")

    reader = PrefetchingReader(_Chunky(bytes(5000), 1000), refuse_second, block_size=1000)
    assert reader.read(1000) == bytes(1000)
    with pytest.raises(ValueError, match="over the limit"):
        reader.read(1)
    reader.close()


def test_open_uncompressed_checks_the_diff_id_of_what_was_left_unread(tmp_path: Path) -> None:
    raw = random.Random(5).randbytes(3 << 20)
    path = tmp_path / "layer.gz"
    path.write_bytes(gzip.compress(raw, compresslevel=1))
    good = "sha256:" + hashlib.sha256(raw).hexdigest()
    with open_uncompressed(path, mt.OCI_LAYER_GZIP, good) as stream:
        assert stream.read(100) == raw[:100]  # the rest is drained and hashed on exit
    with pytest.raises(DigestMismatch), open_uncompressed(path, mt.OCI_LAYER_GZIP, "sha256:" + "0" * 64):
        pass
    with open_uncompressed(path, mt.OCI_LAYER_GZIP, good) as stream:
        assert stream.read() == raw
