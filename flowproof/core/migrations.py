"""Versioned, idempotent schema migrations (`flowproof db migrate`).

Migrations are the files `flowproof/sql/migrations/NNNN_name.sql`, applied in order, each in its
own transaction, under a PostgreSQL advisory lock so that several processes may run `migrate` at
once. `{{outbox}}` in a file stands for the configured, validated outbox table name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from flowproof.core.logging import get_logger
from flowproof.core.sqltext import render

# An arbitrary constant: the advisory lock key all flowproof migrators agree on.
MIGRATION_LOCK_KEY = 0x466C6F77  # "Flow"
MIGRATIONS_TABLE = "flowproof_schema_migrations"
_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


# The span of a time partition (FLOWPROOF_RELAY_PARTITION_SECONDS): its default and bounds.
PARTITION_SECONDS = 86400.0
PARTITION_SECONDS_MIN = 60.0
PARTITION_SECONDS_MAX = 31_622_400.0  # 366 days


def load_migrations(
    outbox_table: str, partition_seconds: float = PARTITION_SECONDS
) -> list[Migration]:
    """Every migration shipped with flowproof, in version order, rendered for `outbox_table`
    (and the span of the time partitions a migration makes: `{{partition_seconds}}`)."""
    if not PARTITION_SECONDS_MIN <= partition_seconds <= PARTITION_SECONDS_MAX:
        raise ValueError(
            f"partition_seconds must lie in [{PARTITION_SECONDS_MIN:g}, "
            f"{PARTITION_SECONDS_MAX:g}], not {partition_seconds}"
        )
    found = []
    for entry in resources.files("flowproof.core.sql.migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        text = entry.read_text(encoding="utf-8")
        sql = render(text, outbox_table, partition_seconds=repr(float(partition_seconds)))
        found.append(Migration(int(match["version"]), match["name"], sql))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in {versions}")
    return found


async def applied_versions(conn: asyncpg.Connection) -> set[int]:
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", MIGRATIONS_TABLE)
    if not exists:
        return set()
    rows = await conn.fetch(f"SELECT version FROM {MIGRATIONS_TABLE}")
    return {row["version"] for row in rows}


async def migrate(
    conn: asyncpg.Connection,
    outbox_table: str,
    upto: int | None = None,
    *,
    partition_seconds: float = PARTITION_SECONDS,
) -> list[Migration]:
    """Apply the missing migrations (those up to version `upto` when given: tests of an
    upgrade); return those applied by this call (none if up to date). `partition_seconds` is
    the span of the time partitions migration 0070 makes (FLOWPROOF_RELAY_PARTITION_SECONDS)."""
    migrations = load_migrations(outbox_table, partition_seconds)
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
                    version integer PRIMARY KEY,
                    name text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = await applied_versions(conn)
        applied = []
        for migration in migrations:
            if migration.version in done or (upto is not None and migration.version > upto):
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    f"INSERT INTO {MIGRATIONS_TABLE} (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            log.info("db.migration_applied", version=migration.version, name=migration.name)
            applied.append(migration)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
