"""A new embedded Prefect server's SQLite database, created from the installed Prefect's schema at once.

Prefect creates its database by running every Alembic migration since its first release, one after the
other (SQLite cannot alter most columns, so many of them copy whole tables): 5 CPU-seconds, the largest
single cost of the first `accelctl convert` on a machine; then it registers its block types (1.2 CPU-s).
`prefect-sqlite-schema.sql` is what both leave behind (tables, indexes, triggers, the `alembic_version` row
and the block types and schemas), dumped once per Prefect release. A server whose database does not exist
yet starts from it: Prefect's migration check at start finds the schema at its head and has nothing to do,
and that one start skips the block registration (`registered_blocks_skipped`). A database that exists is
never touched, and a Prefect release other than the dump's migrates and registers as before.

    python -m service.prefectschema > service/prefect-sqlite-schema.sql     # after upgrading Prefect

Only the standard library is imported here (the server imports Prefect after the seed).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

SCHEMA = Path(__file__).with_name("prefect-sqlite-schema.sql")
HEADER = "-- Prefect {version} SQLite schema after all of its migrations (service/prefectschema.py)\n"


def _default_database(environ: dict[str, str] | os._Environ[str]) -> Path | None:
    """The SQLite file the server will open when it is Prefect's default, `$PREFECT_HOME/prefect.db`; None
    when the database is configured elsewhere (an environment variable or a profile may name it)."""
    if environ.get("PREFECT_PROFILES_PATH") or any(
        k.startswith("PREFECT_") and "DATABASE" in k for k in environ
    ):
        return None
    home = Path(environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    with contextlib.suppress(OSError):
        if "DATABASE" in (home / "profiles.toml").read_text():
            return None
    return home / "prefect.db"


def seed(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Create the server's database from the schema dump when none exists yet and the dump is of the
    installed Prefect; True when it did (then `registered_blocks_skipped` is for this start's environment)."""
    database = _default_database(environ)
    if database is None or database.exists() or not SCHEMA.exists():
        return False
    with SCHEMA.open() as f:
        header = f.readline()
    if header != HEADER.format(version=importlib.metadata.version("prefect")):
        return False  # another release: its migrations create the database
    database.parent.mkdir(parents=True, exist_ok=True)
    partial = database.with_name(f".{database.name}.{os.getpid()}")
    try:
        with contextlib.closing(sqlite3.connect(partial)) as db:
            db.executescript(SCHEMA.read_text())
            db.execute("PRAGMA journal_mode = WAL")  # as a migrated file is: Prefect's connections ask for it
        # Never over a database that appeared meanwhile (a second server of the same home): link, not rename.
        os.link(partial, database)
    except FileExistsError:
        return False
    finally:
        partial.unlink(missing_ok=True)
    return True


_MIGRATE = """
import asyncio
from prefect.server.database import provide_database_interface
from prefect.server.models.block_registration import run_block_auto_registration

async def main():
    db = provide_database_interface()
    await db.create_db()
    async with await db.session() as session:
        await run_block_auto_registration(session=session)
        await session.commit()

asyncio.run(main())
"""


def render() -> str:
    """The installed Prefect's schema: its migrations run on an empty database in a scratch home, and its
    block types registered, as a server's start does; dumped."""
    with tempfile.TemporaryDirectory(prefix="accel-prefect-schema-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        subprocess.run([sys.executable, "-c", _MIGRATE], env={**env, "PREFECT_HOME": home}, check=True)
        with contextlib.closing(sqlite3.connect(Path(home) / "prefect.db")) as db:
            dump = "\n".join(db.iterdump())
    return HEADER.format(version=importlib.metadata.version("prefect")) + dump + "\n"


def registered_blocks_skipped(environ: dict[str, str] | os._Environ[str] = os.environ) -> None:
    """For the start right after `seed`: its database holds the block types already, so Prefect need not
    register them again. Without memoizing, so the next start registers them as usual (and adds the types
    of Prefect collections installed since the dump), then remembers that it did."""
    environ["PREFECT_SERVER_REGISTER_BLOCKS_ON_START"] = "false"
    environ["PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION"] = "false"


if __name__ == "__main__":
    sys.stdout.write(render())
