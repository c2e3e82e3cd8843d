"""The Burrow-style consumer-group status: its rules on their own, then stopped and stalled
consumers on real Redis streams and Kafka topics, seen over several evaluations."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import REGISTRY

from flowproof.core.config import Settings
from flowproof.verifier.evaluator import Evaluator
from flowproof.verifier.model import LAG_KAFKA, LAG_REDIS
from flowproof.verifier.status import GroupStatus, LaneStatus, Observation, lane_status, worst
from tests.test_verify_support import (
    GROUP,
    assert_only,
    clean_pipeline,
    evidence,
    produce,
    tuned,
)


def window(*points: tuple[float, int, int]) -> list[Observation]:
    return [Observation(at, (position,), lag) for at, position, lag in points]


def status(points: list[Observation], *, alive: bool = False, now: float | None = None) -> str:
    now = points[-1].at if now is None else now
    return lane_status(points, alive=alive, now=now, min_observations=3).status


def test_caught_up_at_any_observation_is_ok() -> None:
    assert status(window((0, 5, 3), (10, 5, 0), (20, 5, 4))) == GroupStatus.OK


def test_one_look_at_a_lagging_group_is_not_enough() -> None:
    assert status(window((0, 5, 3), (10, 5, 4))) == GroupStatus.UNKNOWN
    assert status(window((0, 5, 0))) == GroupStatus.OK


def test_a_position_going_backwards_is_a_rewind() -> None:
    assert status(window((0, 9, 3), (10, 4, 8), (20, 6, 6))) == GroupStatus.REWIND


def test_a_position_stuck_while_lagging_is_stop_or_stall_by_liveness() -> None:
    stuck = window((0, 5, 1), (10, 5, 2), (20, 5, 3))
    assert status(stuck, alive=False) == GroupStatus.STOP
    assert status(stuck, alive=True) == GroupStatus.STALL


def test_stuck_shorter_than_it_was_moving_is_not_yet_stopped() -> None:
    # Moved until t=40, unchanged since: 10 s still against 40 s of movement (Burrow's rule 3).
    moving = window((0, 1, 5), (20, 3, 5), (40, 6, 6), (50, 6, 7))
    assert status(moving) == GroupStatus.WARN  # lag never decreased
    assert status(moving, now=100) == GroupStatus.STOP


def test_moving_and_catching_up_is_ok_and_falling_behind_is_warn() -> None:
    assert status(window((0, 1, 9), (10, 5, 7), (20, 9, 8))) == GroupStatus.OK
    assert status(window((0, 1, 5), (10, 5, 6), (20, 9, 8))) == GroupStatus.WARN


def test_a_group_takes_its_worst_lane() -> None:
    lanes = [LaneStatus(GroupStatus.OK, ""), LaneStatus(GroupStatus.STOP, ""),
             LaneStatus(GroupStatus.WARN, "")]  # fmt: skip
    assert worst(lanes).status == GroupStatus.STOP


def status_metric(sink: str, value: str) -> float | None:
    return REGISTRY.get_sample_value(
        "flowproof_consumer_group_status", {"sink": sink, "group": GROUP, "status": value}
    )


async def test_a_stopped_redis_consumer_goes_stop_as_its_lag_grows(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> None:
    pipeline = await clean_pipeline(settings, redis_client, kafka_admin)
    quick = tuned(settings, lag_redis_grace_seconds=0.3, verify_status_min_observations=3)
    await asyncio.sleep(0.4)  # the group's only consumer was last seen longer ago than that
    reports = []
    async with Evaluator(quick) as evaluator:
        for _ in range(3):
            await redis_client.xadd(pipeline.stream, {"id": "new"})
            reports.append(await evaluator.evaluate())
            await asyncio.sleep(0.1)
    behind = [evidence(r, LAG_REDIS, source=pipeline.stream)[0]["behind"] for r in reports]
    assert behind == [1, 2, 3]
    statuses = [evidence(r, LAG_REDIS, group=GROUP, sink="redis")[-1]["status"] for r in reports]
    assert statuses == ["UNKNOWN", "UNKNOWN", "STOP"]
    assert_only(reports[-1], [LAG_REDIS])
    assert "FAIL redis group flowproof: status STOP" in reports[-1].check(LAG_REDIS).detail
    assert status_metric("redis", "STOP") == 1
    assert status_metric("redis", "OK") == 0


async def test_a_redis_consumer_rereading_its_pending_entries_stalls(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> None:
    pipeline = await clean_pipeline(settings, redis_client, kafka_admin)
    quick = tuned(settings, lag_redis_grace_seconds=5.0, verify_status_min_observations=3)
    await redis_client.xadd(pipeline.stream, {"id": "poison"})
    await redis_client.xreadgroup(GROUP, "stuck", {pipeline.stream: ">"}, count=1)
    reports = []
    async with Evaluator(quick) as evaluator:
        for _ in range(3):
            await redis_client.xadd(pipeline.stream, {"id": "new"})
            # Alive, retrying the one it never acknowledges, never reading further.
            await redis_client.xreadgroup(GROUP, "stuck", {pipeline.stream: "0"}, count=1)
            reports.append(await evaluator.evaluate())
            await asyncio.sleep(0.05)
    [group] = evidence(reports[-1], LAG_REDIS, group=GROUP, sink="redis", source=None)
    assert group["status"] == "STALL"
    assert_only(reports[-1], [LAG_REDIS])
    assert status_metric("redis", "STALL") == 1


async def test_a_stopped_kafka_consumer_goes_stop_as_its_lag_grows(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> None:
    pipeline = await clean_pipeline(settings, redis_client, kafka_admin)
    quick = tuned(settings, lag_kafka_grace_seconds=30.0, verify_status_min_observations=3)
    reports = []
    async with Evaluator(quick) as evaluator:
        for _ in range(3):
            await produce(settings.kafka_bootstrap_servers, pipeline.topic, 1)
            reports.append(await evaluator.evaluate())
    behind = [evidence(r, LAG_KAFKA, source=pipeline.topic)[0]["behind"] for r in reports]
    assert behind == [1, 2, 3]
    [group] = evidence(reports[-1], LAG_KAFKA, group=GROUP, sink="kafka", source=None)
    assert group["status"] == "STOP"
    assert "0 members" in group["text"]
    assert_only(reports[-1], [LAG_KAFKA])
    assert status_metric("kafka", "STOP") == 1


async def test_a_kafka_member_that_never_commits_stalls(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> None:
    pipeline = await clean_pipeline(settings, redis_client, kafka_admin)
    member = AIOKafkaConsumer(
        pipeline.topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=GROUP,
        enable_auto_commit=False,
    )
    await member.start()
    try:
        for _ in range(300):  # joining the group takes a moment
            if member.assignment():
                break
            await asyncio.sleep(0.1)
        assert member.assignment(), "the member never got its partition"
        quick = tuned(settings, verify_status_min_observations=3)
        reports = []
        async with Evaluator(quick) as evaluator:
            for _ in range(3):
                await produce(settings.kafka_bootstrap_servers, pipeline.topic, 1)
                reports.append(await evaluator.evaluate())
    finally:
        await member.stop()
    [group] = evidence(reports[-1], LAG_KAFKA, group=GROUP, sink="kafka", source=None)
    assert group["status"] == "STALL"
    assert "1 member" in group["text"]
    assert_only(reports[-1], [LAG_KAFKA])


async def test_a_consumer_that_catches_up_is_ok_again(
    settings: Settings, redis_client: aioredis.Redis, kafka_admin: AIOKafkaAdminClient
) -> None:
    pipeline = await clean_pipeline(settings, redis_client, kafka_admin)
    quick = tuned(settings, lag_redis_grace_seconds=0.2, verify_status_min_observations=2)
    await asyncio.sleep(0.3)
    async with Evaluator(quick) as evaluator:
        for _ in range(2):
            await redis_client.xadd(pipeline.stream, {"id": "new"})
            stopped = await evaluator.evaluate()
        assert evidence(stopped, LAG_REDIS, group=GROUP, source=None)[0]["status"] == "STOP"
        read = await redis_client.xreadgroup(GROUP, "back", {pipeline.stream: ">"})
        await redis_client.xack(
            pipeline.stream, GROUP, *[i for _, entries in read for i, _ in entries]
        )
        recovered = await evaluator.evaluate()
    assert evidence(recovered, LAG_REDIS, group=GROUP, source=None)[0]["status"] == "OK"
    assert_only(recovered, [])
