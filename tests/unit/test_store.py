import threading

import pytest

from accel import digest as dg
from accel.errors import DigestMismatch
from accel.store import ContentStore


def test_put_and_read_verified(tmp_path):
    store = ContentStore(tmp_path)
    d = store.put_bytes(b"hello")
    assert d == dg.of_bytes(b"hello")
    assert store.read_bytes(d) == b"hello"
    store.path(d).write_bytes(b"jello")  # tampered on disk
    with pytest.raises(DigestMismatch):
        store.read_bytes(d)


def test_wrong_expected_digest_leaves_nothing(tmp_path):
    store = ContentStore(tmp_path)
    with pytest.raises(DigestMismatch):
        store.put_bytes(b"abc", expected=dg.of_bytes(b"abd"))
    assert not store.exists(dg.of_bytes(b"abc"))
    assert list((tmp_path / "ingest").iterdir()) == []


def test_failed_writer_leaves_no_partial_blob(tmp_path):
    store = ContentStore(tmp_path)
    with pytest.raises(RuntimeError), store.writer() as w:
        w.write(b"partial")
        raise RuntimeError("network died")
    assert list((tmp_path / "blobs" / "sha256").iterdir()) == []
    assert list((tmp_path / "ingest").iterdir()) == []


def test_concurrent_writers_of_one_blob(tmp_path):
    store = ContentStore(tmp_path)
    data = bytes(range(256)) * 4096
    expected = dg.of_bytes(data)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with store.writer(expected) as w:
                for i in range(0, len(data), 4096):
                    w.write(data[i : i + 4096])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.read_bytes(expected) == data
