"""Archives other tools write, made here without those tools: `docker save`'s tar."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

from accel.store import ContentStore
from tests.harness import imagegen


def docker_save(path: Path, store: ContentStore, image: imagegen.BuiltImage, tags: list[str]) -> None:
    """What `docker save` (before 25) writes: manifest.json, <config>.json, <id>/layer.tar (plain tars)."""
    with tarfile.open(path, "w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        layer_names = []
        for number, layer in enumerate(image.layers):
            plain = gzip.decompress(store.path(layer.digest).read_bytes())
            name = f"{number:064x}/layer.tar"
            add(name, plain)
            layer_names.append(name)
        config_name = f"{image.config.digest.split(':')[1]}.json"
        add(config_name, image.config_raw)
        add(
            "manifest.json",
            json.dumps([{"Config": config_name, "RepoTags": tags, "Layers": layer_names}]).encode(),
        )
