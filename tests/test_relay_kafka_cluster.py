"""The relay on a replicated Kafka cluster (the session's 3 brokers, tests/kafka_cluster.py) when
fewer replicas are in sync than the topic's min.insync.replicas: the brokers refuse its produce
requests (NotEnoughReplicas), the relay counts it, marks nothing published and keeps trying; once
the replica is back in sync everything is published, once, in order per aggregate."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import REGISTRY

from flowproof.core.config import Settings
from flowproof.publisher.relay import Relay
from tests.kafka_cluster import PrivateKafkaCluster, describe
from tests.readback import insert_canaries, read_topic, unpublished, wait_until


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _create_topic(cluster: PrivateKafkaCluster, topic: str, min_insync: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, 3, 3, topic_configs={"min.insync.replicas": str(min_insync)})]
        )
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def _relay_running(relay: Relay) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(relay.run(), name="relay under test")
    try:
        yield task
    finally:
        relay.stop()
        await asyncio.wait_for(task, 60)


async def test_relay_retries_and_counts_while_min_insync_replicas_is_not_met(
    settings: Settings, database_url: str, kafka_cluster: PrivateKafkaCluster
) -> None:
    settings = settings.model_copy(
        update={
            "kafka_bootstrap_servers": kafka_cluster.bootstrap,
            "sinks": ("kafka",),
            "relay_sink_timeout_seconds": 3.0,
            "relay_retry_base_seconds": 0.1,
            "relay_retry_cap_seconds": 0.5,
        }
    )
    topic = f"{settings.topic_prefix}canary"
    # Every replica must be in sync: one broker down is enough to refuse writes.
    await _create_topic(kafka_cluster, topic, min_insync=3)
    await kafka_cluster.wait_in_sync(topic)
    conn = await asyncpg.connect(database_url)
    down = kafka_cluster.node(3)
    try:
        await insert_canaries(conn, ["a", "b", "c"], 40)
        await Relay(settings).run_until_idle()
        assert await unpublished(conn, "kafka") == 0

        await asyncio.to_thread(down.kill)

        async def out_of_sync() -> bool:
            states = await kafka_cluster.partitions(topic)
            return all(3 not in s.isr and s.leader not in (-1, 3) for s in states)

        await wait_until(out_of_sync, 60, every=0.5)
        await insert_canaries(conn, ["a", "b", "c"], 20)
        failures = metric("flowproof_relay_publish_failures_total", sink="kafka")
        refused = metric(
            "flowproof_relay_kafka_produce_retries_total", error="NotEnoughReplicasError"
        )
        relay = Relay(settings)
        async with _relay_running(relay):
            await wait_until(
                lambda: (
                    metric("flowproof_relay_publish_failures_total", sink="kafka") > failures
                    and metric(
                        "flowproof_relay_kafka_produce_retries_total",
                        error="NotEnoughReplicasError",
                    )
                    > refused
                ),
                30,
                every=0.2,
            )
            # Refused writes are never marked: every new row is still waiting.
            assert await unpublished(conn, "kafka") == 60
            await asyncio.to_thread(down.start)
            states = await kafka_cluster.wait_in_sync(topic)

            async def drained() -> bool:
                return await unpublished(conn, "kafka") == 0

            await wait_until(drained, 60, every=0.2)
        assert relay.stats["kafka"].failures > 0, describe(states)
    finally:
        if not down.running:  # the session's cluster stays whole whatever happened
            await asyncio.to_thread(down.start)
        await conn.close()

    rows = await asyncpg_rows(database_url)
    messages = await read_topic(settings, topic)
    received = {m.event_id for m in messages}
    assert received == set(rows), "an event is missing from the topic"
    # In order per aggregate: the first delivery of each event follows its aggregate's seq.
    first: dict[str, str] = {}
    for message in messages:
        first.setdefault(message.event_id, message.position)
    by_aggregate: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for event_id, (aggregate, seq) in rows.items():
        offset = int(first[event_id].split(":")[1])  # one partition per aggregate
        by_aggregate[aggregate].append((seq, offset))
    for aggregate, placed in by_aggregate.items():
        offsets = [offset for _, offset in sorted(placed)]
        assert offsets == sorted(offsets), f"{aggregate} reordered"


async def asyncpg_rows(database_url: str) -> dict[str, tuple[str, int]]:
    """Event id -> (aggregate id, seq) of every outbox row."""
    conn = await asyncpg.connect(database_url)
    try:
        records = await conn.fetch("SELECT id, aggregateid, seq FROM flowproof_outbox")
    finally:
        await conn.close()
    return {str(r["id"]): (r["aggregateid"], r["seq"]) for r in records}
