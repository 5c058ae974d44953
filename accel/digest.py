"""sha256 digests in the OCI `algorithm:hex` form."""

from __future__ import annotations

import hashlib
import re

from accel.errors import DigestMismatch

_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")


def is_digest(value: str) -> bool:
    return bool(_DIGEST_RE.match(value))


def validate(value: str) -> str:
    if not is_digest(value):
        raise ValueError(f"not a sha256 digest: {value!r}")
    return value


def of_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def hex_of(digest: str) -> str:
    return validate(digest).split(":", 1)[1]


def short(digest: str) -> str:
    """`sha256:abcdef012345` — enough to name a task run."""
    return digest[:19]


class Digester:
    """Incremental sha256 plus a byte count."""

    __slots__ = ("_h", "size")

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        self._h.update(data)
        self.size += len(data)

    def digest(self) -> str:
        return "sha256:" + self._h.hexdigest()


def verify(expected: str, data: bytes, what: str = "content") -> bytes:
    actual = of_bytes(data)
    if actual != expected:
        raise DigestMismatch(expected, actual, what)
    return data
