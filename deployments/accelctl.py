"""accelctl: one-time conversions (`convert`) and, later, task management against acceld."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from deployments.state import use_embedded_prefect


def _convert(args: argparse.Namespace) -> int:
    use_embedded_prefect()
    from accel.config import load_file
    from accel.errors import AccelError
    from flows.convert_image import convert_image

    try:
        load_file(args.config)  # config errors before Prefect starts
        result = convert_image(
            source=args.source, drivers=args.driver or None, config=args.config, return_state=False
        )
    except AccelError as exc:
        print(f"accelctl: conversion of {args.source} failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # Prefect re-raises the task's exception; name it, don't dump a trace
        print(f"accelctl: conversion of {args.source} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for t in result.targets:
        print(f"{t.driver}\t{t.reference}\t{t.digest}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="accelctl", description="accel command line")
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert", help="convert one image now (one-time mode, no acceld needed)")
    convert.add_argument("--config", required=True, help="acceld-style YAML config")
    convert.add_argument(
        "--driver", action="append", help="driver type (repeatable); default: all configured"
    )
    convert.add_argument("source", help="source image reference, e.g. registry:5000/library/nginx:latest")
    convert.set_defaults(func=_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
