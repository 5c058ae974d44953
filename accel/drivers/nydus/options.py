"""`NydusOptions`: acceld's `converter.driver.config` for `type: nydus`, validated and normalised."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator, model_validator

from accel.drivers.base import DriverOptions
from accel.drivers.nydus import tools
from accel.errors import ConfigError, InvalidReference
from accel.reference import Reference

_MIN_CHUNK_SIZE = 0x1000
_MAX_CHUNK_SIZE = 0x1000000

# Options of acceld/nydusify that the pinned builder (nydus-rs 2.2.0) cannot do.
_UNSUPPORTED_OPTIONS = {
    "batch_size": "--batch-size",
    "encrypt": "blob encryption",
    "merge_parent_bootstrap": "merging onto a parent bootstrap",
}


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
    # Accepted for acceld compatibility: every converted manifest carries `subject` anyway.
    with_referrer: bool = True
    merge_manifest: bool = False  # one index with the (empty-layer-prefixed) OCI and the Nydus manifests

    @model_validator(mode="before")
    @classmethod
    def _reject_unsupported(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key, feature in _UNSUPPORTED_OPTIONS.items():
            if key not in data:
                continue
            value = data.pop(key)
            # acceld configs often carry these switched off ("0", false); only a request to use them fails.
            if value not in (None, False, 0, "", "0", "0x0", "false"):
                raise ConfigError(
                    f"nydus option {key!r} ({feature}) is not supported by nydus-image "
                    f"{tools.NYDUS_RS_VERSION}, the builder accel uses; "
                    "remove it from converter.driver.config"
                )
        return data

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
        if self.fs_align_chunk and self.fs_version != "5":
            raise ValueError("fs_align_chunk is only valid with fs_version 5")
        if self.oci_ref and self.fs_version != "6":
            raise ValueError("oci_ref (zran) needs fs_version 6")
        if self.oci_ref and not self.docker2oci:
            # acceld turns docker2oci on silently here; saying so is clearer.
            raise ValueError(
                "oci_ref (zran) needs docker2oci: Docker manifests cannot carry its layer annotations"
            )
        if self.oci_ref and self.chunk_dict_ref:
            # nydus-snapshotter builds zran layers without a dictionary too: they hold no chunk data.
            raise ValueError("chunk_dict_ref cannot be combined with oci_ref (zran layers hold no chunks)")
        return self

    @property
    def prefetch_input(self) -> str:
        """What the builder reads on stdin with `--prefetch-policy fs` ("/" when nothing is configured)."""
        lines = [line.strip() for line in self.prefetch_patterns.splitlines() if line.strip()]
        return "\n".join(lines or ["/"]) + "\n"
