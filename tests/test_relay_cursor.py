"""The relay's cursors (migration 0050): a row whose transaction commits after later rows were
published is published all the same, and the relay never updates the outbox."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient

from flowproof.core.config import Settings
from flowproof.publisher.relay import Relay
from tests.readback import (
    insert_canaries,
    read_stream,
    read_topic,
    unpublished,
    wait_until,
)


async def test_a_row_committed_after_later_rows_were_published_is_not_skipped(
    settings: Settings,
    database_url: str,
    conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    kafka_admin: AIOKafkaAdminClient,
) -> None:
    settings = settings.model_copy(update={"relay_batch_size": 4})
    slow = await asyncpg.connect(database_url)
    try:
        # The slow transaction takes its seq first and commits last.
        transaction = slow.transaction()
        await transaction.start()
        await insert_canaries(slow, ["slow"], 1, run_id="slow")
        straggler = await slow.fetchval("SELECT id::text FROM flowproof_outbox")
        await insert_canaries(conn, ["fast-1", "fast-2"], 5, run_id="fast")
        relay = Relay(settings)
        await relay.run_until_idle()
        # Every committed row went, in several batches; the cursors passed the straggler's seq.
        assert await unpublished(conn, "redis") == 0 and await unpublished(conn, "kafka") == 0
        passed = await conn.fetchval(
            "SELECT count(*) FROM flowproof_outbox_cursors WHERE next_snap IS NULL"
        )
        assert passed == 128  # every slot of both sinks, no round left open
        await transaction.commit()
        assert await unpublished(conn, "redis") == 1 and await unpublished(conn, "kafka") == 1
        await relay.run_until_idle()
    finally:
        await slow.close()
    assert await unpublished(conn, "redis") == 0 and await unpublished(conn, "kafka") == 0
    for messages in (
        await read_stream(redis_client, f"{settings.stream_prefix}canary"),
        await read_topic(settings, f"{settings.topic_prefix}canary"),
    ):
        ids = [m.event_id for m in messages]
        assert len(ids) == len(set(ids)) == 11
        assert straggler in ids


# The outbox and its partitions, in pg_stat_user_tables.
OUTBOX_PARTITIONS = "relid IN (SELECT relid FROM pg_partition_tree('flowproof_outbox'))"


@pytest.mark.usefixtures("redis_client", "kafka_admin")
async def test_a_relay_run_never_updates_the_outbox(
    settings: Settings, conn: asyncpg.Connection
) -> None:
    """pg_stat_user_tables counts every row version the relay would write: after thousands of
    events published in many batches (and a row parked), the outbox's partitions have inserts
    and no update."""
    await insert_canaries(conn, [f"agg-{i}" for i in range(40)], 50)
    await conn.execute(
        "INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload) "
        "VALUES ('canary', 'bad', 'nope.Unknown', '{}')"
    )
    settings = settings.model_copy(update={"relay_batch_size": 100})
    relay = Relay(settings)
    await relay.run_until_idle()
    assert all(s.published == 2000 and s.parked == 1 for s in relay.stats.values())
    assert all(s.batches >= 20 for s in relay.stats.values())

    async def counted() -> bool:
        # Statistics reach the view when each backend flushes them (at the latest when the
        # relay's connections close); this one reads a fresh snapshot every time.
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        inserted = await conn.fetchval(
            f"SELECT sum(n_tup_ins) FROM pg_stat_user_tables WHERE {OUTBOX_PARTITIONS}"
        )
        return bool(inserted == 2001)

    await conn.execute("SELECT pg_stat_force_next_flush()")
    await asyncio.sleep(0)
    await wait_until(counted, 15, every=0.2)
    stats = await conn.fetchrow(
        "SELECT count(*), sum(n_tup_upd), sum(n_tup_hot_upd), sum(n_tup_del) "
        f"FROM pg_stat_user_tables WHERE {OUTBOX_PARTITIONS}"
    )
    assert stats[0] >= 4, "the outbox and its partitions (default, today, two days ahead)"
    assert tuple(stats)[1:] == (0, 0, 0)
    # What moved instead: one cursor row per slot and batch, the delivery records appended.
    moved = await conn.fetchval(
        "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'flowproof_outbox_cursors'"
    )
    assert moved > 0
