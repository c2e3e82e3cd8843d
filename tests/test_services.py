"""Round trips against the real services: the ground every other test stands on."""

from __future__ import annotations

import asyncio

import asyncpg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.conftest import Services
from tests.private_services import kraft_cluster_id


async def test_postgres_round_trip(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TABLE t (id int PRIMARY KEY, body jsonb NOT NULL)")
        async with conn.transaction():
            await conn.execute("INSERT INTO t VALUES (1, '{\"a\": 1}')")
        assert await conn.fetchval("SELECT body->>'a' FROM t WHERE id = 1") == "1"
        assert await conn.fetchval("SELECT current_database()") == database_url.rsplit("/", 1)[1]
    finally:
        await conn.close()


async def test_each_test_gets_a_fresh_database(database_url: str, services: Services) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        # The table made by the previous test is not here: its database was its own.
        assert await conn.fetchval("SELECT to_regclass('t')") is None
        assert await conn.fetchval("SELECT to_regclass('flowproof_schema_migrations')")
    finally:
        await conn.close()


async def test_redis_stream_group_round_trip(
    redis_client: aioredis.Redis, name_prefix: str
) -> None:
    stream = f"{name_prefix}orders"
    await redis_client.xgroup_create(stream, "g", id="0", mkstream=True)
    ids = [await redis_client.xadd(stream, {"n": str(i)}) for i in range(3)]
    read = await redis_client.xreadgroup("g", "c1", {stream: ">"}, count=10, block=1000)
    entries = read[0][1]
    assert [entry_id for entry_id, _ in entries] == ids
    assert [fields[b"n"] for _, fields in entries] == [b"0", b"1", b"2"]
    pending = await redis_client.xpending(stream, "g")
    assert pending["pending"] == 3
    assert await redis_client.xack(stream, "g", *ids) == 3
    assert (await redis_client.xpending(stream, "g"))["pending"] == 0


async def test_kafka_produce_consume_commit(
    services: Services, kafka_admin: AIOKafkaAdminClient, name_prefix: str
) -> None:
    topic = f"{name_prefix}orders"
    await kafka_admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    producer = AIOKafkaProducer(
        bootstrap_servers=services.kafka_bootstrap_servers, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for i in range(30):
            await producer.send(topic, key=f"agg-{i % 5}".encode(), value=str(i).encode())
        await producer.flush()
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=services.kafka_bootstrap_servers,
        group_id=f"{name_prefix}group",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        seen: list[tuple[bytes, bytes]] = []
        async with asyncio.timeout(30):
            while len(seen) < 30:
                batch = await consumer.getmany(timeout_ms=500)
                seen += [(m.key, m.value) for msgs in batch.values() for m in msgs]
        await consumer.commit()
        partitions = [TopicPartition(topic, p) for p in range(3)]
        committed = {tp.partition: await consumer.committed(tp) for tp in partitions}
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    assert sorted(int(v) for _, v in seen) == list(range(30))
    # Per key, order is kept: the key decides the partition.
    for key in {k for k, _ in seen}:
        values = [int(v) for k, v in seen if k == key]
        assert values == sorted(values)
    assert committed == {tp.partition: ends[tp] for tp in partitions}
    assert sum(committed.values()) == 30


def test_private_kafka_cluster_ids_never_look_like_an_option() -> None:
    # One id in 64 would start with "-" and fail `kafka-storage format -t ID` (seen in a run).
    ids = [kraft_cluster_id() for _ in range(2000)]
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(i) == 22 for i in ids)
    assert len(set(ids)) == len(ids)
