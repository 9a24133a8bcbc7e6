"""Versioned schema migrations: ``migrations/NNN_what.sql``, each applied once, in order.

The applied versions are rows of ``schema_version``. Workers that start together serialise on
an advisory lock; a database with a version this code does not know is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
FILE_PATTERN = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
# pg_advisory_xact_lock key: "carebed ingest migrate" in a bigint.
LOCK_KEY = 0x63617265_62656431


class MigrationError(Exception):
    """The database's schema cannot be brought to this code's version."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    path: Path


def available(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files, by version; two files with one version are an error."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = FILE_PATTERN.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: not named NNN_what.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations numbered {version}")
        found[version] = Migration(version, match.group(2), path)
    return [found[v] for v in sorted(found)]


async def migrate(conn: psycopg.AsyncConnection[Any], directory: Path = MIGRATIONS_DIR) -> int:
    """Apply what is missing, each file in its own transaction; returns the version now."""
    migrations = available(directory)
    known = migrations[-1].version if migrations else 0
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version integer PRIMARY KEY,"
            " name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_version")
        row = await cur.fetchone()
        current = int(row[0]) if row else 0
        if current > known:
            raise MigrationError(
                f"the database is at schema version {current}, this ingest knows up to {known}: "
                "run the newer ingest, or restore a matching database"
            )
        for migration in migrations:
            if migration.version <= current:
                continue
            text = migration.path.read_text(encoding="utf-8")
            await conn.execute(sql.SQL(text))
            await conn.execute(
                "INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            current = migration.version
    return current
