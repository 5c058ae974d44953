"""acceld's `localfs` blob storage backend: Nydus blobs written to a directory instead of the image.

As nydus-snapshotter's: each blob is a file named after its digest's hex in the configured directory, left
alone when it is already there (unless `backend_force_push`); the image then lists only the bootstrap layer
and nydusd reads the blobs from that directory (`"backend": {"type": "localfs", "config": {"dir": …}}`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from accel import digest as dg
from accel.errors import DriverError
from accel.oci import Descriptor
from accel.store import ContentStore


def blob_path(directory: Path, digest: str) -> Path:
    return directory / dg.hex_of(digest)


def push_blobs(
    directory: Path, blobs: Iterable[Descriptor], store: ContentStore, *, force: bool
) -> list[Path]:
    """Copy `blobs` from the store into `directory`; returns the paths written (existing ones are kept)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for blob in blobs:
        target = blob_path(directory, blob.digest)
        if target.is_file() and (not force or not store.exists(blob.digest)):
            continue
        if not store.exists(blob.digest):
            # A conversion cache hit whose blob stayed in the cache repository: nothing to copy from.
            raise DriverError(
                f"nydus localfs backend: blob {blob.digest} is neither in the content store nor in "
                f"{directory} (a conversion cache hit); convert without the cache or copy the blob there"
            )
        # Temp file then rename: a reader never sees half a blob.
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out, open(store.path(blob.digest), "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(target)
    return written
