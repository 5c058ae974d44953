"""OCI / Docker image models that keep the raw bytes they were read from.

Digests are always computed over bytes, never over re-serialised JSON: every parsed manifest, index and
config carries `raw`, and `Descriptor.of(...)` describes exactly those bytes.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from accel import constants as mt
from accel import digest as dg
from accel.errors import InvalidImage, UnsupportedMediaType


class Platform(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="allow")

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = Field(default=None, alias="os.version")
    os_features: tuple[str, ...] | None = Field(default=None, alias="os.features")

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    @classmethod
    def parse(cls, text: str) -> Platform:
        """`linux/amd64`, `linux/arm64/v8`."""
        parts = text.strip().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"platform must look like os/arch[/variant], got {text!r}")
        return cls(os=parts[0], architecture=parts[1], variant=parts[2] if len(parts) == 3 else None)

    def matches(self, other: Platform) -> bool:
        """`self` is a filter; a filter without variant matches every variant."""
        if self.os != other.os or self.architecture != other.architecture:
            return False
        return self.variant is None or self.variant == other.variant


class Descriptor(BaseModel):
    """An OCI content descriptor. Immutable; `with_(...)` gives a changed copy."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="allow")

    media_type: str = Field(alias="mediaType")
    digest: str
    size: int
    annotations: dict[str, str] | None = None
    platform: Platform | None = None
    urls: tuple[str, ...] | None = None
    artifact_type: str | None = Field(default=None, alias="artifactType")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    def with_(self, **changes: Any) -> Descriptor:
        return self.model_copy(update=changes)

    def annotation(self, key: str) -> str | None:
        return (self.annotations or {}).get(key)

    @classmethod
    def of(cls, media_type: str, raw: bytes, **extra: Any) -> Descriptor:
        return cls(media_type=media_type, digest=dg.of_bytes(raw), size=len(raw), **extra)


