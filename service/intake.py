"""The intake journal: a webhook answered 2xx is on disk before the answer goes out.

Harbor does not resend a webhook it got a 2xx for, and acceld answers within Harbor's 3 s even when Prefect is
slow to create the flow run (the creation goes on in the background). Without a record, an acceld that died
in between lost that push for good. So every image of an accepted webhook is written here first (one SQLite
transaction, fsynced: `synchronous=FULL`), settled once its flow run exists, and whatever is unsettled is
submitted again when acceld starts and while it runs (`Api.replay`). Submitting twice is harmless: a
conversion's idempotency key makes the second creation return the first run.

When the journal cannot be written the webhook is answered 503, so the sender retries: a 2xx is never given
for a request that is neither a flow run nor on disk.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

JOURNAL_FILE = "intake.sqlite"
# Settled entries are kept this long (what was received, and its run), then dropped.
KEEP_SETTLED_SECONDS = 7 * 24 * 3600.0


class JournalUnavailable(Exception):
    """The journal could not record or read requests (disk full, unwritable work dir, corrupt file)."""


@dataclass(frozen=True)
class Intake:
    """One image of an accepted webhook, not yet known to have a flow run."""

    id: int
    source: str  # which endpoint received it (harbor, distribution), for logs and metrics
    reference: str  # as received
    received: float  # time.time()
    attempts: int  # creations tried since it was received (by this acceld and the ones before it)


class IntakeJournal:
    """A small SQLite table in the work dir; one connection, used from any thread under a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS intake ("
                " id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " source TEXT NOT NULL, reference TEXT NOT NULL, received REAL NOT NULL,"
                " attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,"
                " settled REAL, task_id TEXT)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS unsettled ON intake (settled, id)")
        except (sqlite3.Error, OSError) as exc:
            raise JournalUnavailable(f"cannot open the intake journal {path}: {exc}") from None

    def record(self, source: str, references: list[str]) -> list[int]:
        """Write the images of one webhook (all or none); their ids, in order."""
        now = time.time()
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                ids = [
                    int(
                        self._db.execute(
                            "INSERT INTO intake (source, reference, received) VALUES (?, ?, ?)",
                            (source, reference, now),
                        ).lastrowid
                        or 0
                    )
                    for reference in references
                ]
                self._db.execute("COMMIT")
            except (sqlite3.Error, OSError) as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise JournalUnavailable(f"cannot record the request in {self.path}: {exc}") from None
        return ids

    def attempt(self, entry: int, error: str | None = None) -> None:
        """Count a creation attempt (and its error, when it failed)."""
        self._write("UPDATE intake SET attempts = attempts + 1, last_error = ? WHERE id = ?", (error, entry))

    def settle(self, entry: int, task_id: str | None, error: str | None = None) -> None:
        """The entry needs nothing more from the journal: its flow run exists (`task_id`), or the request
        can never become one (`error`, e.g. a driver the config does not have)."""
        self._write(
            "UPDATE intake SET settled = ?, task_id = ?, last_error = ? WHERE id = ? AND settled IS NULL",
            (time.time(), task_id, error, entry),
        )

    def unsettled(self) -> list[Intake]:
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT id, source, reference, received, attempts FROM intake"
                    " WHERE settled IS NULL ORDER BY id"
                ).fetchall()
            except sqlite3.Error as exc:
                raise JournalUnavailable(f"cannot read the intake journal {self.path}: {exc}") from None
        return [Intake(*row) for row in rows]

    def forget_settled(self, older_than: float = KEEP_SETTLED_SECONDS) -> None:
        self._write(
            "DELETE FROM intake WHERE settled IS NOT NULL AND settled < ?", (time.time() - older_than,)
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        with self._lock:
            try:
                self._db.execute(sql, params)
            except sqlite3.Error as exc:
                raise JournalUnavailable(f"cannot update the intake journal {self.path}: {exc}") from None
