"""The checked-in schema dump (service/prefect-sqlite-schema.sql) is what the installed Prefect's migrations
and block registration create: a server seeded from it starts with the database Prefect would have made."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from service import prefectschema

pytestmark = pytest.mark.prefect  # runs every Prefect migration (~10 CPU-s)


def _database(script: str, path: Path) -> tuple[dict[tuple[str, str], list[str]], set[str], list[str]]:
    """Each schema object's SQL as sorted lines (migrations on SQLite rebuild tables and do not keep the
    order of their constraints), the block types' slugs and the Alembic revision."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(script)
        objects = {
            (kind, name): sorted(line.strip().rstrip(",") for line in sql.splitlines())
            for kind, name, sql in db.execute(
                "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL"
            )
        }
        slugs = {slug for (slug,) in db.execute("SELECT slug FROM block_type")}
        revision = [version for (version,) in db.execute("SELECT version_num FROM alembic_version")]
    return objects, slugs, revision


def test_the_dump_is_what_prefects_migrations_create(tmp_path: Path) -> None:
    fresh = _database(prefectschema.render(), tmp_path / "fresh.db")
    checked_in = _database(prefectschema.SCHEMA.read_text(), tmp_path / "checked-in.db")
    assert checked_in == fresh, "run: python -m service.prefectschema > service/prefect-sqlite-schema.sql"
    assert fresh[1], "the dump has Prefect's block types"
