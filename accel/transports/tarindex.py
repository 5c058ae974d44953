"""Random access to the members of an uncompressed tar: the headers are read once, payloads by seeking.

Layers inside an archive are never loaded into memory: `open` returns a reader over the member's byte
range with a file handle of its own, so several threads may read members at once.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from accel.errors import InvalidImage

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # of the payload in the archive
    size: int


class _Section(io.RawIOBase):
    """`size` bytes of `path` from `offset`, read through a handle of its own."""

    def __init__(self, path: Path, offset: int, size: int) -> None:
        self._file = path.open("rb")
        self._file.seek(offset)
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._left <= 0:
            return 0
        data = self._file.read(min(len(buffer), self._left))
        if not data:
            raise InvalidImage("archive ends inside a member")
        buffer[: len(data)] = data
        self._left -= len(data)
        return len(data)

    def close(self) -> None:
        self._file.close()
        super().close()


def clean(name: str) -> str:
    """`./blobs/sha256/x` and `blobs/sha256/x` are the same member."""
    cleaned = posixpath.normpath("/" + name).lstrip("/")
    return "" if cleaned == "." else cleaned


class TarIndex:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.members: dict[str, Member] = {}
        with self.path.open("rb") as f:
            magic = f.read(4)
        if magic.startswith(_GZIP_MAGIC) or magic.startswith(_ZSTD_MAGIC):
            raise InvalidImage(
                f"{self.path}: a compressed archive; decompress it first (seeking needs a plain tar)"
            )
        try:
            with tarfile.open(self.path, mode="r:") as tar:
                links: dict[str, str] = {}
                for info in tar:
                    name = clean(info.name)
                    if info.isreg():
                        self.members[name] = Member(name, info.offset_data, info.size)
                    elif info.islnk() or info.issym():
                        base = posixpath.dirname(name) if info.issym() else ""
                        links[name] = clean(posixpath.join(base, info.linkname))
                for name, target in links.items():  # docker save links repeated layers to the first
                    if target in self.members:
                        self.members[name] = self.members[target]
        except tarfile.TarError as exc:
            raise InvalidImage(f"{self.path}: not a readable tar archive: {exc}") from exc

    def __contains__(self, name: str) -> bool:
        return clean(name) in self.members

    def member(self, name: str) -> Member:
        found = self.members.get(clean(name))
        if found is None:
            raise KeyError(name)
        return found

    def open(self, name: str) -> BinaryIO:
        m = self.member(name)
        return io.BufferedReader(_Section(self.path, m.offset, m.size), buffer_size=1 << 20)  # type: ignore[return-value]

    def read(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()
