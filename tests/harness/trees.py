"""File trees as comparable dicts: the code lives in the engine (`accel.trees`, used by `accel.verify`)."""

from accel.trees import (
    COMPARED_FIELDS,
    DISK_IGNORE,
    HOST_XATTR_PREFIXES,
    OPAQUE_MARKER,
    WHITEOUT_PREFIX,
    Entry,
    apply_layers,
    compare,
    dir_entries,
    iter_tar,
    normalize_path,
    tar_entries,
)

__all__ = [
    "COMPARED_FIELDS",
    "DISK_IGNORE",
    "HOST_XATTR_PREFIXES",
    "OPAQUE_MARKER",
    "WHITEOUT_PREFIX",
    "Entry",
    "apply_layers",
    "compare",
    "dir_entries",
    "iter_tar",
    "normalize_path",
    "tar_entries",
]
