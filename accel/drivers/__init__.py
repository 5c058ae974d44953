"""Format drivers, looked up by acceld's `converter.driver.type` names."""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

from accel.drivers.base import ConvertedLayer, Driver, DriverOptions, LayerInput, PlatformDraft
from accel.errors import ConfigError
from accel.oci import Descriptor

# type name -> "module:Class"; imported lazily so one broken driver cannot break the others.
_DRIVERS = {
    "estargz": "accel.drivers.estargz:EStargzDriver",
    "zstdchunked": "accel.drivers.zstdchunked:ZstdChunkedDriver",
    "nydus": "accel.drivers.nydus:NydusDriver",
}

DRIVER_TYPES = tuple(_DRIVERS)


def driver_class(driver_type: str) -> type[Driver]:
    try:
        module_name, class_name = _DRIVERS[driver_type].split(":")
    except KeyError:
        raise ConfigError(
            f"unknown driver type {driver_type!r}; expected one of {', '.join(DRIVER_TYPES)}"
        ) from None
    return getattr(importlib.import_module(module_name), class_name)


def load_driver(driver_type: str, config: dict[str, Any] | None = None) -> Driver:
    cls = driver_class(driver_type)
    try:
        return cls.from_config(config)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {_message(e, driver_type)}"
            for e in exc.errors()
        )
        raise ConfigError(f"converter.driver.config for {driver_type}: {problems}") from None


def _message(error: Any, driver_type: str) -> str:
    if error["type"] == "extra_forbidden":
        return f"unknown key (not an option of the {driver_type} driver)"
    return str(error["msg"]).removeprefix("Value error, ")


def detect_format(layers: list[Descriptor]) -> str | None:
    """Which accelerated format these layers already are in, judged by their annotations."""
    for driver_type in DRIVER_TYPES:
        if driver_class(driver_type).is_converted(layers):
            return driver_type
    return None


__all__ = [
    "DRIVER_TYPES",
    "ConvertedLayer",
    "Driver",
    "DriverOptions",
    "LayerInput",
    "PlatformDraft",
    "detect_format",
    "driver_class",
    "load_driver",
]
