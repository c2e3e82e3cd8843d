"""Three relays on one outbox: every slot has exactly one publisher per sink, so the events of
each of 50 aggregates reach Redis and Kafka in order, while relays join and slots move between
them mid-run."""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient

from flowproof.core.config import Settings
from flowproof.publisher.relay import Relay
from flowproof.publisher.slots import SLOTS, fair_share
from flowproof.schemas import framing
from flowproof.schemas.registry import load_registry
from tests.readback import (
    Delivered,
    insert_canaries,
    read_stream,
    read_topic,
    unpublished,
    wait_until,
)

AGGREGATES = [f"agg-{i:02d}" for i in range(50)]
WAVES = 4
PER_WAVE = 10  # events per aggregate and wave


async def half_done(conn: asyncpg.Connection) -> bool:
    return await unpublished(conn, "kafka") <= len(AGGREGATES) * PER_WAVE // 2


async def all_published(conn: asyncpg.Connection) -> bool:
    return await unpublished(conn, "redis") == 0 and await unpublished(conn, "kafka") == 0


async def test_three_relays_keep_the_order_of_each_aggregate_in_both_sinks(
    settings: Settings,
    database_url: str,
    redis_client: aioredis.Redis,
    kafka_admin: AIOKafkaAdminClient,
) -> None:
    settings = settings.model_copy(
        update={
            "relay_batch_size": 20,
            "relay_rebalance_interval_seconds": 0.05,
            "relay_poll_interval_seconds": 0.5,
            "relay_prune_interval_seconds": 0,
        }
    )
    registry = load_registry(None)
    conn = await asyncpg.connect(database_url)
    relays = [Relay(settings, registry=registry) for _ in range(3)]
    tasks = [asyncio.create_task(relays[0].run(), name="relay-0")]
    try:
        await insert_canaries(conn, AGGREGATES, PER_WAVE, run_id="0")
        # The first relay is under way alone...
        await wait_until(lambda: relays[0].stats["kafka"].published >= 100, 30)
        # ...then two more join: slots move from the first to them between batches.
        tasks += [
            asyncio.create_task(r.run(), name=f"relay-{i}") for i, r in enumerate(relays) if i
        ]
        for wave in range(1, WAVES):
            await insert_canaries(conn, AGGREGATES, PER_WAVE, run_id=str(wave))
            # The next wave comes while this one is being published.
            await wait_until(lambda: half_done(conn), 30, every=0.01)
        await wait_until(lambda: all_published(conn), 60, every=0.05)
        # Shares settle: every slot held, none above its share.
        await wait_until(lambda: shares_settled(relays), 10, every=0.01)
    finally:
        for relay in relays:
            relay.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        rows = await conn.fetch("SELECT seq, id, aggregateid FROM flowproof_outbox")
        await conn.close()

    total = len(AGGREGATES) * PER_WAVE * WAVES
    assert len(rows) == total
    for sink in ("redis", "kafka"):
        # Every relay published to every sink: the work really was shared.
        assert all(relay.stats[sink].published > 0 for relay in relays), sink
        assert sum(relay.stats[sink].published for relay in relays) == total
    owners = [relay.owned_slots("redis") for relay in relays]  # released on stop: all empty
    assert owners == [frozenset()] * 3

    expected = {str(r["id"]) for r in rows}
    streams = {
        "redis": await read_stream(redis_client, f"{settings.stream_prefix}canary"),
        "kafka": await read_topic(settings, f"{settings.topic_prefix}canary"),
    }
    for sink, messages in streams.items():
        counts = Counter(m.event_id for m in messages)
        assert set(counts) == expected, sink
        assert set(counts.values()) == {1}, f"{sink}: duplicates in a clean run"
        assert_in_order(sink, messages, registry)


def shares_settled(relays: list[Relay]) -> bool:
    """Every slot has exactly one owner per sink, and no relay holds more than ceil(64 / 3)."""
    for sink in ("redis", "kafka"):
        owned = [relay.owned_slots(sink) for relay in relays]
        if any(len(slots) > fair_share(len(relays)) for slots in owned):
            return False
        if sorted(slot for slots in owned for slot in slots) != list(range(SLOTS)):
            return False
    return True


def assert_in_order(sink: str, messages: list[Delivered], registry: object) -> None:
    """Each aggregate's canaries are (wave, sequence) = (0, 1)...(3, 10): exactly that order."""
    seen: dict[str, list[tuple[int, int]]] = {}
    for message in messages:
        _, datum = framing.decode(registry, message.value)  # type: ignore[arg-type]
        key = (int(datum["run_id"]), datum["sequence"])
        seen.setdefault(message.fields["aggregateid"], []).append(key)
    expected = [(wave, n) for wave in range(WAVES) for n in range(1, PER_WAVE + 1)]
    assert sorted(seen) == AGGREGATES
    for aggregate, arrived in seen.items():
        assert arrived == expected, f"{sink}: {aggregate} arrived as {arrived}"
