"""accel configs (acceld's YAML layout) for tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from accel.config import Settings, load_settings

# The source registry of `routing_settings`.
ROUTING_HOST = "harbor.test:8443"


def driver(driver_type: str, **config: Any) -> dict[str, Any]:
    return {"type": driver_type, "config": config}


def write_config(
    path: Path,
    hosts: Mapping[str, Mapping[str, Any]],
    drivers: Sequence[Mapping[str, Any]],
    rules: Sequence[Mapping[str, Any]] = (),
    work_dir: Path | None = None,
) -> Path:
    """`hosts` become provider.source, `drivers` converter.drivers; the work dir defaults to `<dir>/work`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "provider": {
            "source": {host: dict(settings) for host, settings in hosts.items()},
            "work_dir": str(work_dir or path.parent / "work"),
        },
        "converter": {"drivers": [dict(d) for d in drivers], "rules": [dict(r) for r in rules]},
    }
    path.write_text(yaml.safe_dump(settings))
    return path


def routing_settings(*rules: Mapping[str, Any], **provider: Any) -> Settings:
    """Loaded settings for routing decisions: source registry ROUTING_HOST, drivers estargz (tag suffix
    `-esgz`, level 6) and zstdchunked, these `rules`; `provider` adds provider keys (`cache_repository`)."""
    return load_settings(
        {
            "provider": {"source": {ROUTING_HOST: {}}, **provider},
            "converter": {
                "drivers": [
                    {"type": "estargz", "tag_suffix": "-esgz", "config": {"compression_level": 6}},
                    {"type": "zstdchunked"},
                ],
                "rules": [dict(rule) for rule in rules],
            },
        }
    )
