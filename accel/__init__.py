"""accel engine: image formats, registry client, content store and drivers.

Nothing in this package imports Prefect; `tasks/` and `flows/` wrap it.
"""

__version__ = "0.1.0"
