"""The version `accelctl --version` and `acceld --version` print: the installed distribution's, else the
source tree's (`accel.__version__`, which imports nothing else)."""

from __future__ import annotations


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("accel")
    except PackageNotFoundError:
        from accel import __version__

        return __version__
