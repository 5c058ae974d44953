"""Format drivers, looked up by acceld's `converter.driver.type` names.

Each format is a subpackage of this one, named as acceld's `type` names it, whose `__init__` exports its
Driver subclass as `DRIVER` (whose `name` is the package's name). Drivers are found by listing the
subpackages and imported only when first asked for, so one broken driver cannot break the others; nothing
outside a format's folder needs to name it. A driver declares everything else itself: its options model
(`Driver.options_model`), acceld's aliases of it (`Driver.acceld_driver`), its layer facts
(`Driver.facts_model`) and whether an image already is in its format (`Driver.is_converted`).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from pydantic import ValidationError

from accel.drivers.base import ConvertedLayer, Driver, DriverOptions, LayerInput, PlatformDraft
from accel.drivers.reader import PLAIN_LAYERS, FormatReader
from accel.errors import ConfigError
from accel.oci import Descriptor

# Every driver's name (its subpackage's), in a stable (alphabetical) order.
DRIVER_TYPES: tuple[str, ...] = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg))


def driver_class(driver_type: str) -> type[Driver]:
    if driver_type not in DRIVER_TYPES:
        raise ConfigError(f"unknown driver type {driver_type!r}; expected one of {', '.join(DRIVER_TYPES)}")
    cls = importlib.import_module(f"{__name__}.{driver_type}").DRIVER
    if not (isinstance(cls, type) and issubclass(cls, Driver) and cls.name == driver_type):
        raise TypeError(f"{__name__}.{driver_type}.DRIVER must be the Driver subclass named {driver_type!r}")
    return cls


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


def reader_for(desc: Descriptor) -> FormatReader:
    """The reader of the format a layer is in (each driver class's `reader`), or the plain layer reader."""
    for driver_type in DRIVER_TYPES:
        reader = driver_class(driver_type).reader
        if reader is not None and reader.claims(desc):
            return reader
    return PLAIN_LAYERS


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
    "reader_for",
]
