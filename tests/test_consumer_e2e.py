"""The whole path with the real relay: outbox, relay, Redis and Kafka, consumers, receipts."""

from __future__ import annotations

from collections import Counter

import asyncpg
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient

from flowproof.consumers.run import consume
from flowproof.core.config import Settings
from flowproof.publisher.outbox import Outbox
from flowproof.publisher.relay import Relay
from flowproof.schemas.registry import load_registry
from tests.readback import insert_canaries
from tests.test_consumer_support import group_name, order, receipts

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_both_consumers_receipt_every_event_of_a_relay_run(
    settings: Settings,
    database_url: str,
    redis_client: aioredis.Redis,
    kafka_admin: AIOKafkaAdminClient,
) -> None:
    registry = load_registry(None)
    outbox = Outbox.from_settings(settings, registry)
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            for n in range(30):
                await outbox.emit(
                    conn,
                    type="orders.OrderPlaced",
                    aggregate_type="order",
                    aggregate_id=f"o-{n % 4}",
                    payload=order(n),
                    headers={"traceparent": TRACEPARENT} if n % 2 else None,
                )
        await insert_canaries(conn, ["c-1", "c-2"], 20)
        await Relay(settings, registry=registry).run_until_idle()
        rows = {r["id"]: r for r in await conn.fetch("SELECT * FROM flowproof_outbox")}
    finally:
        await conn.close()
    assert len(rows) == 70

    groups = {"redis": group_name(), "kafka": group_name()}
    for sink, group in groups.items():
        stats = await consume(settings, sink=sink, group=group, drain=True)  # type: ignore[arg-type]
        assert stats.received == 70 and stats.invalid == 0, sink

    found = await receipts(database_url)
    for sink, group in groups.items():
        mine = [r for r in found if r["sink"] == sink and r["consumer_group"] == group]
        counts = Counter(r["event_id"] for r in mine)
        assert set(counts) == set(rows) and set(counts.values()) == {1}, sink
        for receipt in mine:
            row = rows[receipt["event_id"]]
            assert receipt["valid"], (sink, receipt["reason"], receipt["error"])
            assert receipt["created_at"] == row["created_at"]
            assert receipt["event_type"] == row["type"]
            assert receipt["aggregateid"] == row["aggregateid"]
            assert receipt["schema_id"] == registry.latest(row["type"]).schema_id
            assert receipt["source"] == f"{settings.stream_prefix}{row['aggregatetype']}"
