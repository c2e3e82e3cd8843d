"""Helpers of the verifier tests: a pipeline's traces built directly, without relay or consumer.

`clean_pipeline` leaves what a healthy pipeline leaves: outbox rows published to both sinks, a
Redis stream whose group read and acknowledged every entry, a Kafka topic whose group committed
every offset, and one valid receipt per event, sink and group at the entry id / partition:offset
the event really has. Each test then breaks one thing.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from flowproof.core.config import Settings
from flowproof.verifier.evaluator import Evaluator
from flowproof.verifier.model import CHECK_NAMES, Report

GROUP = "flowproof"
AGGREGATETYPE = "order"


@dataclass
class Event:
    seq: int
    id: uuid.UUID
    aggregateid: str
    created_at: dt.datetime
    redis_entry: str = ""
    kafka_offset: int = -1


@dataclass
class Pipeline:
    settings: Settings
    redis: aioredis.Redis
    stream: str
    topic: str
    events: list[Event] = field(default_factory=list)

    def event(self, seq: int) -> Event:
        return next(e for e in self.events if e.seq == seq)

    async def execute(self, sql: str, *args: Any) -> str:
        """Run one statement on a connection of its own (no connection outlives a test)."""
        conn = await asyncpg.connect(self.settings.database_url.get_secret_value())
        try:
            return str(await conn.execute(sql, *args))
        finally:
            await conn.close()

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.settings.database_url.get_secret_value())
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tuned(settings: Settings, **changes: Any) -> Settings:
    """`settings` with some values changed, validated like any configuration."""
    values = settings.model_dump()
    for name in ("database_url", "redis_url"):
        values[name] = values[name].get_secret_value()
    return Settings(**{**values, **changes})


async def evaluate(settings: Settings) -> Report:
    async with Evaluator(settings) as evaluator:
        return await evaluator.evaluate()


def failing(report: Report) -> set[str]:
    return {check.name for check in report.checks if not check.passed}


def assert_only(report: Report, failed: Iterable[str]) -> None:
    """Exactly the `failed` checks failed; every other check of docs/design.md passed."""
    expected = set(failed)
    assert [c.name for c in report.checks] == list(CHECK_NAMES)
    details = {c.name: c.detail for c in report.checks if c.name in failing(report) ^ expected}
    assert failing(report) == expected, details


def evidence(report: Report, check: str, **match: Any) -> list[dict[str, Any]]:
    """The evidence items of `check` whose fields equal `match`."""
    items = report.check(check).as_json()["evidence"]
    return [item for item in items if all(item.get(k) == v for k, v in match.items())]


async def insert_events(
    pipeline: Pipeline, count: int, *, aggregates: int, age_seconds: float = 120.0
) -> list[Event]:
    """`count` events of `aggregates` aggregates, created `age_seconds` ago, passed by the
    relay's cursors (their delivery records, 5 ms later, are the caller's to add)."""
    rows = await pipeline.fetch(
        """
        INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload, created_at)
        SELECT $1, 'agg-' || (g % $3), 'orders.OrderPlaced', '{}'::jsonb,
               clock_timestamp() - make_interval(secs => $4) + g * interval '1 ms'
        FROM generate_series(1, $2) AS g
        RETURNING seq, id, aggregateid, created_at
        """,
        AGGREGATETYPE,
        count,
        aggregates,
        age_seconds,
    )
    await cursors_passed(pipeline)
    return [Event(r["seq"], r["id"], r["aggregateid"], r["created_at"]) for r in rows]


async def cursors_passed(pipeline: Pipeline) -> None:
    """Every sink's cursors pass every row committed so far, as the relay's would once it
    published (or set aside) them."""
    await pipeline.execute(
        "UPDATE flowproof_outbox_cursors "
        "SET snap = pg_current_snapshot(), next_snap = NULL, next_seq = 0, last_seq = NULL"
    )


async def set_aside(
    pipeline: Pipeline, event: Event, sink: str, state: str, reason: str | None = None
) -> None:
    """`event` set aside for `sink` as the relay does (state queued: still owed to the sink)."""
    await pipeline.execute(
        """INSERT INTO flowproof_outbox_parked
               (sink, seq, slot, aggregatetype, aggregateid, state, reason, error)
           SELECT $2, seq, slot, aggregatetype, aggregateid, $3, $4,
                  CASE WHEN $4::text IS NOT NULL THEN 'set aside by the test' END
           FROM flowproof_outbox WHERE seq = $1""",
        event.seq,
        sink,
        state,
        reason,
    )


async def insert_receipt(
    pipeline: Pipeline,
    event: Event | None,
    *,
    sink: str,
    source: str,
    position: str,
    group: str = GROUP,
    reason: str | None = None,
    delivery_count: int = 1,
) -> None:
    """One receipt as a consumer writes it; `event` None for a message too broken to name."""
    created = event.created_at if event else None
    await pipeline.execute(
        """
        INSERT INTO flowproof_receipts (event_id, sink, consumer_group, consumer, source,
            position, event_type, aggregatetype, aggregateid, created_at, received_at, valid,
            reason, error, delivery_count)
        VALUES ($1, $2, $3, 'test-consumer', $4, $5, 'orders.OrderPlaced', $6, $7,
                $8::timestamptz, coalesce($8::timestamptz + interval '20 ms', clock_timestamp()),
                $9::text IS NULL, $9::text,
                CASE WHEN $9::text IS NULL THEN NULL ELSE 'broken on purpose' END, $10)
        """,
        event.id if event else None,
        sink,
        group,
        source,
        position,
        AGGREGATETYPE if event else None,
        event.aggregateid if event else None,
        created,
        reason,
        delivery_count,
    )


async def published_event(
    pipeline: Pipeline,
    aggregateid: str,
    *,
    age_seconds: float,
    owed: tuple[str, ...] = (),
) -> Event:
    """One more event, created `age_seconds` ago and passed by the relay's cursors; still owed
    to the sinks of `owed` (queued), published to the others once the caller adds its delivery
    records."""
    [row] = await pipeline.fetch(
        """INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload, created_at)
           VALUES ($1, $2, 'orders.OrderPlaced', '{}', now() - make_interval(secs => $3))
           RETURNING seq, id, aggregateid, created_at""",
        AGGREGATETYPE,
        aggregateid,
        age_seconds,
    )
    await cursors_passed(pipeline)
    event = Event(row["seq"], row["id"], row["aggregateid"], row["created_at"])
    for sink in owed:
        await set_aside(pipeline, event, sink, "queued")
    return event


async def record_delivery(
    pipeline: Pipeline, event: Event, *, sink: str, position: str, destination: str = ""
) -> None:
    """Where the relay put the event, as it records it (published 5 ms after created)."""
    if sink == "redis":
        partition, destination = None, destination or pipeline.stream
    else:
        partition, destination = (
            int(position.split(":", maxsplit=1)[0]),
            destination or pipeline.topic,
        )
    await pipeline.execute(
        """INSERT INTO flowproof_outbox_deliveries
               (seq, sink, destination, partition, position, published_at)
           VALUES ($1, $2, $3, $4, $5, $6::timestamptz + interval '5 ms')""",
        event.seq,
        sink,
        destination,
        partition,
        position,
        event.created_at,
    )


async def _fill_redis(client: aioredis.Redis, stream: str, events: list[Event]) -> None:
    for event in events:
        entry = await client.xadd(stream, {"id": str(event.id), "payload": b"\x00"})
        event.redis_entry = entry.decode()
    await client.xgroup_create(stream, GROUP, id="0")
    read = await client.xreadgroup(GROUP, "test-consumer", {stream: ">"}, count=len(events))
    ids = [entry_id for _, entries in read for entry_id, _ in entries]
    await client.xack(stream, GROUP, *ids)


async def _fill_kafka(bootstrap: str, topic: str, events: list[Event]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for event in events:
            meta = await producer.send_and_wait(
                topic, json.dumps({"id": str(event.id)}).encode(), key=event.aggregateid.encode()
            )
            event.kafka_offset = meta.offset
    finally:
        await producer.stop()
    await commit(bootstrap, topic, GROUP, len(events))


async def commit(bootstrap: str, topic: str, group: str, offset: int, partition: int = 0) -> None:
    """Commit `offset` for `group` on one partition, as a consumer that processed up to it."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        await consumer.commit({tp: offset})
    finally:
        await consumer.stop()


