"""A private PostgreSQL server for tests: its own cluster in a temp dir, on a free loopback port.

Prefect on SQLite answers `database is locked` under concurrent conversions; the scale-out mode (and the
e2e suite) puts Prefect on PostgreSQL instead. PostgreSQL refuses to run as root, so when we are root the
cluster belongs to the `postgres` system user that Debian's package creates.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness.registry import free_port

DATABASE = "prefect"
USER = "accel"


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


def available() -> bool:
    return postgres_bin() is not None


class PostgresServer:
    def __init__(self) -> None:
        bindir = postgres_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found (Debian package `postgresql`)")
        self._bin = bindir
        # Not under pytest's 0700 tmp dirs: the postgres user must be able to reach its data dir.
        self.root = Path(tempfile.mkdtemp(prefix="accel-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.port = free_port()
        self.url = f"postgresql+asyncpg://{USER}@127.0.0.1:{self.port}/{DATABASE}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._run_as = "postgres" if os.geteuid() == 0 else None

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self._run_as, "--", *args] if self._run_as else list(args)

    def start(self, timeout: float = 60.0) -> None:
        if self._run_as:
            user = pwd.getpwnam(self._run_as)
            os.chmod(self.root, 0o755)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        subprocess.run(
            self._cmd(
                str(self._bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", USER, "-E", "UTF8"
            ),
            check=True,
            capture_output=True,
        )
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._cmd(
                    str(self._bin / "postgres"),
                    "-D", str(self.data),
                    "-h", "127.0.0.1",
                    "-p", str(self.port),
                    "-k", str(self.root),
                    "-c", "max_connections=200",
                    "-c", "fsync=off",  # test data; speed over durability
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log_path.read_text()[-2000:]}")
            ready = subprocess.run(
                [str(self._bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True
            )
            if ready.returncode == 0:
                break
            time.sleep(0.2)
        else:
            self.stop()
            raise RuntimeError(f"postgres not ready after {timeout}s: {self.log_path.read_text()[-2000:]}")
        subprocess.run(
            [str(self._bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, DATABASE],
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # SIGTERM: smart shutdown
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.root)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
