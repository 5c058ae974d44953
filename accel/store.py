"""Content-addressed blob store under the work dir.

Blobs are written to a private temp file in `ingest/`, verified, then renamed into `blobs/sha256/<hex>`.
Rename is atomic, so concurrent writers of the same blob (two conversions pulling one base layer) never
see or produce a partial file; the loser's identical copy simply replaces the winner's.

A blob written with its expected digest can also be read while it arrives (`open_following`): a layer's
conversion starts on the bytes its pull has written so far instead of waiting for the whole blob. Such a
reader ends only once the blob is committed (digest verified), and fails when the writer gives up.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from accel import cancel
from accel import digest as dg
from accel.errors import AccelError, DigestMismatch


class BlobUnavailable(AccelError):
    """A blob followed while it arrived (`ContentStore.open_following`) was never committed to the store."""


class _Arrival:
    """A blob on its way into the store, seen by the readers following it (one per blob and store object).

    Each write attempt (a registry client retries a broken download from the start) writes its own temp
    file; followers read the current attempt's file up to `written`, and carry on at the same offset in the
    next attempt's file, or in the committed blob: the same digest has the same bytes at every offset.
    """

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.attempt = 0  # bumped by each writer that takes over the publishing
        self.path: Path | None = None  # that attempt's temp file; None between attempts
        self.written = 0
        self.committed = False
        self.committed_attempt = 0  # which attempt's file became the blob (0: a writer nobody followed)
        self.failure: str | None = None  # set when nobody will write the blob any more
        self.expected = 0  # pulls announced (`ContentStore.expect`) and not yet ended: wait between attempts


class BlobWriter:
    """A write-only file that hashes what goes through it. Committed by `ContentStore.writer`."""

    # Followers are told about new bytes once this many have gathered (and at the commit): a registry
    # download writes 64 KiB pieces, and waking a reader for each cost more than the piece.
    TELL_FOLLOWERS_BYTES = 1 << 20

    def __init__(self, fileobj: BinaryIO, temp_path: Path, arrival: _Arrival | None = None) -> None:
        self._file = fileobj
        self._digester = dg.Digester()
        self.temp_path = temp_path
        self.digest: str | None = None  # set after commit
        self._arrival = arrival  # followers to tell about each write (`ContentStore.open_following`)
        self._told = 0  # bytes the followers were told about

    def write(self, data: bytes | memoryview) -> int:
        self._file.write(data)
        self._digester.update(data)
        if self._arrival is not None and self._digester.size - self._told >= self.TELL_FOLLOWERS_BYTES:
            self.tell_followers()
        return len(data)

    def tell_followers(self) -> None:
        """Let the readers following this blob see everything written so far."""
        if self._arrival is None or self._told == self._digester.size:
            return
        self._file.flush()  # followers read the file through their own descriptors
        with self._arrival.changed:
            self._arrival.written = self._told = self._digester.size
            self._arrival.changed.notify_all()

    def tell(self) -> int:
        return self._digester.size

    @property
    def size(self) -> int:
        return self._digester.size

    def current_digest(self) -> str:
        return self._digester.digest()

    def flush(self) -> None:
        self._file.flush()


class ContentStore:
    """Blobs under `root`. Readers following a blob (`open_following`) see the writers of the same store
    object: one per config in a process (`accel.context`), shared by every run there, so two runs pulling
    the same layer count their announcements (`expect`/`give_up`) on one arrival. A writer through another
    object on the same directory is seen once it has committed the blob."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs" / "sha256"
        self._ingest = self.root / "ingest"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._ingest.mkdir(parents=True, exist_ok=True)
        self._arrivals: dict[str, _Arrival] = {}  # digest → the blob arriving now
        self._arrivals_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ContentStore({str(self.root)!r})"

    def path(self, digest: str) -> Path:
        return self._blobs / dg.hex_of(digest)

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def open(self, digest: str) -> BinaryIO:
        return self.path(digest).open("rb")

    def read_bytes(self, digest: str) -> bytes:
        """Small documents (manifests, configs); verified on every read."""
        return dg.verify(digest, self.path(digest).read_bytes(), f"stored blob {digest}")

    def put_bytes(self, data: bytes, expected: str | None = None) -> str:
        digest = dg.of_bytes(data)
        if expected is not None and digest != expected:
            raise DigestMismatch(expected, digest, "blob")
        with contextlib.suppress(FileNotFoundError):
            if self.size(digest) == len(data):
                # Committed whole and verified before: writing it again would only cost an fsync (a warm
                # conversion re-stores the documents it read moments earlier). A blob damaged on disk since
                # (another size) is written again.
                self.touch(digest)
                return digest
        with self.writer(expected) as w:
            w.write(data)
        assert w.digest is not None
        return w.digest

    def touch(self, digest: str) -> None:
        """Mark a blob as used now, so garbage collection keeps it longest."""
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path(digest))

    def total_size(self) -> int:
        return sum(p.stat().st_size for p in self._blobs.iterdir())

    def gc(self, max_bytes: int, min_age_seconds: float = 3600.0, now: float | None = None) -> list[str]:
        """Delete least recently used blobs until the store holds at most `max_bytes`.

        Blobs used (written or touched) within `min_age_seconds` are kept whatever the size: a conversion
        running now may still need them. Returns the digests removed.
        """
        now = time.time() if now is None else now
        entries = []
        for path in self._blobs.iterdir():
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                entries.append((max(st.st_mtime, st.st_atime), st.st_size, path))
        total = sum(size for _, size, _ in entries)
        removed: list[str] = []
        for used, size, path in sorted(entries):
            if total <= max_bytes:
                break
            if now - used < min_age_seconds:
                break  # everything after this one is newer still
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(f"sha256:{path.name}")
            total -= size
        return removed

    def temp_path(self, suffix: str = "") -> Path:
        """A fresh private path under the store for scratch files (removed by the caller)."""
        fd, name = tempfile.mkstemp(dir=self._ingest, prefix="scratch-", suffix=suffix)
        os.close(fd)
        return Path(name)

    @contextlib.contextmanager
    def writer(self, expected: str | None = None) -> Iterator[BlobWriter]:
        """Yield a BlobWriter; on clean exit verify (if `expected`) and commit atomically. With `expected`,
        readers may follow the blob while it is written (`open_following`)."""
        fd, name = tempfile.mkstemp(dir=self._ingest, prefix="ingest-")
        temp = Path(name)
        arrival = self._publish(expected, temp) if expected is not None else None
        committed = False
        try:
            with os.fdopen(fd, "wb") as f:
                w = BlobWriter(f, temp, arrival)
                yield w
                w.tell_followers()  # the last bytes, before the fsync: readers go on meanwhile
                f.flush()
                os.fsync(f.fileno())
            actual = w.current_digest()
            if expected is not None and actual != expected:
                raise DigestMismatch(expected, actual, "blob")
            os.replace(temp, self.path(actual))
            w.digest = actual
            committed = True
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            if expected is not None:
                self._attempt_ended(expected, arrival, committed)

    # --- reading a blob while it arrives -----------------------------------------------------------
    def expect(self, digest: str) -> None:
        """Announce that a writer of `digest` is coming (a pull is submitted): followers wait for it, and
        for every retry, until the blob is committed or `give_up` says it will not be. Each `expect` is
        ended by one `give_up` (two runs in one process may pull the same layer)."""
        with self._arrivals_lock:
            self._arrivals.setdefault(digest, _Arrival()).expected += 1

    def give_up(self, digest: str, reason: str) -> None:
        """An announced writer of `digest` ended (its pull ended, well or not). When it was the last one
        and the blob is not in the store, followers fail with `reason`."""
        with self._arrivals_lock:
            arrival = self._arrivals.get(digest)
            if arrival is None:
                return
            arrival.expected -= 1
            if arrival.expected > 0:
                return
            del self._arrivals[digest]
        with arrival.changed:
            if not arrival.committed and not self.exists(digest):
                arrival.failure = reason
            arrival.changed.notify_all()

    def open_following(self, digest: str) -> BinaryIO:
        """The blob's bytes, read while a writer through this store still writes them (see the module
        docstring); the committed blob when it is there, or when nothing is arriving."""
        with self._arrivals_lock:
            arrival = self._arrivals.get(digest)
        if arrival is None or self.exists(digest):
            return self.open(digest)
        return io.BufferedReader(_FollowingReader(self, digest, arrival), buffer_size=1 << 20)

    def wait_for(self, digest: str) -> Path:
        """The blob's path once it is committed; at once when no writer through this store is bringing it."""
        with self._arrivals_lock:
            arrival = self._arrivals.get(digest)
        if arrival is not None:
            with arrival.changed:
                while not (arrival.committed or arrival.failure or self.exists(digest)):
                    cancel.check()
                    arrival.changed.wait(_FollowingReader.WAIT_SECONDS)
            if arrival.failure is not None and not self.exists(digest):
                raise BlobUnavailable(f"blob {digest} never reached the store: {arrival.failure}")
        return self.path(digest)

    def _publish(self, digest: str, temp: Path) -> _Arrival | None:
        with self._arrivals_lock:
            arrival = self._arrivals.setdefault(digest, _Arrival())
        with arrival.changed:
            if arrival.path is None:  # else another writer publishes already; this one writes privately
                arrival.attempt += 1
                arrival.path = temp
                arrival.written = 0
                arrival.changed.notify_all()
                return arrival
        return None  # that writer writes privately: nobody follows it

    def _attempt_ended(self, digest: str, arrival: _Arrival | None, committed: bool) -> None:
        with self._arrivals_lock:
            shared = self._arrivals.get(digest)
            if shared is not None and (committed or (shared is arrival and not shared.expected)):
                del self._arrivals[digest]  # committed, or a writer nobody announced: nothing more will come
        if shared is None:
            return
        with shared.changed:
            if committed:
                shared.committed = True
                shared.committed_attempt = shared.attempt if shared is arrival else 0
            elif shared is arrival:
                shared.path = None  # between attempts: followers wait for the next writer or `give_up`
                if not shared.expected:
                    shared.failure = "its only writer failed"
            shared.changed.notify_all()

    def commit_file(self, path: Path, expected: str | None = None) -> tuple[str, int]:
        """Move an already-written file (e.g. a builder's output) into the store, hashing it on the way."""
        d = dg.Digester()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                d.update(chunk)
        actual = d.digest()
        if expected is not None and actual != expected:
            raise DigestMismatch(expected, actual, f"file {path}")
        os.replace(path, self.path(actual))
        return actual, d.size


