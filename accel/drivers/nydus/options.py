"""`NydusOptions`: acceld's `converter.driver.config` for `type: nydus`, validated and normalised."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import field_validator, model_validator

from accel.drivers.base import DriverOptions
from accel.drivers.nydus import tools
from accel.errors import ConfigError, InvalidReference
from accel.reference import Reference

_MIN_CHUNK_SIZE = 0x1000
_MAX_CHUNK_SIZE = 0x1000000

log = logging.getLogger(__name__)

# Options of acceld/nydusify that the pinned builder (nydus-rs 2.2.0) cannot do.
_UNSUPPORTED_OPTIONS = {
    "batch_size": "--batch-size",
    "encrypt": "blob encryption",
    "encrypt_recipients": "bootstrap encryption",
    "merge_parent_bootstrap": "merging onto a parent bootstrap",
}
# acceld's older names, used when the current name is not set (as acceld does).
_ALIASES = {"fs_chunk_size": "chunk_size", "rafs_version": "fs_version", "rafs_compressor": "compressor"}
# Blob storage backends of acceld (nydus-snapshotter's): the blobs go there instead of into the image.
BACKEND_LOCALFS = "localfs"
_UNTESTED_BACKENDS = ("oss", "s3", "registry")
_OFF = (None, False, 0, "", "0", "0x0", "false")


def _number(value: Any) -> Any:
    try:
        return int(value, 0) if isinstance(value, str) else value
    except ValueError:
        return value


class NydusOptions(DriverOptions):
    """acceld's `converter.driver.config` for `type: nydus`."""

    builder: str | None = None
    fs_version: Literal["5", "6"] = "6"
    compressor: Literal["none", "lz4_block", "zstd"] = "zstd"
    chunk_size: str | None = None  # normalised to hex, e.g. "0x100000"; None = builder default (1 MiB)
    fs_align_chunk: bool = False
    prefetch_patterns: str = ""  # newline-separated absolute paths; empty = prefetch nothing in particular
    chunk_dict_ref: str | None = None  # a Nydus image whose chunks new layers reuse (see ChunkDict)
    oci_ref: bool = False
    docker2oci: bool = True
    # OCI `subject` → the source manifest on converted manifests. On by default (acceld's default is off).
    with_referrer: bool = True
    merge_manifest: bool = False  # one index with the (empty-layer-prefixed) OCI and the Nydus manifests
    # A blob storage backend: layer blobs go there and the image lists only the bootstrap layer.
    backend_type: Literal["localfs"] | None = None
    backend_config: str | None = None  # JSON; localfs: {"dir": "/path"}
    backend_force_push: bool = False  # overwrite blobs the backend already has

    acceld_keys: ClassVar[frozenset[str]] = frozenset(_UNSUPPORTED_OPTIONS) | frozenset(_ALIASES)
    not_in_output: ClassVar[frozenset[str]] = frozenset(
        {"builder", "docker2oci", "with_referrer", "merge_manifest", "backend_type", "backend_config",
         "backend_force_push"}
    )  # fmt: skip

    @model_validator(mode="before")
    @classmethod
    def _acceld_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key, feature in _UNSUPPORTED_OPTIONS.items():
            if key not in data:
                continue
            value = data.pop(key)
            # acceld configs often carry these switched off ("0", false); only a request to use them fails.
            if value not in _OFF:
                raise ConfigError(
                    f"nydus option {key!r} ({feature}) is not supported by nydus-image "
                    f"{tools.NYDUS_RS_VERSION}, the builder accel uses; "
                    "remove it from converter.driver.config"
                )
        for old, new in _ALIASES.items():
            if old not in data:
                continue
            value = data.pop(old)
            if data.get(new) in (None, ""):
                data[new] = value
            elif old == "fs_chunk_size" and value not in (None, "") and _number(value) != _number(data[new]):
                # Both are current names (acceld's and accel's): a silent winner would hide a mistake.
                raise ConfigError(f"nydus options {old!r} ({value!r}) and {new!r} ({data[new]!r}) disagree")
        if data.get("compressor") == "":
            data.pop("compressor")  # acceld: empty means the builder's default (zstd)
        if data.get("compressor") == "gzip":
            raise ConfigError(
                f"nydus option compressor 'gzip' is not supported by nydus-image {tools.NYDUS_RS_VERSION}, "
                "the builder accel uses (it offers none, lz4_block and zstd)"
            )
        backend = data.get("backend_type")
        if backend in (None, "") or data.get("backend_config") in (None, ""):
            # acceld uses a backend only when both are set.
            for key in ("backend_type", "backend_config"):
                data.pop(key, None)
        elif backend != BACKEND_LOCALFS:
            untested = "an untested" if backend in _UNTESTED_BACKENDS else "an unknown"
            raise ConfigError(
                f"nydus option backend_type {backend!r} is {untested} blob storage backend for accel: only "
                f"{BACKEND_LOCALFS!r} is supported (keep blobs in the registry by leaving backend_type out)"
            )
        if data.get("fs_align_chunk") not in _OFF and str(data.get("fs_version", "6")) == "6":
            # nydus-image aligns chunks for RAFS v5 only; with v6 the flag changes no byte (checked).
            log.warning("nydus option fs_align_chunk has no effect with fs_version 6; ignoring it")
            data["fs_align_chunk"] = False
        return data

    @field_validator("backend_config")
    @classmethod
    def _backend_config(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            doc = json.loads(value)
        except ValueError:
            raise ValueError(f"backend_config must be JSON, got {value!r}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("dir"), str) or not doc["dir"]:
            raise ValueError('backend_config for localfs must be JSON like {"dir": "/path/to/blobs"}')
        return value

    @property
    def backend_dir(self) -> Path | None:
        """The localfs backend's directory, when one is configured."""
        if self.backend_type != BACKEND_LOCALFS or not self.backend_config:
            return None
        return Path(json.loads(self.backend_config)["dir"])

    @field_validator("fs_version", mode="before")
    @classmethod
    def _fs_version_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("chunk_size", mode="before")
    @classmethod
    def _chunk_size_hex(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            raise ValueError("chunk_size must be a power of two like 0x100000")
        if isinstance(value, str):
            try:
                size = int(value.strip(), 0)
            except ValueError:
                raise ValueError(f"chunk_size {value!r} is not a number (use hex like 0x100000)") from None
        elif isinstance(value, int):
            size = value
        else:
            raise ValueError("chunk_size must be a hex string like 0x100000 or an integer")
        if size & (size - 1) or not _MIN_CHUNK_SIZE <= size <= _MAX_CHUNK_SIZE:
            raise ValueError(
                f"chunk_size {value!r} must be a power of two "
                f"between {_MIN_CHUNK_SIZE:#x} and {_MAX_CHUNK_SIZE:#x}"
            )
        return f"{size:#x}"

    @field_validator("chunk_dict_ref")
    @classmethod
    def _parsable_reference(cls, value: str | None) -> str | None:
        if not value or not value.strip():
            return None
        try:
            return str(Reference.parse(value))
        except InvalidReference as exc:
            raise ValueError(str(exc)) from None

    @field_validator("prefetch_patterns")
    @classmethod
    def _absolute_patterns(cls, value: str) -> str:
        for line in value.splitlines():
            if line.strip() and not line.strip().startswith("/"):
                raise ValueError(f"prefetch pattern {line.strip()!r} must be an absolute path")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> NydusOptions:
        if self.oci_ref and self.fs_version != "6":
            raise ValueError("oci_ref (zran) needs fs_version 6")
        if self.oci_ref and not self.docker2oci:
            # acceld turns docker2oci on silently here; saying so is clearer.
            raise ValueError(
                "oci_ref (zran) needs docker2oci: Docker manifests cannot carry its layer annotations"
            )
        if self.backend_type and (self.oci_ref or self.merge_manifest):
            raise ValueError("backend_type cannot be combined with oci_ref or merge_manifest")
        if self.oci_ref and self.chunk_dict_ref:
            # nydus-snapshotter builds zran layers without a dictionary too: they hold no chunk data.
            raise ValueError("chunk_dict_ref cannot be combined with oci_ref (zran layers hold no chunks)")
        return self

    @property
    def prefetch_input(self) -> str:
        """What the builder reads on stdin with `--prefetch-policy fs` ("/" when nothing is configured)."""
        lines = [line.strip() for line in self.prefetch_patterns.splitlines() if line.strip()]
        return "\n".join(lines or ["/"]) + "\n"