async def produce(bootstrap: str, topic: str, count: int, key: bytes = b"k") -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i in range(count):
            await producer.send_and_wait(topic, f"late-{i}".encode(), key=key)
    finally:
        await producer.stop()


async def clean_pipeline(
    settings: Settings,
    redis: aioredis.Redis,
    kafka_admin: AIOKafkaAdminClient,
    *,
    events: int = 6,
    aggregates: int = 2,
) -> Pipeline:
    """Everything a healthy pipeline leaves behind (see the module docstring)."""
    stream = f"{settings.stream_prefix}{AGGREGATETYPE}"
    topic = f"{settings.topic_prefix}{AGGREGATETYPE}"
    await kafka_admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    pipeline = Pipeline(settings, redis, stream, topic)
    pipeline.events = await insert_events(pipeline, events, aggregates=aggregates)
    await _fill_redis(redis, stream, pipeline.events)
    await _fill_kafka(settings.kafka_bootstrap_servers, topic, pipeline.events)
    for event in pipeline.events:
        await record_delivery(pipeline, event, sink="redis", position=event.redis_entry)
        await record_delivery(pipeline, event, sink="kafka", position=f"0:{event.kafka_offset}")
        await insert_receipt(
            pipeline, event, sink="redis", source=stream, position=event.redis_entry
        )
        await insert_receipt(
            pipeline, event, sink="kafka", source=topic, position=f"0:{event.kafka_offset}"
        )
    return pipeline
