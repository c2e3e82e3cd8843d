"""The relay under faults, for real: a sink that goes down (its own private server, stopped and
started again) never holds back the other and loses nothing; kill -9 of a relay process mid-run
loses nothing and duplicates at most the in-flight batch; SIGTERM stops cleanly (exit 0, the
in-flight batch finished and marked, no duplicate after a restart)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import urllib.request
from collections import Counter
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import REGISTRY
from pydantic import SecretStr

from flowproof.core.config import Settings
from flowproof.publisher.relay import Relay
from tests.private_services import PrivateKafka, PrivateRedis
from tests.readback import (
    Delivered,
    insert_canaries,
    read_stream,
    read_topic,
    unpublished,
    wait_until,
)

AGGREGATES = [f"f-{i}" for i in range(10)]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def wait_for_count(conn: asyncpg.Connection, sink: str, left: int, within: float) -> None:
    async def reached() -> bool:
        return await unpublished(conn, sink) == left

    await wait_until(reached, within)


def assert_complete(
    sink: str, messages: list[Delivered], ids: set[str], max_duplicates: int
) -> None:
    """Every event at least once, duplicates within the bound, each aggregate's first copies in
    seq order (the ids list is in seq order)."""
    counts = Counter(m.event_id for m in messages)
    assert set(counts) == ids, f"{sink}: lost {len(ids - set(counts))} events"
    duplicates = sum(counts.values()) - len(counts)
    assert duplicates <= max_duplicates, f"{sink}: {duplicates} duplicates"


async def outbox_ids(conn: asyncpg.Connection) -> tuple[set[str], dict[str, int]]:
    rows = await conn.fetch("SELECT id, seq FROM flowproof_outbox")
    return {str(r["id"]) for r in rows}, {str(r["id"]): r["seq"] for r in rows}


def assert_first_copies_in_order(
    sink: str, messages: list[Delivered], seqs: dict[str, int]
) -> None:
    seen: set[str] = set()
    last: dict[str, int] = {}
    for message in messages:
        if message.event_id in seen:
            continue
        seen.add(message.event_id)
        aggregate = message.fields["aggregateid"]
        assert seqs[message.event_id] > last.get(aggregate, 0), f"{sink}: {aggregate} reordered"
        last[aggregate] = seqs[message.event_id]


def fast_retries(settings: Settings, **more: object) -> Settings:
    return settings.model_copy(
        update={
            "relay_retry_base_seconds": 0.05,
            "relay_retry_cap_seconds": 0.5,
            "relay_sink_timeout_seconds": 3.0,
            "relay_poll_interval_seconds": 0.5,
            **more,
        }
    )


async def test_redis_down_kafka_keeps_flowing_then_redis_catches_up(
    settings: Settings, conn: asyncpg.Connection, kafka_admin: AIOKafkaAdminClient, tmp_path: Path
) -> None:
    with PrivateRedis(tmp_path / "redis") as server:
        settings = fast_retries(settings, redis_url=SecretStr(server.url))
        relay = Relay(settings)
        task = asyncio.create_task(relay.run())
        try:
            await insert_canaries(conn, AGGREGATES, 20)
            await wait_for_count(conn, "redis", 0, 30)
            await asyncio.to_thread(server.stop)
            failures = metric("flowproof_relay_publish_failures_total", sink="redis")
            kafka_failures = metric("flowproof_relay_publish_failures_total", sink="kafka")

            await insert_canaries(conn, AGGREGATES, 30)
            await wait_for_count(conn, "kafka", 0, 30)  # Kafka does not wait for Redis
            assert await unpublished(conn, "redis") == 300
            await wait_until(  # the relay keeps trying, and counts it
                lambda: metric("flowproof_relay_publish_failures_total", sink="redis") > failures,
                10,
            )
            assert metric("flowproof_relay_publish_failures_total", sink="kafka") == kafka_failures

            await asyncio.to_thread(server.start)
            await wait_for_count(conn, "redis", 0, 30)
        finally:
            relay.stop()
            await asyncio.wait_for(task, 30)
        client = aioredis.Redis.from_url(server.url)
        try:
            stream = await read_stream(client, f"{settings.stream_prefix}canary")
        finally:
            await client.aclose()
    ids, seqs = await outbox_ids(conn)
    assert len(ids) == 500
    assert_complete("redis", stream, ids, max_duplicates=0)
    assert_first_copies_in_order("redis", stream, seqs)
    topic = await read_topic(settings, f"{settings.topic_prefix}canary")
    assert_complete("kafka", topic, ids, max_duplicates=0)


async def test_kafka_down_redis_keeps_flowing_then_kafka_catches_up(
    settings: Settings, conn: asyncpg.Connection, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    with PrivateKafka(tmp_path / "kafka") as server:
        settings = fast_retries(settings, kafka_bootstrap_servers=server.bootstrap)
        relay = Relay(settings)
        task = asyncio.create_task(relay.run())
        try:
            await insert_canaries(conn, AGGREGATES, 20)
            await wait_for_count(conn, "kafka", 0, 60)
            await asyncio.to_thread(server.stop)
            failures = metric("flowproof_relay_publish_failures_total", sink="kafka")

            await insert_canaries(conn, AGGREGATES, 30)
            await wait_for_count(conn, "redis", 0, 30)  # Redis does not wait for Kafka
            assert await unpublished(conn, "kafka") == 300
            await wait_until(
                lambda: metric("flowproof_relay_publish_failures_total", sink="kafka") > failures,
                20,
            )

            await asyncio.to_thread(server.start)
            await wait_for_count(conn, "kafka", 0, 60)
        finally:
            relay.stop()
            await asyncio.wait_for(task, 30)
        ids, seqs = await outbox_ids(conn)
        topic = await read_topic(settings, f"{settings.topic_prefix}canary")
    assert len(ids) == 500
    assert_complete("kafka", topic, ids, max_duplicates=0)
    assert_first_copies_in_order("kafka", topic, seqs)
    stream = await read_stream(redis_client, f"{settings.stream_prefix}canary")
    assert_complete("redis", stream, ids, max_duplicates=0)


# --- relay processes --------------------------------------------------------------------------

BATCH = 100


class RelayProcess:
    """`flowproof relay` as a child process, its JSON log in a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = {**env, "FLOWPROOF_RELAY_BATCH_SIZE": str(BATCH)}
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> RelayProcess:
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "flowproof", "relay",
                env=self.env, stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        return self

    def events(self) -> list[dict[str, object]]:
        lines = self.log.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    async def metrics_url(self) -> str:
        async with asyncio.timeout(30):
            while True:
                for event in self.events():
                    if event["event"] == "metrics.serving":
                        return str(event["url"])
                await asyncio.sleep(0.05)

    async def signal(self, signum: int) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        return await asyncio.wait_for(self.process.wait(), 30)


