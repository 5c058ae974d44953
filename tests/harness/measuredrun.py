"""One convert-image flow run in a process of its own, measured.

`python -m tests.harness.measuredrun SOURCE CONFIG` runs the flow (against the Prefect API its environment
names) and prints one JSON line: the final state's name and message, the wall seconds of the run, and the peak
resident memory of this process (VmHWM: the flow run itself, its task threads included) and of its largest
child (ru_maxrss of the children: Nydus's `nydus-image`). `run` starts it and reads that line back.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KiB = 1 << 10


@dataclass(frozen=True)
class MeasuredRun:
    state: str
    message: str
    seconds: float  # the flow run, from the call to its final state (not Prefect's import)
    peak_rss: int  # bytes: this process's high-water mark
    peak_child_rss: int  # bytes: the largest child's high-water mark (0: no child)
    output: str = field(repr=False)  # what the process printed besides the result line


def run(source: str, config: Path, env: dict[str, str], timeout: float = 300) -> MeasuredRun:
    done = subprocess.run(
        [sys.executable, "-m", "tests.harness.measuredrun", source, str(config)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = done.stdout.splitlines()
    if done.returncode != 0 or not lines or not lines[-1].startswith("{"):
        output = f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        raise RuntimeError(f"measured run exited {done.returncode}:\n{output}")
    result = json.loads(lines[-1])
    return MeasuredRun(**result, output="\n".join(lines[:-1]) + done.stderr)


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * KiB
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(source: str, config: str) -> None:
    from flows.convert_image import convert_image

    started = time.monotonic()
    state = convert_image(source=source, config=config, return_state=True)
    seconds = time.monotonic() - started
    result = {
        "state": state.name,
        "message": state.message or "",
        "seconds": round(seconds, 2),
        "peak_rss": _peak_rss(),
        "peak_child_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * KiB,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
