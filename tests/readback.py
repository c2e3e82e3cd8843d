"""Test helpers: reading back what the relay published, waiting, inserting canaries by plain SQL.

Both readers return every copy in the order the sink holds them, so callers can check exactly-once
(count per event id) and per-aggregate order (first copy of each event).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from flowproof.core.config import Settings
from flowproof.core.connect import kafka_client_kwargs
from flowproof.publisher.queries import query


@dataclass(frozen=True, slots=True)
class Delivered:
    """One message as a sink holds it: envelope fields (str) and the framed value."""

    fields: dict[str, str]
    value: bytes
    position: str  # stream entry id, or partition:offset
    key: bytes | None = None

    @property
    def event_id(self) -> str:
        return self.fields["id"]


async def read_stream(client: aioredis.Redis, stream: str) -> list[Delivered]:
    """Every entry of a Redis stream, oldest first."""
    found: list[Delivered] = []
    last = "-"
    while True:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await client.xrange(  # type: ignore[assignment]
            stream, min=last, max="+", count=1000
        )
        if last != "-":
            entries = entries[1:]  # the range is inclusive: drop the entry we already have
        if not entries:
            return found
        for entry_id, raw in entries:
            fields = {k.decode(): v for k, v in raw.items()}
            value = fields.pop("payload")
            text = {k: v.decode() for k, v in fields.items()}
            found.append(Delivered(text, value, entry_id.decode()))
        last = entries[-1][0].decode()


async def read_topic(settings: Settings, topic: str, within: float = 30.0) -> list[Delivered]:
    """Every message of a Kafka topic (all partitions, from the start up to the end offsets),
    in partition then offset order."""
    consumer = AIOKafkaConsumer(**kafka_client_kwargs(settings), enable_auto_commit=False)
    await consumer.start()
    found: list[Delivered] = []
    try:
        async with asyncio.timeout(within):
            partitions = await _partitions(settings, topic)
            assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(assigned)
            await consumer.seek_to_beginning(*assigned)
            ends = await consumer.end_offsets(assigned)
            remaining = {tp for tp in assigned if ends[tp] > 0}
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=500)
                for tp, records in batch.items():
                    for record in records:
                        fields = {k: v.decode() for k, v in record.headers}
                        position = f"{tp.partition}:{record.offset}"
                        value = record.value if record.value is not None else b""
                        found.append(Delivered(fields, value, position, record.key))
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
    finally:
        await consumer.stop()
    found.sort(key=lambda d: tuple(int(x) for x in d.position.split(":")))
    return found


async def _partitions(settings: Settings, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(**kafka_client_kwargs(settings))
    await admin.start()
    try:
        while True:
            described = await admin.describe_topics([topic])
            if described and described[0]["error_code"] == 0 and described[0]["partitions"]:
                return [p["partition"] for p in described[0]["partitions"]]
            await asyncio.sleep(0.1)  # a topic the relay just created may not be described yet
    finally:
        await admin.close()


async def wait_until(
    condition: Callable[[], Awaitable[bool] | bool], within: float, every: float = 0.02
) -> None:
    """Poll `condition` (sync or async) until it holds; TimeoutError after `within` seconds."""
    async with asyncio.timeout(within):
        while True:
            outcome = condition()
            if await outcome if inspect.isawaitable(outcome) else outcome:
                return
            await asyncio.sleep(every)


async def unpublished(conn: asyncpg.Connection, sink: str, table: str = "flowproof_outbox") -> int:
    """Rows not yet acknowledged by `sink` (pending or parked)."""
    count: int = await conn.fetchval(
        query("count_unpublished", table, sink),
    )
    return count


async def insert_canaries(
    conn: asyncpg.Connection,
    aggregates: Sequence[str],
    per_aggregate: int,
    *,
    run_id: str = "test",
    aggregatetype: str = "canary",
    table: str = "flowproof_outbox",
) -> None:
    """Insert `per_aggregate` flowproof.Canary rows for each aggregate id, by plain SQL, in one
    statement, round robin (each aggregate's `sequence` rises with its seq)."""
    await conn.execute(
        query("insert_canaries", table),
        list(aggregates),
        per_aggregate,
        run_id,
        aggregatetype,
    )
