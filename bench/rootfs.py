"""The Debian rootfs image of the paired bench: two uncompressed layer tars, built once with mmdebstrap and
cached (default /var/cache/accel-bench, `ACCEL_BENCH_CACHE` overrides).

- base layer: `mmdebstrap --variant=minbase bookworm` (about 163 MiB);
- app layer: what `--include=python3,ca-certificates,curl` adds on top of it (about 46 MiB): every entry of
  the bigger rootfs that the base lacks or has with other metadata, as a container build's diff would be.
  Nothing is deleted by that install, so the layer has no whiteouts; a hard link whose target is not in the
  layer is written as the regular file it points to.

    .venv/bin/python bench/rootfs.py        # builds (needs mmdebstrap and Debian's mirror), prints the paths
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

CACHE = Path(os.environ.get("ACCEL_BENCH_CACHE", "/var/cache/accel-bench"))
SUITE = "bookworm"
APP_PACKAGES = "python3,ca-certificates,curl"


def _mmdebstrap(out: Path, *extra: str) -> None:
    if out.exists():
        return
    partial = out.with_suffix(".partial.tar")
    cmd = ["mmdebstrap", "--variant=minbase", "--quiet", *extra, SUITE, str(partial)]
    print(f"building {out} ({' '.join(cmd)}; a few minutes)", file=sys.stderr)
    subprocess.run(cmd, check=True)
    partial.rename(out)


def _metadata(member: tarfile.TarInfo) -> tuple[object, ...]:
    return (member.type, member.size, member.mtime, member.mode, member.linkname, member.uid, member.gid)


def _diff_layer(base: Path, full: Path, out: Path) -> None:
    """Write to `out` the entries of `full` that `base` lacks or has with other metadata."""
    with tarfile.open(base) as lower:
        known = {m.name: _metadata(m) for m in lower}
    partial = out.with_suffix(".partial.tar")
    with tarfile.open(full) as upper, tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as layer:
        members = upper.getmembers()
        changed = [m for m in members if known.get(m.name) != _metadata(m)]
        written = {m.name for m in changed}
        by_name = {m.name: m for m in members}
        for member in changed:
            if member.islnk() and member.linkname not in written:
                target = by_name[member.linkname]
                copy = tarfile.TarInfo(member.name)
                copy.size, copy.mtime, copy.mode = target.size, target.mtime, target.mode
                copy.uid, copy.gid, copy.uname, copy.gname = (
                    target.uid,
                    target.gid,
                    target.uname,
                    target.gname,
                )
                layer.addfile(copy, upper.extractfile(target))
            elif member.isreg():
                layer.addfile(member, upper.extractfile(member))
            else:
                layer.addfile(member)
    partial.rename(out)


def ensure_rootfs(cache: Path = CACHE) -> list[Path]:
    """The base and app layer tars, built on first use."""
    cache.mkdir(parents=True, exist_ok=True)
    base, full, app = cache / "debian-base.tar", cache / "debian-full.tar", cache / "debian-app.tar"
    if not app.exists():
        _mmdebstrap(base)
        _mmdebstrap(full, f"--include={APP_PACKAGES}")
        _diff_layer(base, full, app)
    return [base, app]


if __name__ == "__main__":
    for path in ensure_rootfs():
        print(f"{path}  {path.stat().st_size / (1 << 20):.1f} MiB")
