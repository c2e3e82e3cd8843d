"""The relay end to end against the real PostgreSQL, Redis and Kafka: every row exactly once in
both sinks, decodable with its schema, with the envelope of docs/design.md; NOTIFY wake-up; full
batches without NOTIFY; a listener that reconnects; pruning."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections import Counter

import asyncpg
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import REGISTRY

from flowproof.core.config import Settings
from flowproof.publisher.outbox import Outbox
from flowproof.publisher.relay import Relay
from flowproof.schemas import framing
from flowproof.schemas.envelope import format_timestamp
from flowproof.schemas.registry import load_registry
from tests.readback import (
    Delivered,
    insert_canaries,
    read_stream,
    read_topic,
    unpublished,
    wait_until,
)

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def order_payload(n: int) -> dict[str, object]:
    return {
        "order_id": f"o-{n}",
        "customer_id": f"c-{n % 3}",
        "currency": "EUR",
        "total_cents": 100 * n,
        "lines": [{"sku": "sku-1", "quantity": n, "unit_price_cents": 100}],
    }


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def delivered(settings: Settings, redis: aioredis.Redis, name: str) -> dict[str, list]:
    return {
        "redis": await read_stream(redis, f"{settings.stream_prefix}{name}"),
        "kafka": await read_topic(settings, f"{settings.topic_prefix}{name}"),
    }


async def test_every_row_arrives_exactly_once_in_both_sinks(
    settings: Settings,
    conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    kafka_admin: AIOKafkaAdminClient,
) -> None:
    settings = settings.model_copy(update={"relay_batch_size": 64})
    registry = load_registry(None)
    outbox = Outbox.from_settings(settings, registry)
    async with conn.transaction():  # through the Python API, some with a traceparent
        for n in range(20):
            await outbox.emit(
                conn,
                type="orders.OrderPlaced",
                aggregate_type="order",
                aggregate_id=f"o-{n % 4}",
                payload=order_payload(n),
                headers={"traceparent": TRACEPARENT} if n % 2 else None,
            )
    await insert_canaries(conn, ["c-1", "c-2", "c-3"], 100)  # plain SQL, defaults fill the rest
    before = {
        sink: metric("flowproof_relay_published_total", sink=sink) for sink in ("redis", "kafka")
    }

    relay = Relay(settings, registry=registry)
    await relay.run_until_idle()

    rows = {str(r["id"]): r for r in await conn.fetch("SELECT * FROM flowproof_outbox")}
    assert len(rows) == 320
    assert await unpublished(conn, "redis") == 0
    assert await unpublished(conn, "kafka") == 0
    for sink in ("redis", "kafka"):
        assert relay.stats[sink].published == 320
        assert metric("flowproof_relay_published_total", sink=sink) - before[sink] == 320
        assert metric("flowproof_outbox_pending_events", sink=sink) == 0

    for aggregatetype in ("order", "canary"):
        for sink, messages in (await delivered(settings, redis_client, aggregatetype)).items():
            expected = {i for i, r in rows.items() if r["aggregatetype"] == aggregatetype}
            counts = Counter(m.event_id for m in messages)
            assert set(counts) == expected, sink
            assert set(counts.values()) == {1}, f"{sink}: duplicates in a clean run"
            for message in messages:
                check_message(sink, message, rows[message.event_id], registry)
            check_order(sink, messages, rows)


def check_message(sink: str, message: Delivered, row: asyncpg.Record, registry: object) -> None:
    assert message.fields["type"] == row["type"]
    assert message.fields["aggregatetype"] == row["aggregatetype"]
    assert message.fields["aggregateid"] == row["aggregateid"]
    assert message.fields["created_at"] == format_timestamp(row["created_at"])
    headers = json.loads(row["headers"]) if row["headers"] else {}
    assert message.fields.get("traceparent") == headers.get("traceparent")
    if sink == "kafka":
        assert message.key == row["aggregateid"].encode()
    writer, datum = framing.decode(registry, message.value)  # type: ignore[arg-type]
    assert writer.event_type == row["type"]
    assert writer is registry.latest(row["type"])  # type: ignore[attr-defined]
    payload = json.loads(row["payload"])
    assert {k: datum[k] for k in payload} == payload


def check_order(sink: str, messages: list[Delivered], rows: dict[str, asyncpg.Record]) -> None:
    """The first copies of each aggregate's events come in seq order."""
    seen: set[str] = set()
    last: dict[str, int] = {}
    for message in messages:
        if message.event_id in seen:
            continue
        seen.add(message.event_id)
        row = rows[message.event_id]
        aggregate = row["aggregateid"]
        assert row["seq"] > last.get(aggregate, 0), f"{sink}: {aggregate} out of order"
        last[aggregate] = row["seq"]


async def wait_idle(relay: Relay) -> None:
    async with asyncio.timeout(15):
        for worker in relay.workers.values():
            await worker.idle.wait()


