"""Migrations are versioned, idempotent and safe to run from several processes at once."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from flowproof.core.migrations import MIGRATIONS_TABLE, load_migrations, migrate
from tests.conftest import Services


@pytest.fixture
async def empty_database(services: Services) -> str:
    name = f"fp_e_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield services.database(name)  # type: ignore[misc]
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def test_concurrent_migrations_apply_each_version_once(empty_database: str) -> None:
    conns = [await asyncpg.connect(empty_database) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c, "flowproof_outbox") for c in conns))
        applied = [m.version for result in results for m in result]
        expected = [m.version for m in load_migrations("flowproof_outbox")]
        assert sorted(applied) == sorted(expected)  # each version applied by exactly one
        rows = await conns[0].fetch(f"SELECT version FROM {MIGRATIONS_TABLE} ORDER BY version")
        assert [r["version"] for r in rows] == expected
        assert await migrate(conns[0], "flowproof_outbox") == []  # idempotent
    finally:
        for conn in conns:
            await conn.close()


def test_migration_table_name_is_validated() -> None:
    with pytest.raises(ValueError, match="not a valid table name"):
        load_migrations('x"; DROP TABLE y; --')
