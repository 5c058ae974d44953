"""The source image a bench converts: generated (`--mb N`) or built from uncompressed layer tars on disk
(`--tar PATH`, repeatable: a real rootfs and the layers on top of it, e.g. made with mmdebstrap)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tests.harness import imagegen

MB = 1 << 20


class TarFileLayer:
    """Stands in for imagegen.TarBuilder: a layer whose tar already exists on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write_tar(self, fileobj: Any, tar_format: str = "pax") -> None:
        with self.path.open("rb") as f:
            shutil.copyfileobj(f, fileobj, MB)


def source_image(store: Any, mb: int, tars: list[str]) -> Any:
    """The image in `store`: one layer per tar in `tars` when given, else a generated one of `mb` MiB."""
    if tars:
        return imagegen.generate_image([TarFileLayer(Path(p)) for p in tars], store)  # type: ignore[list-item]
    return imagegen.big_image(store, total_bytes=mb * MB)


def describe(mb: int, tars: list[str]) -> str:
    return " + ".join(Path(p).name for p in tars) if tars else f"{mb} MiB generated image"
