"""Locating the external programs the engine drives (e.g. the Nydus builder) and asking their versions.

A tool is looked up, in order: an explicit path from the config, the project-local `.tools/bin/`, the shared
tools cache (`$ACCEL_TOOLS_CACHE`, default `~/.cache/accel/tools`, where `scripts/install-*` build them),
then `PATH`. The error for a missing tool lists every place that was searched, so the fix is obvious.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

from accel.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[3]  # accel/drivers/nydus/tools.py
PROJECT_TOOLS_BIN = PROJECT_ROOT / ".tools" / "bin"

NYDUS_RS_VERSION = "2.2.0"
NYDUS_BUILDER = "nydus-image"
NYDUS_INSTALL_HINT = "run scripts/install-nydus"


def tools_cache() -> Path:
    return Path(os.environ.get("ACCEL_TOOLS_CACHE") or Path.home() / ".cache" / "accel" / "tools")


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_tool(
    name: str,
    explicit: str | None = None,
    cache_subdir: str | None = None,
    install_hint: str | None = None,
) -> Path:
    """The absolute path of tool `name`; ConfigError naming every searched place when it is missing."""
    if explicit:
        path = Path(explicit).expanduser()
        if _is_executable(path):
            return path.resolve()
        raise ConfigError(f"{name}: configured path {explicit!r} is not an executable file")

    candidates = [PROJECT_TOOLS_BIN / name]
    if cache_subdir:
        candidates.append(tools_cache() / cache_subdir / "bin" / name)
    for candidate in candidates:
        if _is_executable(candidate):
            return candidate.resolve()
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path).resolve()

    searched = ", ".join(str(c) for c in candidates)
    hint = f"; {install_hint}" if install_hint else ""
    raise ConfigError(f"{name} not found: looked in {searched} and on PATH{hint}")


def nydus_builder(explicit: str | None = None) -> Path:
    """The `nydus-image` binary (nydus-rs, built by scripts/install-nydus)."""
    return find_tool(
        NYDUS_BUILDER,
        explicit=explicit,
        cache_subdir=f"nydus-rs-{NYDUS_RS_VERSION}",
        install_hint=NYDUS_INSTALL_HINT,
    )


_SEMVER_RE = re.compile(r"v?(\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?)")


def parse_version(text: str) -> str:
    """The first semantic version in a `--version` output (`Version: v2.2.0` -> `2.2.0`)."""
    version_lines = [line for line in text.splitlines() if line.strip().lower().startswith("version")]
    # Only the `Version:` line counts when there is one: other lines name e.g. the compiler's version.
    match = _SEMVER_RE.search(version_lines[0] if version_lines else text)
    if not match:
        raise ValueError(f"no version number in {text[:200]!r}")
    return match.group(1)


@functools.lru_cache(maxsize=32)
def _version_of(path: str, _mtime_ns: int) -> str:
    # The modification time is part of the cache key so a rebuilt binary is asked again.
    try:
        done = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except OSError as exc:
        raise ConfigError(f"cannot run {path} --version: {exc}") from exc
    if done.returncode != 0:
        raise ConfigError(f"{path} --version exited with {done.returncode}: {done.stderr.strip()[-500:]}")
    try:
        return parse_version(done.stdout + "\n" + done.stderr)
    except ValueError:
        # A binary built by `cargo install` from crates.io has no git tag to report ("Version: unknown");
        # cargo records the crate version beside it instead.
        installed = cargo_installed_version(Path(path))
        if installed is None:
            raise ConfigError(f"{path} --version reports no version: {done.stdout.strip()[:200]!r}") from None
        return installed


def cargo_installed_version(binary: Path) -> str | None:
    """The crate version `cargo install --root R` recorded for `R/bin/<binary>` in `R/.crates.toml`."""
    binary = binary.resolve()
    manifest = binary.parent.parent / ".crates.toml"
    try:
        text = manifest.read_text()
    except OSError:
        return None
    # Lines look like: "nydus-rs 2.2.0 (registry+https://...)" = ["nydus-image", "nydusd"]
    for match in re.finditer(r'^"(\S+) (\d+\.\d+\.\d+\S*) \([^)]*\)" = \[([^\]]*)\]', text, re.MULTILINE):
        if f'"{binary.name}"' in match.group(3):
            return match.group(2)
    return None


def tool_version(path: Path | str) -> str:
    """`tool --version`, parsed to `X.Y.Z`; asked once per binary per process."""
    path = Path(path)
    return _version_of(str(path), path.stat().st_mtime_ns)
