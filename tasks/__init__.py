"""Thin Prefect tasks over the accel engine: retries, cache keys, run names — no format logic here."""

from tasks.convert import build_image, convert_layer, pull_layer, push_image, resolve, verify_image

__all__ = ["build_image", "convert_layer", "pull_layer", "push_image", "resolve", "verify_image"]
