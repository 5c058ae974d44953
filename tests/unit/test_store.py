import os
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


def test_gc_removes_least_recently_used_first_and_spares_recent_blobs(tmp_path):
    import os

    store = ContentStore(tmp_path)
    digests = [store.put_bytes(bytes([i]) * 1000) for i in range(4)]
    now = 1_000_000.0
    for age_hours, d in zip((5, 4, 3, 0), digests, strict=True):  # the last one was used just now
        stamp = now - age_hours * 3600
        os.utime(store.path(d), (stamp, stamp))

    removed = store.gc(max_bytes=2500, min_age_seconds=3600, now=now)
    assert removed == digests[:2]  # oldest first, until 2 x 1000 bytes remain
    assert [store.exists(d) for d in digests] == [False, False, True, True]

    # Over the limit, but what was used within the last hour stays.
    assert store.gc(max_bytes=0, min_age_seconds=3600, now=now) == [digests[2]]
    assert store.exists(digests[3])


def test_touch_makes_a_blob_recent(tmp_path):
    import os

    store = ContentStore(tmp_path)
    old, used = store.put_bytes(b"old"), store.put_bytes(b"used")
    for d in (old, used):
        os.utime(store.path(d), (1000.0, 1000.0))
    store.touch(used)
    assert store.gc(max_bytes=4, min_age_seconds=0) == [old]


def test_storing_a_stored_blob_again_only_marks_it_used(tmp_path, monkeypatch):
    store = ContentStore(tmp_path)
    digest = store.put_bytes(b"a manifest")
    path = store.path(digest)
    inode = path.stat().st_ino
    os.utime(path, (1, 1))
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)

    assert store.put_bytes(b"a manifest", digest) == digest

    assert path.stat().st_ino == inode and synced == []  # not written (nor synced) again
    assert path.stat().st_mtime > 1  # but used now, for garbage collection
    with pytest.raises(DigestMismatch):
        store.put_bytes(b"another manifest", digest)
