"""The zstd:chunked TOC (containers/storage `minimal.FileMetadata` entries), as the reference marshals it."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import functools
from typing import Any

from accel import tarstream
from accel.drivers.toctypes import TOC_TYPES
from accel.errors import DriverError

TOC_VERSION = 1
CHUNK_TYPE_ZEROS = "zeros"


def _go_string(value: bytes, what: str) -> str:
    """Go marshals invalid UTF-8 as U+FFFD, after which the reader's TOC/tar-split check fails: refuse."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise DriverError(f"{what} {value!r} is not valid UTF-8; zstd:chunked cannot represent it") from None


_GO_ZERO_TIME = tarstream.Timestamp(-62135596800)  # Go's time.Time{} (0001-01-01), omitted from the TOC
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def rfc3339_nano(ts: tarstream.Timestamp) -> str:
    """Go's time.Time JSON form (RFC 3339 with nanoseconds, trailing zeros trimmed), in UTC."""
    try:
        moment = _EPOCH + datetime.timedelta(seconds=ts.seconds)
    except OverflowError:
        raise DriverError(f"timestamp {ts.seconds} is out of range for zstd:chunked") from None
    text = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
    if ts.nanoseconds:
        text += "." + f"{ts.nanoseconds:09d}".rstrip("0")
    return text + "Z"


# Files of a layer mostly share a handful of times (an image build's, SOURCE_DATE_EPOCH): remembered.
@functools.lru_cache(maxsize=1024)
def _toc_time(ts: tarstream.Timestamp) -> str | None:
    """A TOC time field: Go's zero time is left out (None), like omitempty leaves it."""
    return None if ts == _GO_ZERO_TIME else rfc3339_nano(ts)


@dataclasses.dataclass
class TocEntry:
    """minimal.FileMetadata; `to_json` keeps the reference's field order and omitempty rules."""

    type: str
    name: str
    linkName: str = ""  # camelCase: the JSON field names of the format
    mode: int = 0
    size: int = 0
    uid: int = 0
    gid: int = 0
    modtime: str | None = None
    accesstime: str | None = None
    changetime: str | None = None
    devMajor: int = 0
    devMinor: int = 0
    xattrs: dict[str, str] = dataclasses.field(default_factory=dict)
    digest: str = ""
    offset: int = 0
    endOffset: int = 0
    chunkSize: int = 0
    chunkOffset: int = 0
    chunkDigest: str = ""
    chunkType: str = ""

    def to_json(self) -> dict[str, Any]:
        if self.type and self.name:
            # The instance dict holds the fields in declaration order (assigning a field again keeps its
            # place), which is the reference's order: one comprehension instead of a getattr per field,
            # which showed in the profile of a layer with many files.
            doc = {key: value for key, value in self.__dict__.items() if value}
        else:  # type and name are always written, even empty
            doc = {"type": self.type, "name": self.name}
            doc.update((name, value) for name in _OPTIONAL_FIELDS if (value := getattr(self, name)))
        if self.xattrs:
            doc["xattrs"] = dict(sorted(self.xattrs.items()))
        return doc

    @classmethod
    def from_header(cls, header: tarstream.TarHeader) -> TocEntry:
        # By (Go-normalised) tar typeflag; anything else cannot be represented.
        toc_type = TOC_TYPES.get(header.typeflag)
        name = _go_string(header.name, "tar entry name")
        if toc_type is None:
            raise DriverError(
                f"tar entry {name!r} has type {header.typeflag!r}, which zstd:chunked cannot represent"
            )
        if header.sparse:
            raise DriverError(f"tar entry {name!r} is a sparse file, which zstd:chunked cannot represent")
        xattrs = (
            {
                _go_string(key, "xattr name"): base64.b64encode(value).decode("ascii")
                for key, value in header.xattrs.items()
            }
            if header.pax_records  # where xattrs come from: most headers have none
            else {}
        )
        return cls(
            type=toc_type,
            name=name,
            linkName=_go_string(header.linkname, "tar link target") if header.linkname else "",
            mode=header.mode,
            size=header.size,
            uid=header.uid,
            gid=header.gid,
            modtime=None if header.mtime is None else _toc_time(header.mtime),
            accesstime=None if header.atime is None else _toc_time(header.atime),
            changetime=None if header.ctime is None else _toc_time(header.ctime),
            devMajor=header.devmajor,
            devMinor=header.devminor,
            xattrs=xattrs,
        )


# Every field after type and name, in the reference's order (looked up once: one TOC has many entries).
_OPTIONAL_FIELDS = tuple(f.name for f in dataclasses.fields(TocEntry)[2:])
