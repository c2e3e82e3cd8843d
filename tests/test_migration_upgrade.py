"""Migrations upgrade an outbox in place.

0050 (insert-only): the rows the relay of 0040 left pending are published once after it, in the
order of their aggregates, before the rows written after it; the rows already published are not
published again; parked rows stay parked, with the rows held behind them, until `flowproof parked
retry`. 0070 (time partitions): the outbox, its delivery records and the receipts are rebuilt
partitioned with every row, seq and txid kept: what was pending is published once after it, what
was published is not published again, and the identities go on from where they were."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr

from flowproof.core.config import Settings
from flowproof.core.migrations import migrate
from flowproof.publisher.parked import retry_parked
from flowproof.publisher.relay import Relay
from tests.conftest import Services
from tests.readback import insert_canaries, read_stream, read_topic, unpublished

BEFORE_0050 = 40
BEFORE_0070 = 60


async def _database_at(services: Services, version: int) -> AsyncIterator[str]:
    name = f"fp_u_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(services.database(name))
        try:
            await migrate(conn, "flowproof_outbox", upto=version)
        finally:
            await conn.close()
        yield services.database(name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def old_database(services: Services) -> AsyncIterator[str]:
    """A database migrated up to 0040 only: the outbox with per-row published marks."""
    async for url in _database_at(services, BEFORE_0050):
        yield url


@pytest.fixture
async def database_0060(services: Services) -> AsyncIterator[str]:
    """A database migrated up to 0060: the insert-only outbox, not partitioned."""
    async for url in _database_at(services, BEFORE_0070):
        yield url


# (aggregate, redis state, kafka state) of each row before the upgrade, in seq order:
# "done" published (marked), "pending" not yet, "parked" parked (oversized).
OLD_ROWS = [
    ("a", "done", "done"),
    ("a", "done", "pending"),  # Kafka had not caught up
    ("a", "pending", "pending"),
    ("b", "done", "parked"),
    ("b", "pending", "pending"),  # behind a parked row for Kafka: held there
    *[("c", "pending", "pending")] * 5,
    ("d", "done", "done"),
]


async def test_pending_rows_are_published_once_after_the_upgrade(
    old_database: str,
    settings: Settings,
    redis_client: aioredis.Redis,
    kafka_admin: AIOKafkaAdminClient,
) -> None:
    settings = settings.model_copy(
        update={"database_url": SecretStr(old_database), "relay_batch_size": 3}
    )
    conn = await asyncpg.connect(old_database)
    try:
        await conn.execute("INSERT INTO flowproof_outbox_sinks (sink) VALUES ('redis'), ('kafka')")
        ids = []
        for n, (aggregate, redis_state, kafka_state) in enumerate(OLD_ROWS):
            ids.append(
                await conn.fetchval(
                    """INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload,
                           redis_published_at, kafka_published_at,
                           kafka_parked_reason, kafka_parked_error, kafka_parked_at)
                       VALUES ('canary', $1, 'flowproof.Canary',
                               jsonb_build_object('run_id', 'old', 'sequence', $2::int,
                                                  'total', $3::int),
                               CASE WHEN $4 THEN now() END, CASE WHEN $5 THEN now() END,
                               CASE WHEN $6 THEN 'oversized' END,
                               CASE WHEN $6 THEN 'too big' END, CASE WHEN $6 THEN now() END)
                       RETURNING id::text""",
                    aggregate,
                    n,
                    len(OLD_ROWS),
                    redis_state == "done",
                    kafka_state == "done",
                    kafka_state == "parked",
                )
            )
        held = ids[4]  # pending for Kafka, behind the parked row of its aggregate
        owed = {
            "redis": [i for i, row in zip(ids, OLD_ROWS, strict=True) if row[1] == "pending"],
            "kafka": [
                i for i, row in zip(ids, OLD_ROWS, strict=True) if row[2] == "pending" and i != held
            ],
        }

        applied = await migrate(conn, "flowproof_outbox")
        assert [m.version for m in applied] == [50, 60, 70, 80, 90, 100, 110]
        states = await conn.fetch(
            "SELECT sink, seq, state FROM flowproof_outbox_parked ORDER BY sink, seq"
        )
        assert Counter((r["sink"], r["state"]) for r in states) == {
            ("redis", "queued"): 7,
            ("kafka", "queued"): 7,
            ("kafka", "parked"): 1,
            ("kafka", "held"): 1,
        }
        assert await unpublished(conn, "redis") == 7
        assert await unpublished(conn, "kafka") == 9

        # Written after the upgrade, for aggregates with rows still owed and a new one.
        await insert_canaries(conn, ["a", "c", "e"], 2, run_id="new")
        new = [
            r["id"]
            for r in await conn.fetch(
                "SELECT id::text FROM flowproof_outbox WHERE txid IS NOT NULL ORDER BY seq"
            )
        ]
        assert len(new) == 6

        relay = Relay(settings)
        await relay.run_until_idle()
        assert await unpublished(conn, "redis") == 0
        assert await unpublished(conn, "kafka") == 2  # the parked row and the one behind it
        sent = {
            "redis": await read_stream(redis_client, f"{settings.stream_prefix}canary"),
            "kafka": await read_topic(settings, f"{settings.topic_prefix}canary"),
        }
        for sink, messages in sent.items():
            # Exactly what was owed and what came after: nothing published before went again.
            assert Counter(m.event_id for m in messages) == Counter(owed[sink] + new), sink
        assert await conn.fetchval("SELECT count(*) FROM flowproof_outbox_parked") == 2

        # The parked row goes once retried, then the one held behind it, in order.
        assert await retry_parked(conn, "flowproof_outbox", ("kafka",)) == {"kafka": 1}
        await relay.run_until_idle()
        assert await unpublished(conn, "kafka") == 0
        topic = await read_topic(settings, f"{settings.topic_prefix}canary")
        assert Counter(m.event_id for m in topic) == Counter(owed["kafka"] + new + [ids[3], held])
        order = {event_id: n for n, event_id in enumerate(ids + new)}
        for sink, messages in (("redis", sent["redis"]), ("kafka", topic)):
            for aggregate in "abce":
                mine = [order[m.event_id] for m in messages if m.fields["aggregateid"] == aggregate]
                assert mine == sorted(mine), (sink, aggregate)
        assert await conn.fetchval("SELECT count(*) FROM flowproof_outbox_parked") == 0
    finally:
        await conn.close()


async def test_an_outbox_of_0060_is_partitioned_in_place(
    database_0060: str,
    settings: Settings,
    redis_client: aioredis.Redis,
    kafka_admin: AIOKafkaAdminClient,
) -> None:
    settings = settings.model_copy(
        update={"database_url": SecretStr(database_0060), "relay_batch_size": 5}
    )
    conn = await asyncpg.connect(database_0060)
    try:
        # Published before the upgrade: 12 rows, 3 of them written three days ago.
        await insert_canaries(conn, ["a", "b", "c"], 4, run_id="before")
        await conn.execute(
            "UPDATE flowproof_outbox SET created_at = created_at - interval '3 days' "
            "WHERE seq % 4 = 0"
        )
        await Relay(settings).run_until_idle()
        # Pending at the upgrade: 9 rows of the same aggregates and a new one.
        await insert_canaries(conn, ["a", "c", "d"], 3, run_id="pending")
        await conn.execute(
            "INSERT INTO flowproof_receipts (event_id, sink, consumer_group, consumer, source, "
            "position, received_at, valid) SELECT id, 'redis', 'g', 'c', 's', '1-' || seq, "
            "created_at, true FROM flowproof_outbox WHERE seq <= 12"
        )
        rows_before = await conn.fetch("SELECT seq, id, txid::text FROM flowproof_outbox")
        deliveries_before = await conn.fetchval("SELECT count(*) FROM flowproof_outbox_deliveries")
        last_receipt = await conn.fetchval("SELECT max(receipt_id) FROM flowproof_receipts")
        assert len(rows_before) == 21 and deliveries_before == 24
        assert await unpublished(conn, "redis") == await unpublished(conn, "kafka") == 9

        applied = await migrate(conn, "flowproof_outbox")
        assert [m.version for m in applied] == [70, 80, 90, 100, 110]

        kinds = await conn.fetch(
            "SELECT relname, relkind::text FROM pg_class WHERE relname IN "
            "('flowproof_outbox', 'flowproof_outbox_deliveries', 'flowproof_receipts')"
        )
        assert {r["relkind"] for r in kinds} == {"p"} and len(kinds) == 3
        days = await conn.fetchval(
            "SELECT count(*) FROM flowproof_partitions('flowproof_outbox') "
            "WHERE NOT is_default AND lo < now() - interval '2 days'"
        )
        assert days == 1  # the day of the rows written three days ago
        rows_after = await conn.fetch("SELECT seq, id, txid::text FROM flowproof_outbox")
        assert sorted(map(tuple, rows_after)) == sorted(map(tuple, rows_before))
        assert await conn.fetchval("SELECT count(*) FROM flowproof_outbox_default") == 0
        assert await conn.fetchval("SELECT count(*) FROM flowproof_outbox_deliveries") == 24
        assert await unpublished(conn, "redis") == await unpublished(conn, "kafka") == 9

        # The identities go on: new rows and receipts come after the old ones.
        await insert_canaries(conn, ["a", "e"], 2, run_id="after")
        new_seqs = await conn.fetch("SELECT seq FROM flowproof_outbox WHERE seq > 21")
        assert len(new_seqs) == 4
        receipt = await conn.fetchval(
            "INSERT INTO flowproof_receipts (sink, consumer_group, consumer, source, position, "
            "received_at, valid, reason) VALUES ('redis', 'g', 'c', 's', '9-9', now(), false, "
            "'bad_magic') RETURNING receipt_id"
        )
        assert receipt == last_receipt + 1

        await Relay(settings).run_until_idle()
        assert await unpublished(conn, "redis") == await unpublished(conn, "kafka") == 0
        # Every event once: those published before the upgrade were not published again.
        everything = await conn.fetch("SELECT id::text FROM flowproof_outbox")
        expected = Counter(r["id"] for r in everything)
        assert len(expected) == 25
        sent = {
            "redis": await read_stream(redis_client, f"{settings.stream_prefix}canary"),
            "kafka": await read_topic(settings, f"{settings.topic_prefix}canary"),
        }
        for sink, messages in sent.items():
            assert Counter(m.event_id for m in messages) == expected, sink
        assert await conn.fetchval("SELECT count(*) FROM flowproof_outbox_deliveries") == 50
    finally:
        await conn.close()
