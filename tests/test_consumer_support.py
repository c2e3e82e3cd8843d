"""Helpers of the consumer tests: events framed as the relay frames them, and receipts read back.

The messages are built with the shared contract (schemas.framing.encode, Envelope.wire_fields),
exactly what the relay publishes, so these tests do not depend on the relay.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition
from prometheus_client import REGISTRY

from flowproof.schemas import framing
from flowproof.schemas.envelope import Envelope
from flowproof.schemas.registry import SchemaRegistry

REGISTRY_ = SchemaRegistry.load()


def order(i: int) -> dict[str, Any]:
    return {
        "order_id": f"o-{i}",
        "customer_id": f"c-{i % 7}",
        "currency": "EUR",
        "total_cents": 100 * i,
        "lines": [{"sku": f"SKU-{i}", "quantity": 1, "unit_price_cents": 100 * i}],
    }


@dataclass
class Message:
    """One event as it travels: envelope fields and framed Avro bytes."""

    envelope: Envelope
    value: bytes
    extra: dict[str, bytes] = field(default_factory=dict)  # fields to add or override
    drop: tuple[str, ...] = ()  # envelope fields to leave out
    key: bytes | None = None  # Kafka key; default the aggregateid

    @property
    def id(self) -> uuid.UUID:
        return self.envelope.id

    def fields(self) -> dict[str, bytes]:
        wire = {k: v for k, v in self.envelope.wire_fields().items() if k not in self.drop}
        return {**wire, **self.extra}

    def redis_fields(self) -> dict[str, bytes]:
        return {**self.fields(), "payload": self.value}

    def kafka_key(self) -> bytes:
        return self.key if self.key is not None else self.envelope.aggregateid.encode()


def event(
    i: int = 1,
    *,
    event_type: str = "orders.OrderPlaced",
    aggregatetype: str = "orders",
    version: int | None = None,
    payload: dict[str, Any] | None = None,
    created_at: dt.datetime | None = None,
    aggregates: int = 5,
) -> Message:
    """A valid event, written with `version` of its schema (default the newest)."""
    versions = REGISTRY_.versions(event_type)
    schema = versions[-1] if version is None else versions[version - 1]
    data = payload if payload is not None else order(i)
    envelope = Envelope(
        id=uuid.uuid4(),
        type=event_type,
        aggregatetype=aggregatetype,
        aggregateid=f"agg-{i % aggregates}",
        created_at=created_at or dt.datetime.now(dt.UTC),
    )
    return Message(envelope, framing.encode(schema, schema.validate(data)))


def canary(i: int, note: str = "", aggregatetype: str = "canary") -> Message:
    return event(
        i,
        event_type="flowproof.Canary",
        aggregatetype=aggregatetype,
        payload={"run_id": "r", "sequence": i, "total": 10, "note": note},
    )


def bad_messages(aggregatetype: str = "orders", *, big: int = 5000) -> dict[str, Message]:
    """One message of each invalid kind, by the reason a consumer must give."""
    good = event(1, aggregatetype=aggregatetype)
    paid_schema = REGISTRY_.latest("orders.OrderPaid")
    paid = framing.encode(
        paid_schema,
        paid_schema.validate(
            {"order_id": "o", "payment_id": "p", "amount_cents": 1, "method": "CARD"}
        ),
    )
    kinds = {
        "bad_magic": Message(_env(aggregatetype), b"\x01" + good.value[1:]),
        "unknown_schema": Message(_env(aggregatetype), b"\x00\x7f\xff\xff\xfe" + good.value[5:]),
        "corrupt_avro": Message(_env(aggregatetype), good.value[:-4]),
        "envelope": Message(_env(aggregatetype), good.value, drop=("id",)),
        "oversized": canary(3, note="x" * big, aggregatetype=aggregatetype),
        "type_mismatch": Message(_env(aggregatetype), paid),
        "misrouted": event(4, aggregatetype="elsewhere"),
    }
    kinds["bad_created_at"] = Message(
        _env(aggregatetype), good.value, extra={"created_at": b"yesterday"}
    )
    return kinds


def _env(aggregatetype: str) -> Envelope:
    return Envelope(
        id=uuid.uuid4(),
        type="orders.OrderPlaced",
        aggregatetype=aggregatetype,
        aggregateid="agg-bad",
        created_at=dt.datetime.now(dt.UTC),
    )


# Reasons by bad_messages() key (two envelope failures share one reason).
EXPECTED_REASON = {
    "bad_magic": "bad_magic",
    "unknown_schema": "unknown_schema",
    "corrupt_avro": "corrupt_avro",
    "envelope": "envelope",
    "bad_created_at": "envelope",
    "oversized": "oversized",
    "type_mismatch": "type_mismatch",
    "misrouted": "misrouted",
}


async def xadd_all(client: aioredis.Redis, stream: str, messages: Iterable[Message]) -> list[str]:
    ids = []
    for message in messages:
        entry_id = await client.xadd(stream, message.redis_fields())  # type: ignore[arg-type]
        ids.append(entry_id.decode())
    return ids


async def create_topics(admin: AIOKafkaAdminClient, *names: str, partitions: int = 3) -> None:
    await admin.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names]
    )


async def produce_all(bootstrap: str, topic: str, messages: Iterable[Message]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        batch = [
            await producer.send(
                topic,
                value=m.value,
                key=m.kafka_key(),
                headers=list(m.fields().items()),
            )
            for m in messages
        ]
        for sent in batch:
            await sent
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every message of `topic`, from the start to the current end, without a group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = [
                TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []
            ]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        found: list[Any] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                found += messages
        return found
    finally:
        await consumer.stop()


async def receipts(database_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch("SELECT * FROM flowproof_receipts ORDER BY receipt_id")
    finally:
        await conn.close()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def group_name() -> str:
    return f"g-{uuid.uuid4().hex[:8]}"
