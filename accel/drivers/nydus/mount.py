"""Mounting a Nydus image with `nydusd` (FUSE), as a runtime reads it: the merged bootstrap over a blob
backend (`localfs`: a directory of blobs named by hex digest; `registry`: read lazily over HTTP).

nydusd 2.2.0 wants a few things a plain invocation does not give it: `--rlimit-nofile 0` (it may not raise
RLIMIT_NOFILE everywhere, and fails with EPERM), and a `blobcache` cache for RAFS v6. Prefetch is off so
that a mount reads only what is read through it. `NydusMount` is a context manager: it starts nydusd,
waits (bounded) for the mount, and on exit unmounts and stops the process it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accel import trees
from accel.drivers.nydus import tools
from accel.errors import AccelError

NYDUSD = "nydusd"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class MountError(AccelError):
    """nydusd could not mount the image (or is not there); the message says why."""


@dataclass(frozen=True)
class LocalBlobs:
    """Blobs in a directory, named by their hex digest (a ContentStore's blob directory)."""

    directory: Path

    def backend(self) -> dict[str, Any]:
        return {"type": "localfs", "config": {"dir": str(self.directory)}}


@dataclass(frozen=True)
class RegistryBlobs:
    """Blobs read from a registry repository; `host` is host:port, `scheme` http for a loopback registry."""

    host: str
    repository: str
    scheme: str = "https"
    auth: str | None = None  # base64("user:password")

    def backend(self) -> dict[str, Any]:
        config: dict[str, Any] = {"scheme": self.scheme, "host": self.host, "repo": self.repository}
        if self.auth:
            config["auth"] = self.auth
        return {"type": "registry", "config": config}


def nydusd_binary(explicit: str | None = None) -> Path:
    """nydusd, from the same nydus-rs build as the builder (scripts/install-nydus links it)."""
    return tools.find_tool(
        NYDUSD,
        explicit=explicit,
        cache_subdir=f"nydus-rs-{tools.NYDUS_RS_VERSION}",
        install_hint=tools.NYDUS_INSTALL_HINT,
    )


CAP_SYS_ADMIN = 21


def fuse_unavailable() -> str | None:
    """Why this machine cannot FUSE-mount with nydusd, or None when it should (only a mount is sure)."""
    if not Path("/dev/fuse").exists():
        return "/dev/fuse does not exist"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    if not _has_capability(CAP_SYS_ADMIN):
        return "mounting needs CAP_SYS_ADMIN, which this process does not have"
    try:
        nydusd_binary()
    except AccelError as exc:
        return str(exc)
    return None


def _has_capability(bit: int) -> bool:
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text()
        effective = next(line for line in status.splitlines() if line.startswith("CapEff:"))
        return bool(int(effective.split()[1], 16) >> bit & 1)
    return os.geteuid() == 0


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")  # mountinfo writes space, tab, newline, backslash as \ooo


def is_mounted(path: Path) -> bool:
    """Whether `path` is a mount point (from mountinfo: a dead FUSE mount cannot even be stat'ed)."""
    wanted = os.path.realpath(path)
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mount_point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if mount_point == wanted:
                return True
    return False


def daemon_config(blobs: LocalBlobs | RegistryBlobs, cache_dir: Path) -> dict[str, Any]:
    return {
        "device": {
            "backend": blobs.backend(),
            "cache": {"type": "blobcache", "config": {"work_dir": str(cache_dir)}},
        },
        "mode": "direct",
        "digest_validate": False,  # a damaged chunk must show as different content, as a runtime sees it
        "iostats_files": False,
        "enable_xattr": True,
        "fs_prefetch": {"enable": False},
    }


class NydusMount:
    """`with NydusMount(bootstrap, blobs, workdir) as root:` the image's tree at `root`."""

    def __init__(
        self,
        bootstrap: Path,
        blobs: LocalBlobs | RegistryBlobs,
        workdir: Path,
        *,
        nydusd: Path | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.bootstrap = bootstrap
        self.blobs = blobs
        self.workdir = workdir
        self.mountpoint = workdir / "mnt"
        self.log_path = workdir / "nydusd.log"
        self.nydusd = nydusd
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Path:
        self.start()
        return self.mountpoint

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        binary = self.nydusd or nydusd_binary()
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        cache = self.workdir / "cache"
        cache.mkdir(exist_ok=True)
        config_path = self.workdir / "nydusd.json"
        config_path.write_text(json.dumps(daemon_config(self.blobs, cache)))
        command = [
            str(binary),
            "--config", str(config_path),
            "--bootstrap", str(self.bootstrap),
            "--mountpoint", str(self.mountpoint),
            "--rlimit-nofile", "0",
            "--log-level", "warn",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if (code := self.process.poll()) is not None:
                self.process = None
                raise MountError(f"nydusd exited with {code}: {self.log_tail()}")
            if is_mounted(self.mountpoint):
                return
            time.sleep(0.05)
        self.stop()
        raise MountError(f"nydusd did not mount within {self.ready_timeout:.0f}s: {self.log_tail()}")

    def stop(self) -> None:
        # Unmount first: nydusd 2.2.0 may exit on SIGTERM leaving a dead FUSE mount behind.
        if is_mounted(self.mountpoint):
            subprocess.run(["umount", str(self.mountpoint)], capture_output=True, check=False, timeout=30)
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
        if is_mounted(self.mountpoint):
            detach = ["umount", "-l", str(self.mountpoint)]
            subprocess.run(detach, capture_output=True, check=False, timeout=30)

    def log_tail(self, limit: int = 600) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace").strip()[-limit:]
        return ""


def mounted_entries(root: Path) -> dict[str, trees.Entry]:
    """The tree under a mount (`trees.dir_entries`); a file whose data cannot be read through the mount
    raises MountError naming it."""
    try:
        return trees.dir_entries(root)
    except OSError:
        pass
    # Find the file: a read error says nothing about which file it came from.
    for current, _, names in os.walk(root):
        for name in sorted(names):
            path = Path(current) / name
            if path.is_symlink() or not path.is_file():
                continue
            try:
                with path.open("rb") as stream:
                    while stream.read(1 << 20):
                        pass
            except OSError as exc:
                where = path.relative_to(root).as_posix()
                raise MountError(f"{where}: cannot be read through the mount: {exc.strerror}") from exc
    return trees.dir_entries(root)


def compare_mounted(
    bootstrap: Path, blobs: LocalBlobs | RegistryBlobs, expected: dict[str, trees.Entry], workdir: Path
) -> list[str]:
    """Differences between the image as nydusd mounts it and `expected` (the source's layers applied):
    mode, owner, mtime, size, content, xattrs and link targets (a mount shows numeric owners only)."""
    with NydusMount(bootstrap, blobs, workdir) as root:
        mounted = mounted_entries(root)
    return trees.compare(expected, mounted, ignore={"uname", "gname"}, labels=("source", "mounted"))
