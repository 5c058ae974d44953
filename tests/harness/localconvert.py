"""A whole-image conversion with engine calls only (no Prefect): resolve → fetch → convert → build → publish.

Sources and targets are any registry-verb implementations (transports, MemoryRegistry, RegistryClient), so
the transport and `verify` tests run every driver without a flow.
"""

from __future__ import annotations

from typing import Any

from accel import image, publish
from accel.drivers import load_driver
from accel.drivers.base import LayerInput
from accel.oci import Descriptor
from accel.reference import Reference
from accel.store import ContentStore


def convert(
    source: Any,
    source_ref: Reference,
    target: Any,
    target_ref: Reference,
    driver_type: str,
    store: ContentStore,
    options: dict[str, Any] | None = None,
) -> Descriptor:
    """Convert `source_ref` with one driver and publish it as `target_ref`; the pushed root."""
    driver = load_driver(driver_type, options)
    resolved = image.resolve_source(source, source_ref, store)
    converted = {}
    for layer in resolved.unique_layers():
        source.fetch_blob(source_ref, layer.descriptor, store)
        result = driver.convert_layer(LayerInput(layer.descriptor, layer.diff_id, store))
        converted[layer.descriptor.digest] = result
    built = image.build_image(resolved, converted, driver, store)
    return publish.push_image(target, target_ref, built, store)
