"""Content-addressed blob store under the work dir.

Blobs are written to a private temp file in `ingest/`, verified, then renamed into `blobs/sha256/<hex>`.
Rename is atomic, so concurrent writers of the same blob (two conversions pulling one base layer) never
see or produce a partial file; the loser's identical copy simply replaces the winner's.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from accel import digest as dg
from accel.errors import DigestMismatch


class BlobWriter:
    """A write-only file that hashes what goes through it. Committed by `ContentStore.writer`."""

    def __init__(self, fileobj: BinaryIO, temp_path: Path) -> None:
        self._file = fileobj
        self._digester = dg.Digester()
        self.temp_path = temp_path
        self.digest: str | None = None  # set after commit

    def write(self, data: bytes | memoryview) -> int:
        self._file.write(data)
        self._digester.update(data)
        return len(data)

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
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs" / "sha256"
        self._ingest = self.root / "ingest"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._ingest.mkdir(parents=True, exist_ok=True)

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
        """Yield a BlobWriter; on clean exit verify (if `expected`) and commit atomically."""
        fd, name = tempfile.mkstemp(dir=self._ingest, prefix="ingest-")
        temp = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                w = BlobWriter(f, temp)
                yield w
                f.flush()
                os.fsync(f.fileno())
            actual = w.current_digest()
            if expected is not None and actual != expected:
                raise DigestMismatch(expected, actual, "blob")
            os.replace(temp, self.path(actual))
            w.digest = actual
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

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