def canonical_json(obj: Any) -> bytes:
    """Stable JSON for documents we write ourselves (compact, keys in insertion order)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


# --- Go's encoding/json form of the OCI types -------------------------------------------------------
#
# The Go acceleration service re-encodes a cache index it fetched (`json.MarshalIndent(index, "", "  ")` of
# image-spec v1.1.0's `ocispec.Index`) and stores the fetched bytes under the re-encoded digest: it can only
# read an index whose bytes equal that re-encoding. So documents other Go workers read are written that way:
# the struct's fields in declaration order (not the document's), `omitempty` fields left out when empty,
# map keys sorted, 2-space indent, no trailing newline, `<`, `>`, `&`, U+2028 and U+2029 escaped, and
# whatever the struct does not have dropped (as Go's decoder drops it).

_OMIT = True
# (JSON name, kind, omitempty); kinds: str, int, bytes, strs, map, platform, descriptor, descriptors.
_GO_PLATFORM = (
    ("architecture", "str", False),
    ("os", "str", False),
    ("os.version", "str", _OMIT),
    ("os.features", "strs", _OMIT),
    ("variant", "str", _OMIT),
)
_GO_DESCRIPTOR = (
    ("mediaType", "str", False),
    ("digest", "str", False),
    ("size", "int", False),
    ("urls", "strs", _OMIT),
    ("annotations", "map", _OMIT),
    ("data", "bytes", _OMIT),
    ("platform", "platform", _OMIT),
    ("artifactType", "str", _OMIT),
)
_GO_MANIFEST = (
    ("schemaVersion", "int", False),
    ("mediaType", "str", _OMIT),
    ("artifactType", "str", _OMIT),
    ("config", "descriptor", False),
    ("layers", "descriptors", False),
    ("subject", "descriptor_ptr", _OMIT),
    ("annotations", "map", _OMIT),
)
_GO_INDEX = (
    ("schemaVersion", "int", False),
    ("mediaType", "str", _OMIT),
    ("artifactType", "str", _OMIT),
    ("manifests", "descriptors", False),
    ("subject", "descriptor_ptr", _OMIT),
    ("annotations", "map", _OMIT),
)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# What Go escapes and Python's encoder leaves alone; none of them occurs outside strings.
_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _go_str(value: Any) -> str:
    # Go's decoder turns escaped lone surrogates into U+FFFD.
    return _LONE_SURROGATE.sub("\ufffd", value) if isinstance(value, str) else ""


def _go_value(kind: str, value: Any) -> Any:
    """`value` as Go decodes it into a field of `kind` and encodes it back (None: Go's nil)."""
    if kind == "str":
        return _go_str(value)
    if kind == "int":
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0
    if kind == "bytes":
        return (
            base64.b64encode(base64.b64decode(value)).decode() if isinstance(value, str) and value else None
        )
    if kind == "strs":
        return [_go_str(v) for v in value] if isinstance(value, list) else None
    if kind == "map":
        if not isinstance(value, dict):
            return None
        pairs = {_go_str(k): _go_str(v) for k, v in value.items()}
        return {k: pairs[k] for k in sorted(pairs)}  # Go sorts map keys (byte order = code point order)
    if kind in ("platform", "descriptor_ptr"):
        if not isinstance(value, dict):
            return None
        return _go_struct(_GO_PLATFORM if kind == "platform" else _GO_DESCRIPTOR, value)
    if kind == "descriptor":
        return _go_struct(_GO_DESCRIPTOR, value if isinstance(value, dict) else {})
    if kind == "descriptors":
        return (
            [_go_struct(_GO_DESCRIPTOR, v if isinstance(v, dict) else {}) for v in value]
            if isinstance(value, list)
            else None
        )
    raise ValueError(f"unknown Go field kind {kind!r}")


def _go_struct(fields: tuple[tuple[str, str, bool], ...], doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, kind, omitempty in fields:
        value = _go_value(kind, doc.get(name))
        empty = value is None or (value in ("", 0) and kind in ("str", "int")) or value in ([], {})
        if omitempty and empty:
            continue
        out[name] = value
    return out


def go_json(doc: dict[str, Any], media_type: str) -> bytes:
    """`doc` as the Go service writes it: `json.MarshalIndent(v, "", "  ")` of `ocispec.Index` (for index
    media types) or `ocispec.Manifest`, image-spec v1.1.0."""
    fields = _GO_INDEX if media_type in mt.INDEX_TYPES else _GO_MANIFEST
    text = json.dumps(_go_struct(fields, doc), indent=2, ensure_ascii=False)
    for char, escaped in _GO_ESCAPES.items():
        text = text.replace(char, escaped)
    return text.encode()


def _load_json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidImage(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidImage(f"{what} is not a JSON object")
    return doc


def detect_media_type(raw: bytes, declared: str | None = None) -> str:
    """The media type of a manifest-ish document: the declared one, else its `mediaType`, else its shape."""
    doc = _load_json(raw, "manifest")
    inner = doc.get("mediaType")
    media_type = declared or inner
    if not media_type or media_type in ("application/json", "text/plain"):
        media_type = inner or (mt.OCI_INDEX if "manifests" in doc else mt.OCI_MANIFEST)
    if media_type not in mt.ALL_MANIFEST_TYPES:
        raise UnsupportedMediaType(f"unsupported manifest media type {media_type!r}")
    return media_type


@dataclass(frozen=True)
class Manifest:
    """An image manifest (Docker schema2 or OCI) with the bytes it came from."""

    raw: bytes
    media_type: str
    doc: dict[str, Any] = field(repr=False)

    @classmethod
    def parse(cls, raw: bytes, media_type: str | None = None) -> Manifest:
        media_type = detect_media_type(raw, media_type)
        if media_type not in mt.MANIFEST_TYPES:
            raise UnsupportedMediaType(f"expected an image manifest, got {media_type}")
        doc = _load_json(raw, "manifest")
        if "config" not in doc or not isinstance(doc.get("layers"), list):
            raise InvalidImage("manifest has no config or layers")
        return cls(raw=raw, media_type=media_type, doc=doc)

    @classmethod
    def build(cls, doc: dict[str, Any]) -> Manifest:
        return cls(raw=canonical_json(doc), media_type=doc["mediaType"], doc=doc)

    @property
    def config(self) -> Descriptor:
        return Descriptor.model_validate(self.doc["config"])

    @property
    def layers(self) -> list[Descriptor]:
        return [Descriptor.model_validate(d) for d in self.doc["layers"]]

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.doc.get("annotations") or {})

    @property
    def subject(self) -> Descriptor | None:
        s = self.doc.get("subject")
        return Descriptor.model_validate(s) if s else None

    def descriptor(self, **extra: Any) -> Descriptor:
        return Descriptor.of(self.media_type, self.raw, **extra)


@dataclass(frozen=True)
class Index:
    """An OCI image index or Docker manifest list with the bytes it came from."""

    raw: bytes
    media_type: str
    doc: dict[str, Any] = field(repr=False)

    @classmethod
    def parse(cls, raw: bytes, media_type: str | None = None) -> Index:
        media_type = detect_media_type(raw, media_type)
        if media_type not in mt.INDEX_TYPES:
            raise UnsupportedMediaType(f"expected an index, got {media_type}")
        doc = _load_json(raw, "index")
        if not isinstance(doc.get("manifests"), list):
            raise InvalidImage("index has no manifests list")
        return cls(raw=raw, media_type=media_type, doc=doc)

    @classmethod
    def build(cls, doc: dict[str, Any]) -> Index:
        return cls(raw=canonical_json(doc), media_type=doc["mediaType"], doc=doc)

    @property
    def manifests(self) -> list[Descriptor]:
        return [Descriptor.model_validate(d) for d in self.doc["manifests"]]

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.doc.get("annotations") or {})

    def descriptor(self, **extra: Any) -> Descriptor:
        return Descriptor.of(self.media_type, self.raw, **extra)


@dataclass(frozen=True)
class ImageConfig:
    """An image config blob with its raw bytes."""

    raw: bytes
    doc: dict[str, Any] = field(repr=False)

    @classmethod
    def parse(cls, raw: bytes) -> ImageConfig:
        doc = _load_json(raw, "image config")
        rootfs = doc.get("rootfs")
        if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
            raise InvalidImage("image config has no rootfs.diff_ids")
        return cls(raw=raw, doc=doc)

    @property
    def diff_ids(self) -> list[str]:
        return list(self.doc["rootfs"]["diff_ids"])

    @property
    def platform(self) -> Platform | None:
        if "os" in self.doc and "architecture" in self.doc:
            return Platform(
                os=self.doc["os"], architecture=self.doc["architecture"], variant=self.doc.get("variant")
            )
        return None

    def with_diff_ids(self, diff_ids: list[str], history: list[dict[str, Any]] | None = None) -> ImageConfig:
        doc = json.loads(self.raw)
        doc["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids)}
        if history is not None:
            doc["history"] = history
        return ImageConfig(raw=canonical_json(doc), doc=doc)


def is_gzip_layer(media_type: str) -> bool:
    return media_type in (mt.DOCKER_LAYER_GZIP, mt.DOCKER_LAYER_FOREIGN_GZIP, mt.OCI_LAYER_GZIP) or (
        media_type.endswith("tar+gzip")
    )


def is_zstd_layer(media_type: str) -> bool:
    return media_type.endswith("tar+zstd")


def is_plain_tar_layer(media_type: str) -> bool:
    return media_type in (mt.OCI_LAYER_TAR, "application/vnd.docker.image.rootfs.diff.tar")