async def progress(conn: asyncpg.Connection, total: int, at_least: int) -> None:
    """Wait until both sinks have at least `at_least` rows published."""

    async def far_enough() -> bool:
        return (
            total - await unpublished(conn, "redis") >= at_least
            and total - await unpublished(conn, "kafka") >= at_least
        )

    await wait_until(far_enough, 60, every=0.005)


async def delivered(settings: Settings, redis: aioredis.Redis) -> dict[str, list[Delivered]]:
    return {
        "redis": await read_stream(redis, f"{settings.stream_prefix}canary"),
        "kafka": await read_topic(settings, f"{settings.topic_prefix}canary"),
    }


async def test_kill_9_mid_run_loses_nothing_and_duplicates_at_most_a_batch(
    *,
    settings: Settings,
    settings_env: dict[str, str],
    conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    kafka_admin: AIOKafkaAdminClient,
    tmp_path: Path,
) -> None:
    total = 30000
    await insert_canaries(conn, AGGREGATES, total // len(AGGREGATES))
    first = await RelayProcess(settings_env, tmp_path / "relay-1.log").start()
    await progress(conn, total, 2000)
    assert await first.signal(signal.SIGKILL) == -signal.SIGKILL
    left = {sink: await unpublished(conn, sink) for sink in ("redis", "kafka")}
    assert all(left.values()), f"the kill came too late to prove anything: {left}"

    second = await RelayProcess(settings_env, tmp_path / "relay-2.log").start()
    await wait_for_count(conn, "redis", 0, 90)
    await wait_for_count(conn, "kafka", 0, 90)
    assert await second.signal(signal.SIGTERM) == 0

    ids, seqs = await outbox_ids(conn)
    for sink, messages in (await delivered(settings, redis_client)).items():
        assert_complete(sink, messages, ids, max_duplicates=BATCH)
        assert_first_copies_in_order(sink, messages, seqs)


async def test_sigterm_stops_cleanly_and_a_restart_duplicates_nothing(
    *,
    settings: Settings,
    settings_env: dict[str, str],
    conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    kafka_admin: AIOKafkaAdminClient,
    tmp_path: Path,
) -> None:
    total = 30000
    await insert_canaries(conn, AGGREGATES, total // len(AGGREGATES))
    first = await RelayProcess(settings_env, tmp_path / "relay-1.log").start()
    url = await first.metrics_url()
    await progress(conn, total, 2000)
    scraped = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
    text = scraped.decode()
    for name in (
        'flowproof_relay_published_total{sink="redis"}',
        'flowproof_relay_published_total{sink="kafka"}',
        'flowproof_outbox_pending_events{sink="kafka"}',
        'flowproof_outbox_oldest_pending_age_seconds{sink="redis"}',
    ):
        assert name in text, name

    assert await first.signal(signal.SIGTERM) == 0
    names = [event["event"] for event in first.events()]
    assert "relay.stop_requested" in names and names[-1] == "relay.stopped"
    assert "relay.shutdown_timeout" not in names
    # Every row recorded published is in its sink, exactly once: nothing recorded that was not
    # sent.
    marked = {
        sink: {str(r["id"]) for r in await conn.fetch(
            f"SELECT id FROM flowproof_outbox_progress WHERE {sink}_published_at IS NOT NULL"
        )}
        for sink in ("redis", "kafka")
    }  # fmt: skip
    assert all(0 < len(m) < total for m in marked.values()), "stopped too late to prove anything"
    for sink, messages in (await delivered(settings, redis_client)).items():
        assert Counter(m.event_id for m in messages) == Counter(marked[sink]), sink

    second = await RelayProcess(settings_env, tmp_path / "relay-2.log").start()
    await wait_for_count(conn, "redis", 0, 90)
    await wait_for_count(conn, "kafka", 0, 90)
    assert await second.signal(signal.SIGTERM) == 0
    ids, seqs = await outbox_ids(conn)
    for sink, messages in (await delivered(settings, redis_client)).items():
        assert_complete(sink, messages, ids, max_duplicates=0)
        assert_first_copies_in_order(sink, messages, seqs)
