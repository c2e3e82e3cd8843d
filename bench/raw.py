"""Raw limits of the dependencies, from Python, with the payloads and settings of the relay.

- PostgreSQL: outbox rows inserted in single-row transactions from several connections, and in
  batches (one multi-row INSERT per relay batch) from one connection.
- Redis: pipelined XADD of the relay's exact messages (fields and framed Avro), one pipeline per
  relay batch, on a client made like the relay's (redis-py with hiredis): through redis-py's
  `pipeline()`, and packed by hiredis and written to a pooled connection at once (what the relay
  does). The raw limit is the faster of the two.
- Kafka: aiokafka producer with the relay's very settings (`publisher.kafka_sink.producer_options`:
  idempotent, acks=all, its linger and batch size), the relay's messages with key and headers,
  one relay batch sent then awaited at a time: `send()` per message, and one `send_batch()` per
  partition (what the relay does). The raw limit is the faster of the two.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from itertools import islice

import asyncpg
import hiredis
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from bench.payloads import INSERT_ROWS, Pool, Row
from bench.pipeline import ensure_topic
from bench.scratch import Scratch
from flowproof.core.config import Settings
from flowproof.core.connect import redis_client
from flowproof.publisher.kafka_sink import producer_options
from flowproof.publisher.rows import Message
from flowproof.schemas.envelope import PAYLOAD_FIELD

SINGLE_ROW = """
INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload)
VALUES ($1, $2, $3, $4::jsonb)
"""


def batches(items: Sequence[Message], size: int) -> list[Sequence[Message]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def postgres_single_rows(
    scratch: Scratch, pool: Pool, connections: int, seconds: float
) -> float:
    """Rows/s, each INSERT its own transaction (autocommit), `connections` writers at once."""
    rows = pool.cycle()
    stop_at = time.monotonic() + seconds
    conns = [await scratch.connect() for _ in range(connections)]

    async def writer(conn: asyncpg.Connection, index: int) -> int:
        done = 0
        while time.monotonic() < stop_at:
            row: Row = next(rows)  # the writers share one sequence of rows
            await conn.execute(
                SINGLE_ROW, row.aggregatetype, f"{row.aggregateid}.w{index}", row.type, row.payload
            )
            done += 1
        return done

    try:
        started = time.monotonic()
        counts = await asyncio.gather(*(writer(c, i) for i, c in enumerate(conns)))
        elapsed = time.monotonic() - started
    finally:
        for conn in conns:
            await conn.close()
    return sum(counts) / elapsed


async def postgres_batched(scratch: Scratch, pool: Pool, batch: int, seconds: float) -> float:
    """Rows/s, one multi-row INSERT (a transaction) of `batch` rows at a time, one connection."""
    rows = pool.cycle()
    conn = await scratch.connect()
    try:
        done = 0
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            chunk = list(islice(rows, batch))
            await conn.execute(INSERT_ROWS, *pool.columns(chunk))
            done += len(chunk)
        return done / (time.monotonic() - started)
    finally:
        await conn.close()


async def redis_pipeline(settings: Settings, messages: Sequence[Message]) -> float:
    """Messages/s of redis-py's pipeline of XADD, one per relay batch, each awaited in turn."""
    client = redis_client(settings)
    try:
        await client.ping()
        started = time.monotonic()
        for chunk in batches(messages, settings.relay_batch_size):
            pipe = client.pipeline(transaction=False)
            for message in chunk:
                fields = {**message.fields, PAYLOAD_FIELD: message.value}
                pipe.xadd(message.destination, fields)  # type: ignore[arg-type]
            await pipe.execute()
        return len(messages) / (time.monotonic() - started)
    finally:
        await client.aclose()


async def redis_packed(settings: Settings, messages: Sequence[Message]) -> float:
    """Messages/s of XADDs packed by hiredis and written at once, a relay batch at a time."""
    client = redis_client(settings)
    pool = client.connection_pool
    try:
        await client.ping()
        started = time.monotonic()
        for chunk in batches(messages, settings.relay_batch_size):
            commands = []
            for m in chunk:
                args: list[str | bytes] = ["XADD", m.destination, "*"]
                for name, value in m.fields.items():
                    args += [name, value]
                args += [PAYLOAD_FIELD, m.value]
                commands.append(hiredis.pack_command(tuple(args)))  # type: ignore[arg-type]
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
            try:
                await conn.send_packed_command(b"".join(commands))
                async with asyncio.timeout(settings.relay_sink_timeout_seconds):
                    for _ in chunk:
                        await conn.read_response(timeout=math.inf)
            finally:
                await pool.release(conn)
        return len(messages) / (time.monotonic() - started)
    finally:
        await client.aclose()


async def kafka_send(settings: Settings, messages: Sequence[Message]) -> float:
    """Messages/s of `send()` per message, a relay batch sent, then awaited."""
    producer = AIOKafkaProducer(**producer_options(settings))
    await producer.start()
    try:
        await _create(settings, producer, messages[0])
        started = time.monotonic()
        for chunk in batches(messages, settings.relay_batch_size):
            futures = [
                await producer.send(
                    m.destination, value=m.value, key=m.key, headers=list(m.fields.items())
                )
                for m in chunk
            ]
            await asyncio.gather(*futures)
        return len(messages) / (time.monotonic() - started)
    finally:
        await producer.stop()


async def kafka_send_batch(settings: Settings, messages: Sequence[Message]) -> float:
    """Messages/s of one closed `send_batch()` per partition of a relay batch, then awaited."""
    producer = AIOKafkaProducer(**producer_options(settings))
    await producer.start()
    try:
        await _create(settings, producer, messages[0])
        started = time.monotonic()
        for chunk in batches(messages, settings.relay_batch_size):
            builders: dict[tuple[str, int], list[BatchBuilder]] = {}
            for m in chunk:
                partitions = sorted(await producer.partitions_for(m.destination))
                partition = partitions[(murmur2(m.key) & 0x7FFFFFFF) % len(partitions)]
                batch = builders.get((m.destination, partition))
                if batch is None:
                    batch = builders[(m.destination, partition)] = [producer.create_batch()]
                headers = list(m.fields.items())
                record = {"timestamp": None, "key": m.key, "value": m.value, "headers": headers}
                if batch[-1].append(**record) is None:  # full: a new record batch
                    batch.append(producer.create_batch())
                    batch[-1].append(**record)
            futures = []
            for (topic, partition), batch in builders.items():
                for builder in batch:
                    builder.close()  # sent at once, not after the linger
                    futures.append(await producer.send_batch(builder, topic, partition=partition))
            await asyncio.gather(*futures)
        return len(messages) / (time.monotonic() - started)
    finally:
        await producer.stop()


async def _create(settings: Settings, producer: AIOKafkaProducer, first: Message) -> None:
    # Outside the clock: the topic is made (by the first of the two runs), then its metadata
    # fetched by a first send.
    await ensure_topic(settings.kafka_bootstrap_servers, first.destination)
    await producer.send_and_wait(first.destination, value=first.value, key=first.key)
