"""Each defect the verifier claims to catch, built for real in PostgreSQL, Redis and Kafka, is
caught by the right check while every other check passes; a clean pipeline passes all nine."""

from __future__ import annotations

import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from flowproof.core.config import Settings
from flowproof.core.sampling import is_sampled
from flowproof.verifier.model import (
    COMPONENTS_UP,
    FLOW_DUPLICATES,
    FLOW_LOST,
    FLOW_ORDER,
    LAG_KAFKA,
    LAG_OUTBOX,
    LAG_REDIS,
    LATENCY_E2E,
    SCHEMA_CONFORMANCE,
)
from tests.test_verify_support import (
    GROUP,
    assert_only,
    clean_pipeline,
    closed_port,
    evaluate,
    evidence,
    insert_receipt,
    produce,
    published_event,
    record_delivery,
    set_aside,
    tuned,
)


async def test_a_clean_pipeline_passes_every_check(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> None:
    pipeline = await clean_pipeline(settings, redis_client, kafka_admin)
    report = await evaluate(settings)
    assert_only(report, [])
    assert report.passed
    # Evidence, not just a verdict: every event was judged in both sinks.
    for sink in ("redis", "kafka"):
        [lost] = evidence(report, FLOW_LOST, sink=sink, group=GROUP)
        assert lost["judged"] == len(pipeline.events)
        assert lost["lost"] == 0
    [redis_lane] = evidence(report, LAG_REDIS, source=pipeline.stream)
    assert redis_lane["behind"] == 0
    assert redis_lane["pending"] == 0


async def test_an_event_marked_published_that_never_reached_redis_is_lost(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> None:
    pipeline = await clean_pipeline(settings, redis_client, kafka_admin)
    gone = pipeline.event(3)
    await pipeline.execute(
        "DELETE FROM flowproof_receipts WHERE event_id = $1 AND sink = 'redis'", gone.id
    )
    report = await evaluate(settings)
    assert_only(report, [FLOW_LOST])
    [redis] = evidence(report, FLOW_LOST, sink="redis")
    assert (redis["ok"], redis["lost"]) == (False, 1)
    assert str(gone.id) in redis["text"]
    [kafka] = evidence(report, FLOW_LOST, sink="kafka")
    assert (kafka["ok"], kafka["lost"]) == (True, 0)
    assert "FAIL redis group flowproof: 1 lost" in report.check(FLOW_LOST).detail


async def test_an_event_whose_offset_is_no_longer_in_the_partition_is_lost(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> None:
    pipeline = await clean_pipeline(settings, redis_client, kafka_admin)
    # The relay recorded one more event at an offset the partition does not have (truncated
    # after an unclean leader election, say) and no consumer ever received it.
    extra = await published_event(pipeline, "agg-9", age_seconds=120, owed=("redis",))
    await record_delivery(pipeline, extra, sink="kafka", position="0:40")
    report = await evaluate(settings)
    assert_only(report, [FLOW_LOST, LAG_OUTBOX])  # it also never went to Redis: still pending
    [kafka] = evidence(report, FLOW_LOST, sink="kafka")
    assert (kafka["ok"], kafka["lost"]) == (False, 1)
    assert str(extra.id) in kafka["text"]
    assert f"topic {pipeline.topic} partition 0: 1 no longer in the sink" in kafka["text"]
    assert "positions 0:40" in kafka["text"]
    [redis] = evidence(report, FLOW_LOST, sink="redis")
    assert redis["ok"]
    [pending] = evidence(report, LAG_OUTBOX, sink="redis", ok=False)
    assert pending["overdue"] == 1


async def test_a_lost_event_within_the_grace_period_is_not_counted_yet(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> None:
    pipeline = await clean_pipeline(settings, redis_client, kafka_admin)
    await pipeline.execute(
        "DELETE FROM flowproof_receipts WHERE event_id = $1", pipeline.event(2).id
    )
    patient = tuned(settings, flow_lost_grace_seconds=600.0)
    assert_only(await evaluate(patient), [])
    assert_only(await evaluate(settings), [FLOW_LOST])


async def test_a_message_published_twice_is_a_duplicate(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> None:
    pipeline = await clean_pipeline(settings, redis_client, kafka_admin)
    twice = pipeline.event(4)
    # The same event again at a later offset: the relay published it twice.
    await insert_receipt(pipeline, twice, sink="kafka", source=pipeline.topic, position="0:99")
    report = await evaluate(settings)
    assert_only(report, [FLOW_DUPLICATES])
    [kafka] = evidence(report, FLOW_DUPLICATES, sink="kafka")
    assert (kafka["ok"], kafka["duplicated"], kafka["published_twice"]) == (False, 1, 1)
    assert str(twice.id) in kafka["text"]
    # A later position of an already-received event is not a reordering.
    assert evidence(report, FLOW_ORDER, sink="kafka")[0]["out_of_order"] == 0


async def test_a_redelivery_counts_as_a_duplicate_but_not_as_reordering(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> None:
    pipeline = await clean_pipeline(settings, redis_client, kafka_admin)
    first = pipeline.event(1)
    await insert_receipt(
        pipeline,
        first,
        sink="redis",
        source=pipeline.stream,
        position=first.redis_entry,
        delivery_count=2,
    )
    report = await evaluate(settings)
    assert_only(report, [FLOW_DUPLICATES])
    [redis] = evidence(report, FLOW_DUPLICATES, sink="redis")
    assert (redis["duplicated"], redis["published_twice"]) == (1, 0)
    assert "1 redelivered" in redis["text"]


async def test_two_events_of_one_aggregate_swapped_are_out_of_order(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> None:
    pipeline = await clean_pipeline(settings, redis_client, kafka_admin, events=6, aggregates=2)
    # seq 1 and 3 belong to agg-1: their Redis entries arrive the other way round.
    one, three = pipeline.event(1), pipeline.event(3)
    assert one.aggregateid == three.aggregateid
    await pipeline.execute(
        """UPDATE flowproof_receipts SET position = CASE event_id WHEN $1 THEN $4 ELSE $3 END
           WHERE sink = 'redis' AND event_id IN ($1, $2)""",
        one.id,
        three.id,
        one.redis_entry,
        three.redis_entry,
    )
    report = await evaluate(settings)
    assert_only(report, [FLOW_ORDER])
    [redis] = evidence(report, FLOW_ORDER, sink="redis")
    assert (redis["ok"], redis["out_of_order"]) == (False, 1)
    assert str(three.id) in redis["text"]
    assert evidence(report, FLOW_ORDER, sink="kafka")[0]["out_of_order"] == 0


async def test_events_of_different_aggregates_may_interleave(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> None:
    pipeline = await clean_pipeline(settings, redis_client, kafka_admin, events=6, aggregates=2)
    one, two = pipeline.event(1), pipeline.event(2)
    assert one.aggregateid != two.aggregateid
    await pipeline.execute(
        """UPDATE flowproof_receipts SET position = CASE event_id WHEN $1 THEN $4 ELSE $3 END
           WHERE sink = 'redis' AND event_id IN ($1, $2)""",
        one.id,
        two.id,
        one.redis_entry,
        two.redis_entry,
    )
    assert_only(await evaluate(settings), [])


async def test_invalid_receipts_and_dead_letters_fail_conformance_per_sink(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> None:
    pipeline = await clean_pipeline(settings, redis_client, kafka_admin)
    # A corrupt message in each sink: receipted as invalid and dead-lettered.
    for sink, source, position in (
        ("redis", pipeline.stream, "1-1"),
        ("kafka", pipeline.topic, "0:50"),
    ):
        await insert_receipt(
            pipeline, None, sink=sink, source=source, position=position, reason="bad_magic"
        )
    await redis_client.xadd(f"{pipeline.stream}.dlq", {"reason": "bad_magic"})
    dlq_topic = f"{pipeline.topic}.dlq"
    await kafka_admin.create_topics([NewTopic(dlq_topic, num_partitions=1, replication_factor=1)])
    await produce(settings.kafka_bootstrap_servers, dlq_topic, 1)
    report = await evaluate(settings)
    assert_only(report, [SCHEMA_CONFORMANCE])
    check = report.check(SCHEMA_CONFORMANCE)
    assert check.value is not None and check.value < 1
    for sink in ("redis", "kafka"):
        [receipts] = evidence(report, SCHEMA_CONFORMANCE, sink=sink, group=GROUP)
        assert not receipts["ok"]
        assert receipts["invalid"] == {"bad_magic": 1}
        assert (receipts["valid"], receipts["total"]) == (6, 7)
    [redis_dlq] = evidence(report, SCHEMA_CONFORMANCE, sink="redis", dlq=f"{pipeline.stream}.dlq")
    [kafka_dlq] = evidence(report, SCHEMA_CONFORMANCE, sink="kafka", dlq=dlq_topic)
    for dlq in (redis_dlq, kafka_dlq):
        assert (dlq["ok"], dlq["depth"], dlq["in_window"]) == (False, 1, 1)


async def test_a_receipt_of_an_event_the_outbox_never_had_is_unexpected(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> None:
    pipeline = await clean_pipeline(settings, redis_client, kafka_admin)
    stranger = pipeline.event(2)
    await pipeline.execute("DELETE FROM flowproof_outbox WHERE id = $1", stranger.id)
    report = await evaluate(settings)
    assert_only(report, [FLOW_DUPLICATES])
    for sink in ("redis", "kafka"):
        [item] = evidence(report, FLOW_DUPLICATES, sink=sink)
        assert (item["duplicated"], item["unexpected"]) == (0, 1)
        assert str(stranger.id) in item["text"]
        assert evidence(report, FLOW_LOST, sink=sink)[0]["lost"] == 0


async def test_parked_events_fail_the_outbox_lag(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> None:
    pipeline = await clean_pipeline(settings, redis_client, kafka_admin)
    parked = await published_event(pipeline, "agg-7", age_seconds=0)
    await set_aside(pipeline, parked, "kafka", "parked", "oversized")
    report = await evaluate(settings)
    assert_only(report, [LAG_OUTBOX])
    [parked] = evidence(report, LAG_OUTBOX, sink="kafka", ok=False)
    assert parked["parked"] == {"oversized": 1}


async def test_a_group_that_never_ran_on_a_stream_with_entries_fails_the_redis_lag(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> None:
    await clean_pipeline(settings, redis_client, kafka_admin)
    other = f"{settings.stream_prefix}payment"
    await redis_client.xadd(other, {"id": "x"}, id="1000-1")  # written long ago
    report = await evaluate(settings)
    assert_only(report, [LAG_REDIS])
    [lane] = evidence(report, LAG_REDIS, source=other)
    assert not lane["ok"]
    assert "does not exist" in lane["text"]
    assert lane["behind"] == 1


async def test_redis_lag_falls_back_to_counting_when_xinfo_has_no_lag(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> None:
    pipeline = await clean_pipeline(settings, redis_client, kafka_admin)
    stream = pipeline.stream
    fresh = [await redis_client.xadd(stream, {"n": str(i)}) for i in range(3)]
    # Deleting an entry makes XINFO GROUPS report lag as nil (Redis 7).
    await redis_client.xdel(stream, fresh[0])
    [info] = [i for i in await redis_client.xinfo_groups(stream) if i["name"] == b"flowproof"]
    assert info["lag"] is None
    report = await evaluate(tuned(settings, lag_redis_threshold=5))
    [lane] = evidence(report, LAG_REDIS, source=stream)
    assert lane["behind"] == 2  # the two entries left after the last-delivered id


async def test_kafka_lag_and_its_time_lag_come_from_offsets_and_record_timestamps(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> None:
    pipeline = await clean_pipeline(settings, redis_client, kafka_admin)
    await produce(settings.kafka_bootstrap_servers, pipeline.topic, 4)
    report = await evaluate(tuned(settings, lag_kafka_grace_seconds=0.0))
    assert_only(report, [LAG_KAFKA])
    [lane] = evidence(report, LAG_KAFKA, source=pipeline.topic, partition=0)
    assert lane["behind"] == 4
    assert 0 < lane["time_lag_seconds"] < 30
    # Within the grace period the same lag passes.
    assert_only(await evaluate(settings), [])


async def test_kafka_unreachable_fails_components_and_every_kafka_check(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> None:
    await clean_pipeline(settings, redis_client, kafka_admin)
    report = await evaluate(tuned(settings, kafka_bootstrap_servers=f"127.0.0.1:{closed_port()}"))
    assert [c.name for c in report.unreachable] == ["kafka"]
    assert_only(report, [COMPONENTS_UP, LAG_KAFKA, SCHEMA_CONFORMANCE])
    assert not report.check(LAG_KAFKA).evaluated
    assert "FAIL kafka:" in report.check(COMPONENTS_UP).detail


async def test_redis_unreachable_fails_components_and_every_redis_check(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> None:
    await clean_pipeline(settings, redis_client, kafka_admin)
    report = await evaluate(tuned(settings, redis_url=f"redis://127.0.0.1:{closed_port()}/0"))
    assert [c.name for c in report.unreachable] == ["redis"]
    assert_only(report, [COMPONENTS_UP, LAG_REDIS, SCHEMA_CONFORMANCE])


async def test_postgresql_unreachable_fails_every_check_that_reads_it(settings: Settings) -> None:
    report = await evaluate(
        tuned(settings, database_url=f"postgresql://postgres@127.0.0.1:{closed_port()}/x")
    )
    assert [c.name for c in report.unreachable] == ["postgresql"]
    assert_only(
        report,
        [COMPONENTS_UP, FLOW_LOST, FLOW_DUPLICATES, FLOW_ORDER, LAG_OUTBOX, LATENCY_E2E,
         SCHEMA_CONFORMANCE],
    )  # fmt: skip


async def test_only_the_enabled_sinks_are_expected(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> None:
    pipeline = await clean_pipeline(settings, redis_client, kafka_admin)
    await pipeline.execute("DELETE FROM flowproof_receipts WHERE sink = 'kafka'")
    only_redis = tuned(
        settings, sinks=("redis",), kafka_bootstrap_servers=f"127.0.0.1:{closed_port()}"
    )
    report = await evaluate(only_redis)
    assert_only(report, [])
    assert [c.name for c in report.components] == ["postgresql", "redis"]
    assert "not enabled" in report.check(LAG_KAFKA).detail


async def test_an_event_received_late_is_slow_not_lost(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> None:
    pipeline = await clean_pipeline(settings, redis_client, kafka_admin)
    late = pipeline.event(5)
    await pipeline.execute(
        """UPDATE flowproof_receipts SET received_at = received_at + interval '45 seconds'
           WHERE event_id = $1 AND sink = 'redis'""",
        late.id,
    )
    report = await evaluate(settings)
    assert_only(report, [LATENCY_E2E])  # 45 s late is far above the p99 threshold
    [redis] = evidence(report, FLOW_LOST, sink="redis")
    assert (redis["ok"], redis["lost"]) == (True, 0)
    [latency] = evidence(report, LATENCY_E2E, sink="redis")
    assert latency["p99"] > 40


async def test_an_entry_the_group_has_not_reached_is_late_not_lost(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> None:
    pipeline = await clean_pipeline(settings, redis_client, kafka_admin)
    waiting = await published_event(pipeline, "agg-8", age_seconds=90)
    # In both sinks, after everything the group has read: nobody consumed it yet.
    entry = (await redis_client.xadd(pipeline.stream, {"id": str(waiting.id)})).decode()
    await record_delivery(pipeline, waiting, sink="redis", position=entry)
    await produce(settings.kafka_bootstrap_servers, pipeline.topic, 1)
    await record_delivery(pipeline, waiting, sink="kafka", position=f"0:{len(pipeline.events)}")
    report = await evaluate(settings)
    assert_only(report, [LATENCY_E2E])  # the sinks' entries are new: lag is within its grace
    for sink in ("redis", "kafka"):
        [lost] = evidence(report, FLOW_LOST, sink=sink)
        assert (lost["lost"], lost["late"]) == (0, 1)
        [latency] = evidence(report, LATENCY_E2E, sink=sink)
        assert (latency["ok"], latency["late"]) == (False, 1)
        assert latency["oldest_late_age"] > 80
    # Once its entry is deleted before the group read it, it is lost: a fact, not a timer.
    await redis_client.xdel(pipeline.stream, entry)
    report = await evaluate(settings)
    [lost] = evidence(report, FLOW_LOST, sink="redis")
    assert (lost["ok"], lost["lost"], lost["late"]) == (False, 1, 0)
    assert f"stream {pipeline.stream}: 1 no longer in the sink (positions {entry}" in lost["text"]


async def test_with_sampling_only_the_sampled_events_are_expected(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> None:
    pipeline = await clean_pipeline(settings, redis_client, kafka_admin, events=40)
    ratio = 0.5
    sampled = [e for e in pipeline.events if is_sampled(e.id, ratio)]
    assert 0 < len(sampled) < len(pipeline.events)
    # The consumers receipt only the sampled events.
    await pipeline.execute(
        "DELETE FROM flowproof_receipts WHERE NOT (event_id = ANY($1::uuid[]))",
        [e.id for e in sampled],
    )
    half = tuned(settings, receipt_sample_ratio=ratio)
    report = await evaluate(half)
    assert_only(report, [])
    [redis] = evidence(report, FLOW_LOST, sink="redis")
    assert redis["judged"] == len(sampled)
    # A sampled event without its receipt is still lost.
    await pipeline.execute(
        "DELETE FROM flowproof_receipts WHERE event_id = $1 AND sink = 'kafka'", sampled[0].id
    )
    assert_only(await evaluate(half), [FLOW_LOST])
    # Judged as if every event were sampled, the unsampled ones look lost.
    assert FLOW_LOST in {c.name for c in (await evaluate(settings)).checks if not c.passed}