class _FollowingReader(io.RawIOBase):
    """Reads a blob while it arrives: see `ContentStore.open_following` and `_Arrival`."""

    WAIT_SECONDS = 1.0  # re-check the store this often while waiting (a writer in another process commits)

    def __init__(self, store: ContentStore, digest: str, arrival: _Arrival) -> None:
        super().__init__()
        self._store = store
        self._digest = digest
        self._arrival = arrival
        self._file: BinaryIO | None = None
        self._attempt = -1  # the attempt `_file` belongs to; 0 = the committed blob
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            if self._file is not None:
                count = self._file.readinto(buffer)
                if count:
                    self._offset += count
                    return count
                if self._attempt == 0:
                    return 0  # the end of the committed blob
            self._wait_for_more()

    def _wait_for_more(self) -> None:
        """Wait until bytes past `_offset` can be read; switch files when the attempt changed or the blob
        was committed."""
        arrival = self._arrival
        with arrival.changed:
            while True:
                cancel.check()  # the pull it waits for may never come: its run was cancelled
                if arrival.committed and arrival.committed_attempt == self._attempt:
                    self._attempt = 0  # our file became the committed blob (renamed): read it to its end
                    return
                if arrival.committed or self._store.exists(self._digest):
                    self._reopen(self._store.path(self._digest), 0)
                    return
                if arrival.failure is not None:
                    raise BlobUnavailable(f"blob {self._digest} never reached the store: {arrival.failure}")
                if arrival.path is not None and arrival.written > self._offset:
                    if arrival.attempt == self._attempt:
                        return
                    try:
                        self._reopen(arrival.path, arrival.attempt)
                        return
                    except FileNotFoundError:
                        # The attempt ended (renamed into the store, or failed) since it was published;
                        # its writer tells which once it has the lock: let it have it.
                        arrival.changed.wait(0.01)
                        continue
                arrival.changed.wait(self.WAIT_SECONDS)

    def _reopen(self, path: Path, attempt: int) -> None:
        if self._file is not None:
            self._file.close()
        self._file = path.open("rb", buffering=0)  # type: ignore[assignment]
        self._file.seek(self._offset)
        self._attempt = attempt

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()
