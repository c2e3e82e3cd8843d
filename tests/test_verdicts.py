"""Lost means lost, late means late: each defect staged for real on the pipeline (the relay and
the consumers of flowproof, real PostgreSQL, Redis and Kafka) is caught by the check meant for it
and by no other, with evidence naming the sink, group, stream or topic and position.

The slow variants (a consumer frozen or stopped for minutes) are in tests/faults.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic, RecordsToDelete
from typer.testing import CliRunner, Result

from flowproof.cli import app
from flowproof.consumers.run import consume
from flowproof.core.config import Settings
from flowproof.publisher.relay import Relay
from flowproof.schemas import framing
from flowproof.schemas.registry import load_registry
from flowproof.verifier.commands import check_once
from flowproof.verifier.model import (
    FLOW_DUPLICATES,
    FLOW_LOST,
    FLOW_ORDER,
    LAG_OUTBOX,
    LATENCY_E2E,
    SCHEMA_CONFORMANCE,
    Report,
)
from tests.private_services import PrivateRedis
from tests.readback import (
    Delivered,
    insert_canaries,
    read_stream,
    read_topic,
    wait_until,
)
from tests.test_verify_support import assert_only, closed_port, evidence, tuned

AGGREGATETYPE = "canary"
REGISTRY = load_registry(None)
GROUP = "flowproof"


@pytest.fixture
def judged(settings: Settings) -> Settings:
    """Every event judged at once (no grace periods), in partitions and streams of its own."""
    return tuned(
        settings,
        flow_lost_grace_seconds=0.0,
        flow_duplicates_grace_seconds=0.0,
        flow_order_grace_seconds=0.0,
        relay_retry_base_seconds=0.05,
        relay_retry_cap_seconds=0.2,
    )


def stream_of(settings: Settings) -> str:
    return f"{settings.stream_prefix}{AGGREGATETYPE}"


def topic_of(settings: Settings) -> str:
    return f"{settings.topic_prefix}{AGGREGATETYPE}"


async def emit(conn: asyncpg.Connection, per_aggregate: int, aggregates: int = 4) -> None:
    await insert_canaries(conn, [f"a{i}" for i in range(aggregates)], per_aggregate)


async def relay(settings: Settings) -> Relay:
    worker = Relay(settings)
    await worker.run_until_idle()
    return worker


async def consume_all(settings: Settings) -> None:
    for sink in settings.sinks:
        await consume(settings, sink=sink, drain=True)


async def verdict(settings: Settings, failed: Sequence[str]) -> Report:
    report = await check_once(settings)
    assert_only(report, failed)
    return report


def lost_of(report: Report, sink: str) -> dict[str, Any]:
    [item] = evidence(report, FLOW_LOST, sink=sink, group=GROUP)
    return item


async def test_an_entry_deleted_before_its_group_read_it_is_lost_in_redis_only(
    judged: Settings, conn: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    await emit(conn, 5)
    await relay(judged)
    entries = await read_stream(redis_client, stream_of(judged))
    gone = entries[7]
    await redis_client.xdel(stream_of(judged), gone.position)
    # Nobody read the stream yet: the entry is gone, so the event is lost already, not "behind".
    before = await verdict(judged, [FLOW_LOST])
    await consume_all(judged)
    after = await verdict(judged, [FLOW_LOST])
    for report in (before, after):
        redis = lost_of(report, "redis")
        assert (redis["ok"], redis["lost"], redis["examples"]) == (False, 1, [gone.event_id])
        assert f"stream {stream_of(judged)}: " in redis["text"]
        assert f"positions {gone.position}" in redis["text"]
        assert lost_of(report, "kafka")["lost"] == 0
    assert "1 passed by the group without a receipt" in lost_of(after, "redis")["text"]


async def test_entries_trimmed_before_they_were_read_are_lost_in_redis_only(
    judged: Settings, conn: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    await emit(conn, 5)
    await relay(judged)
    trimmed = (await read_stream(redis_client, stream_of(judged)))[:12]
    await redis_client.xtrim(stream_of(judged), maxlen=8, approximate=False)
    report = await verdict(judged, [FLOW_LOST])
    redis = lost_of(report, "redis")
    assert redis["lost"] == 12
    assert "12 no longer in the sink" in redis["text"]
    assert set(redis["examples"]) <= {d.event_id for d in trimmed}
    await consume_all(judged)
    report = await verdict(judged, [FLOW_LOST])
    assert (lost_of(report, "redis")["lost"], lost_of(report, "kafka")["lost"]) == (12, 0)


async def test_kafka_records_deleted_before_they_were_read_are_lost_in_kafka_only(
    judged: Settings, conn: asyncpg.Connection, kafka_admin: AIOKafkaAdminClient
) -> None:
    topic = topic_of(judged)
    await kafka_admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    await emit(conn, 5)
    await relay(judged)
    deleted = (await read_topic(judged, topic))[:6]
    await kafka_admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(before_offset=6)})
    await consume_all(judged)
    report = await verdict(judged, [FLOW_LOST])
    kafka = lost_of(report, "kafka")
    assert (kafka["lost"], lost_of(report, "redis")["lost"]) == (6, 0)
    assert f"topic {topic} partition 0: 6 no longer in the sink" in kafka["text"]
    assert set(kafka["examples"]) <= {d.event_id for d in deleted}


async def test_writes_redis_acknowledged_then_lost_in_a_restart_are_lost_in_redis_only(
    judged: Settings, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    with PrivateRedis(tmp_path / "redis") as server:
        private = tuned(judged, redis_url=server.url)
        await emit(conn, 2)
        await relay(private)
        await consume_all(private)
        client = aioredis.Redis.from_url(server.url)
        try:
            # From here on Redis acknowledges writes it will not have after a restart.
            await client.config_set("appendonly", "no")
            await emit(conn, 3)
            await relay(private)
            server.kill()
            server.start()
            await consume_all(private)
        finally:
            await client.aclose()
        report = await verdict(private, [FLOW_LOST])
        redis = lost_of(report, "redis")
        assert (redis["ok"], redis["lost"], redis["judged"]) == (False, 12, 20)
        assert lost_of(report, "kafka")["lost"] == 0


async def test_entries_a_dead_consumer_holds_unacknowledged_are_late_not_lost(
    judged: Settings, conn: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    await emit(conn, 5)
    await relay(judged)
    await consume(judged, sink="kafka", drain=True)
    # What a consumer killed in the middle of a batch leaves: entries read, never acknowledged.
    await redis_client.xgroup_create(stream_of(judged), GROUP, id="0")
    await redis_client.xreadgroup(GROUP, "killed-consumer", {stream_of(judged): ">"}, count=8)
    slow = tuned(judged, latency_e2e_threshold_seconds=0.5, lag_redis_grace_seconds=0.5)
    await asyncio.sleep(1.0)
    report = await verdict(slow, [LATENCY_E2E, "lag.redis"])
    redis = lost_of(report, "redis")
    assert (redis["ok"], redis["lost"], redis["late"]) == (True, 0, 20)
    [latency] = evidence(report, LATENCY_E2E, sink="redis", group=GROUP)
    assert latency["late"] == 20 and latency["oldest_late_age"] > 1.0
    # Another member takes them over: every event arrives, and nothing was lost at any time.
    await consume(judged, sink="redis", drain=True, claim_idle_ms=0)
    await verdict(judged, [])


async def test_a_stopped_relay_fails_the_outbox_lag_only(
    judged: Settings, conn: asyncpg.Connection
) -> None:
    await emit(conn, 5)
    await relay(judged)
    await consume_all(judged)
    await emit(conn, 3)  # the relay is down from here on
    await asyncio.sleep(1.0)
    report = await verdict(tuned(judged, lag_outbox_grace_seconds=0.5), [LAG_OUTBOX])
    for sink in ("redis", "kafka"):
        assert (lost_of(report, sink)["lost"], lost_of(report, sink)["late"]) == (0, 0)


async def test_an_entry_added_twice_is_a_duplicate_only(
    judged: Settings, conn: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    await emit(conn, 5)
    await relay(judged)
    twice = (await read_stream(redis_client, stream_of(judged)))[-1]
    await redis_client.xadd(stream_of(judged), _fields(twice))  # type: ignore[arg-type]
    await consume_all(judged)
    report = await verdict(judged, [FLOW_DUPLICATES])
    [redis] = evidence(report, FLOW_DUPLICATES, sink="redis", group=GROUP)
    assert (redis["duplicated"], redis["published_twice"]) == (1, 1)
    assert twice.event_id in redis["text"]


async def test_two_events_of_an_aggregate_swapped_in_the_stream_are_out_of_order_only(
    judged: Settings, conn: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    await emit(conn, 5, aggregates=1)
    await relay(judged)
    entries = await read_stream(redis_client, stream_of(judged))
    first, second = entries[-2], entries[-1]
    # The stream holds the aggregate's last event before the one before it (a reordering sink).
    await redis_client.xdel(stream_of(judged), first.position, second.position)
    await redis_client.xadd(stream_of(judged), _fields(second))  # type: ignore[arg-type]
    await redis_client.xadd(stream_of(judged), _fields(first))  # type: ignore[arg-type]
    await consume_all(judged)
    report = await verdict(judged, [FLOW_ORDER])
    [redis] = evidence(report, FLOW_ORDER, sink="redis", group=GROUP)
    assert redis["out_of_order"] == 1
    assert second.event_id in redis["text"]
    assert evidence(report, FLOW_ORDER, sink="kafka", group=GROUP)[0]["out_of_order"] == 0


async def test_a_copy_in_another_stream_does_not_count_as_the_delivery(
    judged: Settings, conn: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    await emit(conn, 5)
    await relay(judged)
    original = (await read_stream(redis_client, stream_of(judged)))[3]
    elsewhere = f"{judged.stream_prefix}elsewhere"
    await redis_client.xadd(elsewhere, _fields(original))  # type: ignore[arg-type]
    await consume_all(judged)
    # The consumers flag the copy as misrouted (invalid, dead-lettered): conformance only.
    report = await verdict(judged, [SCHEMA_CONFORMANCE])
    [receipts] = evidence(report, SCHEMA_CONFORMANCE, sink="redis", group=GROUP)
    assert receipts["invalid"] == {"misrouted": 1}
    # Without the original, the copy elsewhere does not hide the loss.
    conn_receipts = "DELETE FROM flowproof_receipts WHERE event_id = $1 AND source = $2"
    await conn.execute(conn_receipts, _uuid(original), stream_of(judged))
    await redis_client.xdel(stream_of(judged), original.position)
    report = await verdict(judged, [FLOW_LOST, SCHEMA_CONFORMANCE])
    assert lost_of(report, "redis")["examples"] == [original.event_id]


async def test_an_aggregate_moved_by_added_partitions_is_judged_across_partitions(
    judged: Settings, conn: asyncpg.Connection, kafka_admin: AIOKafkaAdminClient
) -> None:
    topic = topic_of(judged)
    await kafka_admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    await emit(conn, 3, aggregates=8)
    await relay(judged)
    await consume_all(judged)
    await kafka_admin.create_partitions({topic: NewPartitions(total_count=6)})
    await _partitions_known(judged, topic, 6)
    await emit(conn, 3, aggregates=8)
    await relay(judged)
    await consume_all(judged)
    report = await verdict(judged, [])
    [kafka] = evidence(report, FLOW_ORDER, sink="kafka", group=GROUP)
    assert kafka["moved"] > 0, kafka
    assert "partition count changed" in kafka["text"]


async def test_a_one_sink_relay_never_prunes_what_the_other_sink_still_owes(
    judged: Settings, conn: asyncpg.Connection
) -> None:
    await emit(conn, 5)
    both = await relay(judged)  # registers both sinks with the outbox
    assert sum(s.published for s in both.stats.values()) == 40
    await emit(conn, 5)
    # Each half in a partition of its own, past the retention of a day (by created_at).
    await conn.execute(
        "UPDATE flowproof_outbox SET created_at = created_at - make_interval(days => "
        "CASE WHEN seq <= 20 THEN 3 ELSE 2 END)"
    )
    redis_only = Relay(tuned(judged, sinks=("redis",), relay_retention_seconds=86400.0))
    await redis_only.run_until_idle()
    await redis_only.prune_once()
    owed = await conn.fetchval(
        "SELECT count(*) FROM flowproof_outbox_progress WHERE kafka_published_at IS NULL"
    )
    assert owed == 20
    assert await conn.fetchval("SELECT count(*) FROM flowproof_outbox") == 20
    await relay(judged)
    await redis_only.prune_once()
    assert await conn.fetchval("SELECT count(*) FROM flowproof_outbox") == 0


async def test_a_write_refused_in_the_middle_of_a_batch_reorders_nothing(
    judged: Settings, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    with PrivateRedis(tmp_path / "redis") as server:
        private = tuned(judged, redis_url=server.url, sinks=("redis",), relay_batch_size=2000)
        client = aioredis.Redis.from_url(server.url)
        try:
            await emit(conn, 250, aggregates=8)
            # Redis refuses writes once its memory is full: in the middle of the batch.
            used = int((await client.info("memory"))["used_memory"])
            await client.config_set("maxmemory", used + 200_000)
            await client.config_set("maxmemory-policy", "noeviction")
            worker = Relay(private)
            task = asyncio.ensure_future(worker.run_until_idle())
            await wait_until(lambda: worker.stats["redis"].failures > 0, 30.0)
            await client.config_set("maxmemory", 0)
            await task
            entries = await read_stream(client, stream_of(private))
        finally:
            await client.aclose()
    assert worker.stats["redis"].failures > 0
    _assert_in_order(entries)
    assert len({e.event_id for e in entries}) == 2000


def _assert_in_order(entries: Sequence[Delivered]) -> None:
    """The first copy of each event comes after the first copy of every earlier event of its
    aggregate (canaries carry their sequence number in the entry id order they were emitted)."""
    seen: set[str] = set()
    last: dict[str, int] = {}
    for entry in entries:
        if entry.event_id in seen:
            continue
        seen.add(entry.event_id)
        aggregate = entry.fields["aggregateid"]
        sequence = _canary_sequence(entry)
        assert sequence > last.get(aggregate, 0), (aggregate, sequence, last.get(aggregate))
        last[aggregate] = sequence


def _canary_sequence(entry: Delivered) -> int:
    _, datum = framing.decode(REGISTRY, entry.value)
    return int(datum["sequence"])


def _fields(entry: Delivered) -> dict[str, bytes | str]:
    return {**entry.fields, "payload": entry.value}


def _uuid(entry: Delivered) -> uuid.UUID:
    return uuid.UUID(entry.event_id)


async def _partitions_known(settings: Settings, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:

        async def known() -> bool:
            await producer.client.force_metadata_update()
            return len(await producer.partitions_for(topic)) == count

        await wait_until(known, 30.0)
    finally:
        await producer.stop()


async def test_a_tombstone_and_an_unwritable_dead_letter_never_stop_a_consumer(
    judged: Settings, conn: asyncpg.Connection, kafka_admin: AIOKafkaAdminClient
) -> None:
    topic = topic_of(judged)
    dlq = f"{topic}.dlq"
    await kafka_admin.create_topics(
        [
            NewTopic(topic, num_partitions=1, replication_factor=1),
            # Takes no dead letter at all, not even one without the original message.
            NewTopic(dlq, 1, 1, topic_configs={"max.message.bytes": "64"}),
        ]
    )
    kafka = tuned(judged, sinks=("kafka",))
    await emit(conn, 2)
    await relay(kafka)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.kafka_bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value=None, key=b"tombstone")  # a tombstone
        # Neither key nor value: aiokafka's send refuses it, other clients write it.
        batch = producer.create_batch()
        batch.append(key=None, value=None, timestamp=None)
        await (await producer.send_batch(batch, topic, partition=0))
    finally:
        await producer.stop()
    await emit(conn, 2)
    await relay(kafka)
    stats = await consume(kafka, sink="kafka", drain=True)
    assert (stats.received, stats.invalid) == (18, 2)
    rows = await conn.fetch(
        """SELECT valid, reason, dead_letter_error FROM flowproof_receipts
           WHERE sink = 'kafka' AND NOT valid ORDER BY receipt_id"""
    )
    assert [r["reason"] for r in rows] == ["envelope", "envelope"]
    assert all(f"{dlq} refused even the dead letter" in r["dead_letter_error"] for r in rows)
    report = await verdict(kafka, [SCHEMA_CONFORMANCE])
    [unwritable] = evidence(report, SCHEMA_CONFORMANCE, sink="kafka", unwritable=2)
    assert "2 dead letters could not be written" in unwritable["text"]
    assert lost_of(report, "kafka")["lost"] == 0


async def test_a_dead_letter_stream_redis_refuses_never_stops_a_consumer(
    judged: Settings, conn: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    redis = tuned(judged, sinks=("redis",))
    stream = stream_of(redis)
    await redis_client.set(f"{stream}.dlq", "not a stream")  # every XADD to it: WRONGTYPE
    await emit(conn, 2)
    await relay(redis)
    await redis_client.xadd(stream, {"id": "not-a-uuid", "payload": b"\x07junk"})
    await emit(conn, 2)
    await relay(redis)
    stats = await consume(redis, sink="redis", drain=True)
    assert (stats.received, stats.invalid) == (17, 1)
    error = await conn.fetchval(
        "SELECT dead_letter_error FROM flowproof_receipts WHERE NOT valid AND sink = 'redis'"
    )
    assert "WRONGTYPE" in error
    report = await verdict(redis, [SCHEMA_CONFORMANCE])
    assert evidence(report, SCHEMA_CONFORMANCE, sink="redis", unwritable=1)


async def test_three_clean_runs_pass_every_check_in_every_evaluation(
    settings: Settings, conn: asyncpg.Connection
) -> None:
    # Latency is the bench's to measure; on a busy test machine a consumer joining its group
    # takes seconds, which is not what this test is about.
    live = tuned(
        settings,
        flow_lost_grace_seconds=0.5,
        relay_poll_interval_seconds=0.05,
        latency_e2e_threshold_seconds=60.0,
    )
    stop = asyncio.Event()
    worker = Relay(live)
    tasks = [
        asyncio.create_task(worker.run(), name="test.relay"),
        *(
            asyncio.create_task(consume(live, sink=sink, stop=stop, name=f"{sink}-{n}"))
            for sink in live.sinks
            for n in range(2)
        ),
    ]
    evaluations = 0
    try:
        for run in range(3):
            for _ in range(4):
                await emit(conn, 25, aggregates=8)
                await asyncio.sleep(0.3)
                report = await check_once(live)
                evaluations += 1
                assert_only(report, [])  # while events flow: nothing lost, late or reordered
            emitted = 800 * (run + 1)
            await wait_until(partial(_all_received, conn, emitted), 60.0)
            report = await check_once(tuned(live, flow_lost_grace_seconds=0.0))  # judge all
            assert_only(report, [])
            for sink in live.sinks:
                found = lost_of(report, sink)
                assert (found["judged"], found["lost"], found["late"]) == (emitted, 0, 0)
    finally:
        stop.set()
        worker.stop()
        await asyncio.gather(*tasks)
    assert evaluations == 12


async def _all_received(conn: asyncpg.Connection, per_sink: int) -> bool:
    count = await conn.fetchval(
        "SELECT count(DISTINCT (event_id, sink)) FROM flowproof_receipts WHERE valid"
    )
    return bool(count == 2 * per_sink)


async def test_a_backlog_created_before_the_window_and_published_in_it_is_judged(
    judged: Settings, conn: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    # Written two hours ago while the relay was down; the window is the last hour.
    await emit(conn, 5)
    await conn.execute("UPDATE flowproof_outbox SET created_at = now() - interval '2 hours'")
    await relay(judged)
    gone = (await read_stream(redis_client, stream_of(judged)))[4]
    await redis_client.xdel(stream_of(judged), gone.position)
    await consume_all(judged)
    report = await verdict(tuned(judged, latency_e2e_threshold_seconds=10_000.0), [FLOW_LOST])
    redis = lost_of(report, "redis")
    assert (redis["judged"], redis["lost"], redis["examples"]) == (20, 1, [gone.event_id])
    assert lost_of(report, "kafka")["judged"] == 20


async def test_db_sinks_lists_and_removes_the_sinks_pruning_waits_for(
    judged: Settings, settings_env: dict[str, str], conn: asyncpg.Connection
) -> None:
    await relay(judged)  # registers redis and kafka

    def flowproof_db_sinks(*args: str) -> Result:
        return CliRunner().invoke(app, ["db", "sinks", *args], env=settings_env)

    listed = await asyncio.to_thread(flowproof_db_sinks)
    assert (listed.exit_code, listed.output) == (0, "sinks of the outbox: kafka, redis\n")
    unknown = await asyncio.to_thread(flowproof_db_sinks, "--remove", "nats")
    assert unknown.exit_code == 2
    assert "'nats' is not a sink of flowproof_outbox" in unknown.output
    removed = await asyncio.to_thread(flowproof_db_sinks, "--remove", "kafka")
    assert removed.exit_code == 0, removed.output
    assert await conn.fetchval("SELECT array_agg(sink) FROM flowproof_outbox_sinks") == ["redis"]


HEADER = ("table", "partition", "from (UTC)", "to (UTC)", "rows", "state")


async def test_db_partitions_says_what_the_next_drop_does_with_each(
    judged: Settings, settings_env: dict[str, str], conn: asyncpg.Connection
) -> None:
    def states() -> dict[str, tuple[str, str]]:
        """`flowproof db partitions`: (rows, state) by partition."""
        result = CliRunner().invoke(app, ["db", "partitions"], env=settings_env)
        assert result.exit_code == 0, result.output
        header, *lines = result.output.splitlines()
        assert header.split() == [word for title in HEADER for word in title.split()]
        found = {}
        for line in lines:
            table, partition, *_ = line.split()
            assert table in ("outbox", "deliveries", "receipts"), line
            cells = [cell.strip() for cell in line.split("  ") if cell.strip()]
            found[partition] = (cells[-2], cells[-1])
        return found

    # Written three days ago (by the table's owner): no partition yet, so in the default one.
    await emit(conn, 2)
    await conn.execute("UPDATE flowproof_outbox SET created_at = now() - interval '3 days'")
    written = await conn.fetchval("SELECT count(*) FROM flowproof_outbox")
    listed = await asyncio.to_thread(states)
    assert listed["flowproof_outbox_default"] == (str(written), "default")
    day = (dt.datetime.now(dt.UTC) - dt.timedelta(days=3)).strftime("%Y%m%d")
    name = f"flowproof_outbox_p{day}t000000"

    relay_both = Relay(tuned(judged, relay_retention_seconds=86400.0))
    await relay_both.preflight()  # registers both sinks
    assert await relay_both.prune_once() == 0  # their day gets its partition; nobody passed them
    listed = await asyncio.to_thread(states)
    assert listed[name][1] == "kept: not passed by every sink"
    assert listed["flowproof_outbox_default"] == ("0", "default")
    await relay_both.run_until_idle()
    assert (await asyncio.to_thread(states))[name][1] == "due"
    assert await relay_both.prune_once() == written
    listed = await asyncio.to_thread(states)
    assert name not in listed
    assert {state for _, state in listed.values()} == {"live", "default"}, listed


async def test_a_sink_that_cannot_be_read_leaves_loss_unjudged_not_passed(
    judged: Settings, conn: asyncpg.Connection
) -> None:
    await emit(conn, 5)
    await relay(judged)
    await consume(judged, sink="redis", drain=True)
    # Kafka's events have no receipt yet and Kafka cannot be reached: nobody can tell whether
    # they are lost, so flow.lost says so for Kafka; what PostgreSQL alone decides is judged.
    down = tuned(judged, kafka_bootstrap_servers=f"127.0.0.1:{closed_port()}")
    report = await verdict(down, ["components.up", FLOW_LOST, "lag.kafka", SCHEMA_CONFORMANCE])
    [kafka] = evidence(report, FLOW_LOST, sink="kafka", group=GROUP, ok=False)
    assert "not evaluated: 20 events without a receipt" in kafka["text"]
    assert lost_of(report, "redis")["lost"] == 0
    assert not report.check(FLOW_LOST).evaluated
    assert all(f["ok"] for f in evidence(report, FLOW_DUPLICATES))