async def published_within(conn: asyncpg.Connection, seconds: float) -> float:
    """Seconds until every row is published to both sinks (polled every 10 ms)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    await wait_until(lambda: all_published(conn), seconds, every=0.01)
    return loop.time() - started


async def all_published(conn: asyncpg.Connection) -> bool:
    return not (await unpublished(conn, "redis") or await unpublished(conn, "kafka"))


async def test_notify_wakes_an_idle_relay_well_before_the_poll_interval(
    settings: Settings,
    conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    kafka_admin: AIOKafkaAdminClient,
) -> None:
    settings = settings.model_copy(update={"relay_poll_interval_seconds": 30.0})
    relay = Relay(settings)
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.wait_for(relay.listener.listening.wait(), 15)
        await wait_idle(relay)
        await insert_canaries(conn, ["n-1"], 1)
        assert await published_within(conn, 1.0) < 1.0

        # The listener's connection dies: it reconnects and NOTIFY works again.
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'flowproof-relay-listener' AND datname = current_database()"
        )
        assert killed == 1
        await wait_until(lambda: relay.listener.connections == 2, 15)
        await wait_idle(relay)
        await insert_canaries(conn, ["n-2"], 1)
        assert await published_within(conn, 1.0) < 1.0
    finally:
        relay.stop()
        await asyncio.wait_for(task, 30)


async def test_full_batches_follow_each_other_without_notify(
    settings: Settings,
    conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    kafka_admin: AIOKafkaAdminClient,
) -> None:
    await conn.execute("ALTER TABLE flowproof_outbox DISABLE TRIGGER flowproof_outbox_notify")
    await insert_canaries(conn, [f"h-{i}" for i in range(10)], 100)
    settings = settings.model_copy(
        update={"relay_poll_interval_seconds": 30.0, "relay_batch_size": 50}
    )
    relay = Relay(settings)
    task = asyncio.create_task(relay.run())
    try:
        # 20 batches per sink: waiting for the 30 s poll between them would take 10 minutes.
        assert await published_within(conn, 20.0) < 20.0
        for sink in ("redis", "kafka"):
            assert relay.stats[sink].batches >= 20
    finally:
        relay.stop()
        await asyncio.wait_for(task, 30)


async def test_a_lost_worker_connection_is_made_again_and_nothing_is_lost(
    settings: Settings,
    conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    kafka_admin: AIOKafkaAdminClient,
) -> None:
    settings = settings.model_copy(
        update={"relay_retry_base_seconds": 0.05, "relay_retry_cap_seconds": 0.2}
    )
    relay = Relay(settings)
    task = asyncio.create_task(relay.run())
    try:
        await insert_canaries(conn, ["w-1"], 10)
        await published_within(conn, 15.0)
        # The redis worker's session ends: its slot locks go with it, and it takes them again.
        joins_before = relay.workers["redis"].leases.joins
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'flowproof-relay-redis' AND datname = current_database()"
        )
        await insert_canaries(conn, ["w-1", "w-2"], 10)
        await published_within(conn, 15.0)
        assert relay.owned_slots("redis") == frozenset(range(64))
        assert relay.workers["redis"].leases.joins == joins_before + 1  # rejoined
    finally:
        relay.stop()
        await asyncio.wait_for(task, 30)
    messages = await read_stream(redis_client, f"{settings.stream_prefix}canary")
    assert len({m.event_id for m in messages}) == 30


async def test_prune_drops_only_old_partitions_every_sink_published(
    settings: Settings,
    conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    kafka_admin: AIOKafkaAdminClient,
) -> None:
    """A partition of the outbox goes once it is older than the retention and every sink
    published all of its rows; one row still owed or set aside keeps its whole partition."""
    await insert_canaries(conn, ["p-1"], 8)
    await conn.execute(
        "INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload) "
        "VALUES ('canary', 'p-2', 'nope.Unknown', '{}')"
    )
    settings = settings.model_copy(update={"relay_retention_seconds": 86400.0})
    relay = Relay(settings)
    await relay.run_until_idle()
    today = dt.datetime.now(dt.UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    days_ago = {2: "seq <= 5", 3: "seq = 6", 4: "seq = 9"}
    for days, rows in days_ago.items():  # each day its own partition (by created_at)
        await conn.execute(
            f"UPDATE flowproof_outbox SET created_at = $1 WHERE {rows}",
            today - dt.timedelta(days=days),
        )
    # seq 6: published by Redis only (as if Kafka had it queued again): its partition stays.
    await conn.execute(
        "INSERT INTO flowproof_outbox_parked (sink, seq, slot, aggregatetype, aggregateid, state) "
        "SELECT 'kafka', seq, slot, aggregatetype, aggregateid, 'queued' FROM flowproof_outbox "
        "WHERE seq = 6"
    )
    # seq 10: old, and no relay's cursor has passed it yet: its partition stays.
    await conn.execute(
        "INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload, created_at) "
        "VALUES ('canary', 'p-3', 'flowproof.Canary', '{}', $1)",
        today - dt.timedelta(days=5),
    )
    before = metric("flowproof_relay_pruned_total")

    assert await relay.prune_once() == 5
    remaining = [
        r["seq"] for r in await conn.fetch("SELECT seq FROM flowproof_outbox ORDER BY seq")
    ]
    # 6 half published, 7-8 recent, 9 old but parked, 10 old but not published yet
    assert remaining == [6, 7, 8, 9, 10]
    assert metric("flowproof_relay_pruned_total") - before == 5
    partitions = await conn.fetch(
        "SELECT part::text AS name, lo FROM flowproof_partitions('flowproof_outbox') "
        "WHERE NOT is_default AND lo < $1 ORDER BY lo",
        today - dt.timedelta(days=1, hours=12),
    )
    # The day of rows 1-5 went; those of 10, 9 and 6 stay, each a day wide.
    assert [p["lo"] for p in partitions] == [
        (today - dt.timedelta(days=d)).replace(hour=0) for d in (5, 4, 3)
    ]
    assert await relay.prune_once() == 0
    assert await conn.fetchval("SELECT count(*) FROM flowproof_outbox_default") == 0
