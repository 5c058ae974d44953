"""A new embedded server's SQLite database comes from the schema dump of the installed Prefect
(service/prefectschema.py); an existing or configured database is never touched.

That the dump is what Prefect's migrations create: tests/integration/test_prefect_schema_dump.py.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import sqlite3
from pathlib import Path

import pytest

from service import prefectschema

REGENERATE = "run: python -m service.prefectschema > service/prefect-sqlite-schema.sql"


def _home(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, "PREFECT_HOME": str(tmp_path / "home"), **extra}


def test_the_checked_in_dump_is_of_the_installed_prefect() -> None:
    with prefectschema.SCHEMA.open() as f:
        header = f.readline()
    assert header == prefectschema.HEADER.format(version=importlib.metadata.version("prefect")), REGENERATE


def _sqlite_migration_heads() -> set[str]:
    """The revisions of Prefect's SQLite migrations that no other migration follows."""
    import prefect.server.database

    versions = Path(prefect.server.database.__file__).parent / "_migrations" / "versions" / "sqlite"
    revisions, followed = set(), set()
    for migration in versions.glob("*.py"):
        text = migration.read_text()
        revisions.update(re.findall(r'^revision = "(\w+)"', text, re.M))
        followed.update(re.findall(r'^down_revision = "(\w+)"', text, re.M))
    return revisions - followed


def test_a_seeded_database_is_at_the_head_of_prefects_migrations(tmp_path: Path) -> None:
    assert prefectschema.seed(_home(tmp_path))
    database = tmp_path / "home" / "prefect.db"
    with contextlib.closing(sqlite3.connect(database)) as db:
        [(revision,)] = db.execute("SELECT version_num FROM alembic_version").fetchall()
        [(journal,)] = db.execute("PRAGMA journal_mode").fetchall()
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    sqlite_heads = _sqlite_migration_heads()
    assert revision in sqlite_heads, REGENERATE
    assert journal == "wal"
    assert {"flow", "flow_run", "task_run", "deployment", "artifact"} <= tables
    assert not list((tmp_path / "home").glob(".prefect.db.*"))  # no partial file left behind


def test_an_existing_database_is_never_replaced(tmp_path: Path) -> None:
    database = tmp_path / "home" / "prefect.db"
    database.parent.mkdir()
    database.write_bytes(b"a user's database")
    assert not prefectschema.seed(_home(tmp_path))
    assert database.read_bytes() == b"a user's database"


@pytest.mark.parametrize(
    "extra",
    [
        {"PREFECT_API_DATABASE_CONNECTION_URL": "postgresql+asyncpg://u:p@127.0.0.1/prefect"},
        {"PREFECT_SERVER_DATABASE_CONNECTION_URL": "sqlite+aiosqlite:////elsewhere/prefect.db"},
        {"PREFECT_PROFILES_PATH": "/some/profiles.toml"},
    ],
)
def test_a_database_configured_elsewhere_is_left_to_prefect(tmp_path: Path, extra: dict[str, str]) -> None:
    assert not prefectschema.seed(_home(tmp_path, **extra))
    assert not (tmp_path / "home" / "prefect.db").exists()


def test_a_profile_naming_a_database_is_left_to_prefect(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "profiles.toml").write_text(
        '[profiles.local]\nPREFECT_API_DATABASE_CONNECTION_URL = "postgresql+asyncpg://db/prefect"\n'
    )
    assert not prefectschema.seed(_home(tmp_path))
    assert not (tmp_path / "home" / "prefect.db").exists()


def test_a_dump_of_another_prefect_release_is_not_used(tmp_path: Path, monkeypatch) -> None:
    other = tmp_path / "schema.sql"
    other.write_text(prefectschema.HEADER.format(version="0.0.1") + "CREATE TABLE t (x);\n")
    monkeypatch.setattr(prefectschema, "SCHEMA", other)
    assert not prefectschema.seed(_home(tmp_path))
    assert not (tmp_path / "home" / "prefect.db").exists()


def test_the_seeded_start_skips_block_registration_without_remembering_it() -> None:
    environ: dict[str, str] = {}
    prefectschema.registered_blocks_skipped(environ)
    # Not memoized: the next start registers the block types (and any collection's installed since).
    assert environ == {
        "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
        "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
    }
