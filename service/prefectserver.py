"""accel's embedded Prefect server: `prefect server start` with SQLite write transactions begun IMMEDIATE.

    accel-prefect-server --host 127.0.0.1 --port 4200      # takes `prefect server start`'s options

Why not plain `prefect server start`: Prefect 3.9 begins its SQLite transactions DEFERRED (IMMEDIATE only
for SELECT … FOR UPDATE). Orchestrating a state change reads the run, then writes its new state. When another
connection commits between that read and that write, SQLite cannot upgrade the transaction's now-stale read
snapshot and answers SQLITE_BUSY at once: busy_timeout does not apply to that upgrade in WAL mode. Under a
burst of conversions the server then logs `database is locked` tracebacks, and its clients have to retry.
`BEGIN IMMEDIATE` takes the write lock when the transaction starts, where busy_timeout does wait, so writers
queue instead of failing. Statements outside a transaction (Prefect's plain reads) are unchanged.

Prefect's SQLite configuration already begins IMMEDIATE when asked `with_for_update`; this asks it for every
transaction and touches nothing else. PostgreSQL servers are unaffected (the patch is on the SQLite class).

A new SQLite database is created from the installed Prefect's schema dump instead of by its migrations
(`service/prefectschema.py`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any


def begin_sqlite_transactions_immediate() -> None:
    """Make every transaction of Prefect's SQLite configuration take the write lock at BEGIN."""
    from prefect.server.database.configurations import AioSqliteConfiguration

    deferred_or_immediate = AioSqliteConfiguration.begin_transaction
    if getattr(deferred_or_immediate, "accel_immediate", False):
        return

    def begin_transaction(self: AioSqliteConfiguration, session: Any, with_for_update: bool = False) -> Any:
        return deferred_or_immediate(self, session, with_for_update=True)

    begin_transaction.accel_immediate = True  # type: ignore[attr-defined]
    AioSqliteConfiguration.begin_transaction = begin_transaction  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--background" or a.startswith("--workers") for a in args):
        # Both hand the app to a new uvicorn process, where this patch would not be applied.
        sys.exit("accel-prefect-server: --background and --workers are not supported; run in the foreground")
    # Before Prefect's import: a new database from the schema dump, not from 5 CPU-s of migrations.
    from service import prefectschema

    if prefectschema.seed():
        prefectschema.registered_blocks_skipped()
    begin_sqlite_transactions_immediate()
    from prefect.cli import app

    # In the foreground with one worker (the default) Prefect serves in this process, so the patch holds.
    sys.argv = ["prefect", "server", "start", *args]  # Prefect's CLI entry point reads its arguments there
    app()


if __name__ == "__main__":
    main()
