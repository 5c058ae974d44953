"""The demo's Python half: push a sample image, convert it with every driver, say where to look."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from accel.reference import Reference  # noqa: E402
from accel.registry import HostConfig, RegistryClient  # noqa: E402
from accel.store import ContentStore  # noqa: E402
from tests.harness import imagegen, pushing  # noqa: E402

CONFIG = """\
# Written by scripts/demo: every driver against the demo registry.
provider:
  source:
    {registry}: {{}}
  work_dir: {work_dir}
converter:
  harbor_annotation: true
  drivers:
    - type: estargz
    - type: zstdchunked
    - type: nydus
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", required=True)
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--ui", required=True)
    args = parser.parse_args()

    config_path = args.state / "demo-config.yaml"
    config_path.write_text(CONFIG.format(registry=args.registry, work_dir=args.state / "work"))
    source = Reference.parse(f"{args.registry}/demo/sample:v1")
    store = ContentStore(args.state / "work" / "content")
    with RegistryClient({args.registry: HostConfig()}) as client:
        digest = pushing.push(client, store, source, imagegen.standard_index(store))
    print(f"\ndemo: pushed sample image {source}@{digest} (linux/amd64 + linux/arm64)\n")

    # Imported late: scripts/demo sets PREFECT_API_URL before this runs.
    from prefect import get_client

    from flows.convert_image import convert_image

    state = convert_image(source=str(source), config=str(config_path), return_state=True)
    flow_run_id = state.state_details.flow_run_id
    if not state.is_completed():
        print(f"demo: conversion FAILED: {state.message}", file=sys.stderr)
        print(f"demo: see {args.ui}/runs/flow-run/{flow_run_id}", file=sys.stderr)
        return 1
    result = state.result()
    print("\ndemo: converted images")
    for t in result.targets:
        print(f"  {t.driver:<12} {t.reference}@{t.digest}")
    with get_client(sync_client=True) as prefect:
        run = prefect.read_flow_run(flow_run_id)
    print(f"\nPrefect UI: {args.ui}")
    print(f"  this run:  {args.ui}/runs/flow-run/{flow_run_id}  ({run.name})")
    print("  look at:   the task graph (resolve → pull and convert per layer, side by side → upload → push),")
    print(
        "             the task runs named after layer digests, and the 'conversion-demo-sample-…' artifact"
        " (sizes, stages)"
    )
    print("\nstop the demo servers with: scripts/demo stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
