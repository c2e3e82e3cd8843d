"""Migrations are versioned, idempotent and safe to run from several processes at once; the
relay's statements read what it passes them."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flowproof.core.migrations import MIGRATIONS_TABLE, load_migrations, migrate
from flowproof.core.sqltext import text_array
from flowproof.publisher.queries import query
from tests.conftest import Services
from tests.test_hostile_support import storable_text


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


@pytest.mark.parametrize("span", [59.0, 31_622_401.0, float("nan"), float("inf"), -86400.0])
def test_the_partition_span_of_the_migrations_is_checked(span: float) -> None:
    with pytest.raises(ValueError, match="partition_seconds"):
        load_migrations("flowproof_outbox", span)


def test_the_partition_span_is_rendered_as_a_number() -> None:
    [partitions] = [m for m in load_migrations("flowproof_outbox", 3600) if m.version == 70]
    assert "make_interval(secs => 3600.0)" in partitions.sql
    assert "{{" not in partitions.sql


async def test_the_first_partitions_have_the_span_of_the_migrating_settings(
    empty_database: str,
) -> None:
    conn = await asyncpg.connect(empty_database)
    try:
        await migrate(conn, "flowproof_outbox", partition_seconds=3600)
        for table in ("flowproof_outbox", "flowproof_outbox_deliveries", "flowproof_receipts"):
            spans = await conn.fetch(
                "SELECT lo, hi FROM flowproof_partitions($1) WHERE NOT is_default ORDER BY lo",
                table,
            )
            # The current hour and the next two, on the hour, back to back.
            assert len(spans) == 3, (table, spans)
            assert all((hi - lo).total_seconds() == 3600 for lo, hi in spans), spans
            assert all(lo.minute == lo.second == 0 for lo, _ in spans), spans
            assert [lo for lo, _ in spans[1:]] == [hi for _, hi in spans[:-1]]
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM flowproof_partitions($1) WHERE is_default", table
                )
                == 1
            )
    finally:
        await conn.close()


async def test_delivery_records_carry_no_created_at_and_old_relays_still_record(
    empty_database: str,
) -> None:
    # Migration 0110: the relay's record statement leaves created_at NULL and its partial index
    # is gone; a relay of an earlier version, which still writes the column, keeps working.
    conn = await asyncpg.connect(empty_database)
    try:
        await migrate(conn, "flowproof_outbox")
        indexes = await conn.fetchval(
            "SELECT array_agg(indexname::text) FROM pg_indexes "
            "WHERE tablename = 'flowproof_outbox_deliveries'"
        )
        assert "flowproof_outbox_deliveries_sink_seq" in indexes
        assert "flowproof_outbox_deliveries_published_late" not in indexes
        await conn.execute(
            query("record", "flowproof_outbox", "redis"),
            [1, 2], text_array(["flowproof.order"] * 2), [None] * 2, text_array(["1-1", "1-2"]),
            [], [], [], [], [], [], [], [], [0], 2, False, True,
        )  # fmt: skip
        await conn.execute(  # as relays before 0110 recorded
            "INSERT INTO flowproof_outbox_deliveries "
            "(seq, sink, destination, partition, position, created_at) "
            "VALUES (3, 'redis', 'flowproof.order', NULL, '1-3', now() - interval '1 hour')"
        )
        rows = await conn.fetch(
            "SELECT seq, position, created_at IS NULL AS no_created_at "
            "FROM flowproof_outbox_deliveries ORDER BY seq"
        )
        assert [tuple(r) for r in rows] == [(1, "1-1", True), (2, "1-2", True), (3, "1-3", False)]
    finally:
        await conn.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# Strings PostgreSQL can hold (no NUL, no lone surrogate), as the sinks' names and positions are.
@given(values=st.lists(storable_text, max_size=8))
@example(values=[])
@example(values=["", "NULL", "{}", "a,b", " x "])
@example(values=['a"b', "c\\d", "\\", '"'])
async def test_text_array_literals_read_back_as_the_strings_given(
    services: Services, values: list[str]
) -> None:
    # The record statement's destinations and positions travel as one array literal each.
    conn = await asyncpg.connect(services.database_url)
    try:
        assert await conn.fetchval("SELECT $1::text::text[]", text_array(values)) == values
    finally:
        await conn.close()
