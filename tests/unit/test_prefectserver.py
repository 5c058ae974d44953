"""accel-prefect-server: Prefect's SQLite transactions take the write lock at BEGIN (issue 9's lock burst)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from service import prefectserver

REPO = Path(__file__).resolve().parents[2]

# Inside one of Prefect's SQLite transactions that has only read so far: can another connection start writing?
PROBE = textwrap.dedent(
    """
    import asyncio, sqlite3, sys
    import sqlalchemy as sa
    from prefect.server.database.configurations import AioSqliteConfiguration
    if sys.argv[2] == "accel":
        from service.prefectserver import begin_sqlite_transactions_immediate
        begin_sqlite_transactions_immediate()
        begin_sqlite_transactions_immediate()  # twice is once

    async def main(path):
        sqlite3.connect(path).executescript("PRAGMA journal_mode=WAL; CREATE TABLE t (x INTEGER);").close()
        config = AioSqliteConfiguration(connection_url=f"sqlite+aiosqlite:///{path}")
        engine = await config.engine()
        session = await config.session(engine)
        async with session, config.begin_transaction(session):
            await session.execute(sa.text("SELECT count(*) FROM t"))
            other = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute("ROLLBACK")
                print("other writer proceeds")
            except sqlite3.OperationalError as exc:
                print(f"other writer waits: {exc}")
        await engine.dispose()

    asyncio.run(main(sys.argv[1]))
    """
)


def _probe(tmp_path: Path, mode: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / f"{mode}.db"), mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_prefects_own_sqlite_transactions_let_a_second_writer_in_after_a_read(tmp_path: Path) -> None:
    # The cause: a DEFERRED transaction holds no write lock after reading, so a concurrent writer commits
    # first and this transaction's own write then fails at once with `database is locked`.
    assert _probe(tmp_path, "prefect") == "other writer proceeds"


def test_the_accel_server_takes_the_write_lock_at_begin(tmp_path: Path) -> None:
    # With the lock taken at BEGIN (where busy_timeout waits), writers queue instead of failing.
    assert _probe(tmp_path, "accel") == "other writer waits: database is locked"


@pytest.mark.parametrize("option", ["--background", "--workers=2", "--workers"])
def test_options_that_serve_from_another_process_are_refused(option: str) -> None:
    with pytest.raises(SystemExit, match="not supported"):
        prefectserver.main([option])
