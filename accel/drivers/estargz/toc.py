"""The eStargz TOC (`stargz.index.json`): entries as the reference writer marshals them."""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Sequence
from typing import Any

from accel.drivers.estargz.entries import TAR_ENCODING, TAR_ERRORS

TOC_VERSION = 1  # entry types: accel.drivers.toctypes


@dataclasses.dataclass(slots=True)
class TocEntry:
    """One TOC entry; `to_json` emits the reference's field order and omits empty fields like Go does."""

    name: str
    type: str
    size: int = 0
    modtime: str = ""
    link_name: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user_name: str = ""
    group_name: str = ""
    member: int | None = None  # index of the gzip member where the payload starts; becomes `offset`
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: dict[str, str] | None = None  # base64 values: Go marshals []byte that way
    digest: str = ""
    chunk_offset: int = 0
    chunk_size: int = 0
    chunk_digest: str = ""

    def to_json(self, offsets: Sequence[int]) -> dict[str, Any]:
        fields = (
            ("size", self.size),
            ("modtime", self.modtime),
            ("linkName", self.link_name),
            ("mode", self.mode),
            ("uid", self.uid),
            ("gid", self.gid),
            ("userName", self.user_name),
            ("groupName", self.group_name),
            ("offset", offsets[self.member] if self.member is not None else 0),
            ("devMajor", self.dev_major),
            ("devMinor", self.dev_minor),
            ("xattrs", self.xattrs),
            ("digest", self.digest),
            ("chunkOffset", self.chunk_offset),
            ("chunkSize", self.chunk_size),
            ("chunkDigest", self.chunk_digest),
        )
        return {"name": self.name, "type": self.type} | {key: value for key, value in fields if value}


def toc_text(text: str) -> str:
    # Undecodable bytes were kept as surrogates; JSON gets U+FFFD, as Go's encoder would write.
    return text.encode(TAR_ENCODING, TAR_ERRORS).decode(TAR_ENCODING, "replace")


def modtime(mtime: float) -> str:
    """RFC 3339 UTC, rounded to the second; empty for the zero time, as the reference writes it."""
    seconds = math.floor(mtime + 0.5)
    if seconds == 0:
        return ""
    try:
        stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return ""
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
