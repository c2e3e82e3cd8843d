"""The pipeline against a private Redis primary with a replica behind a Sentinel
(`redis+sentinel://`), with FLOWPROOF_RELAY_REDIS_MIN_REPLICAS=1: the relay marks a batch only
once WAIT confirmed the replica has it; with the replica stopped it marks nothing, counts the
shortfall and publishes again; publish, consume and verify pass; the clients follow the
replica the Sentinel promotes when the primary dies."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr
from structlog.testing import capture_logs

from flowproof.consumers.run import consume
from flowproof.core.config import Settings
from flowproof.core.connect import ping_redis, redis_client
from flowproof.core.errors import ComponentUnreachable
from flowproof.publisher.relay import Relay
from flowproof.verifier.commands import check_once
from flowproof.verifier.model import FLOW_LOST
from tests.private_services import ReplicatedRedis
from tests.readback import insert_canaries, unpublished, wait_until

SHORTFALLS = "flowproof_relay_redis_replica_shortfalls_total"


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicatedRedis]:
    with ReplicatedRedis(tmp_path_factory.mktemp("replicated-redis")) as servers:
        yield servers


def on_replicated(settings: Settings, servers: ReplicatedRedis, **update: object) -> Settings:
    return settings.model_copy(
        update={
            "redis_url": SecretStr(servers.url),
            "sinks": ("redis",),
            "relay_redis_min_replicas": 1,
            "relay_redis_replica_timeout_seconds": 0.5,
            "relay_sink_timeout_seconds": 5.0,
            "relay_retry_base_seconds": 0.05,
            "relay_retry_cap_seconds": 0.2,
            **update,
        }
    )


async def test_min_replicas_1_publish_consume_verify(
    settings: Settings, database_url: str, replicated: ReplicatedRedis
) -> None:
    settings = on_replicated(settings, replicated)
    conn = await asyncpg.connect(database_url)
    try:
        await insert_canaries(conn, [f"a-{n}" for n in range(8)], 50)
        before = REGISTRY.get_sample_value(SHORTFALLS) or 0.0
        await Relay(settings).run_until_idle()
        assert await unpublished(conn, "redis") == 0
    finally:
        await conn.close()
    assert (REGISTRY.get_sample_value(SHORTFALLS) or 0.0) == before
    stats = await consume(settings, sink="redis", group=settings.consumer_group, drain=True)
    assert stats.receipts == 400
    replica = redis_client(
        settings.model_copy(update={"redis_url": SecretStr(replicated.replica.url)})
    )
    try:
        # What the relay marked is on the replica, entry for entry.
        assert await replica.xlen(f"{settings.stream_prefix}canary") == 400
    finally:
        await replica.aclose()
    report = await check_once(settings.model_copy(update={"flow_lost_grace_seconds": 0.0}))
    assert report.check(FLOW_LOST).passed, report.check(FLOW_LOST).detail


async def test_a_stopped_replica_holds_the_marks_back(
    settings: Settings, database_url: str, replicated: ReplicatedRedis
) -> None:
    """SIGSTOP on the replica: WAIT times out, the shortfall is counted and logged, nothing is
    marked; SIGCONT: the batch is published again and marked."""
    settings = on_replicated(settings, replicated)
    conn = await asyncpg.connect(database_url)
    replica_pid = replicated.replica.pid
    assert replica_pid is not None
    relay = Relay(settings)
    try:
        await insert_canaries(conn, ["b-1", "b-2"], 10)
        before = REGISTRY.get_sample_value(SHORTFALLS) or 0.0
        os.kill(replica_pid, signal.SIGSTOP)
        try:
            with capture_logs() as logs:
                task = asyncio.create_task(relay.run_until_idle())

                async def counted() -> bool:
                    return (REGISTRY.get_sample_value(SHORTFALLS) or 0.0) >= before + 2

                await wait_until(counted, 20.0)
                assert await unpublished(conn, "redis") == 20, "marked without the replica"
        finally:
            os.kill(replica_pid, signal.SIGCONT)
        await asyncio.wait_for(task, 30.0)
        assert await unpublished(conn, "redis") == 0
    finally:
        await conn.close()
    shortfalls = [e for e in logs if e["event"] == "relay.redis_replica_shortfall"]
    assert shortfalls and shortfalls[0]["required"] == 1 and shortfalls[0]["confirmed"] == 0
    assert any(e["event"] == "relay.publish_failed" for e in logs)


async def test_clients_follow_the_promoted_replica(
    settings: Settings, database_url: str, tmp_path: Path
) -> None:
    """The primary killed: the Sentinel promotes the replica, the relay (MIN_REPLICAS=0 here:
    the new primary has no replica) and the consumer carry on against it."""
    with ReplicatedRedis(tmp_path / "failover") as servers:
        settings = on_replicated(settings, servers, relay_redis_min_replicas=0)
        conn = await asyncpg.connect(database_url)
        try:
            await insert_canaries(conn, ["c-1"], 20)
            await Relay(settings).run_until_idle()
            first = await consume(settings, sink="redis", group=settings.consumer_group, drain=True)
            assert first.receipts == 20
            await asyncio.to_thread(servers.primary.kill)
            await insert_canaries(conn, ["c-2"], 20)
            await asyncio.wait_for(Relay(settings).run_until_idle(), 60.0)
            assert servers.current() is servers.replica
            assert await unpublished(conn, "redis") == 0
        finally:
            await conn.close()
        second = await consume(settings, sink="redis", group=settings.consumer_group, drain=True)
        assert second.receipts == 20


async def test_a_sentinel_that_monitors_another_name_says_so(
    settings: Settings, replicated: ReplicatedRedis
) -> None:
    url = f"redis+sentinel://127.0.0.1:{replicated.sentinel.port}/nosuch"
    client = redis_client(settings.model_copy(update={"redis_url": SecretStr(url)}))
    try:
        with pytest.raises(ComponentUnreachable) as refused:
            await ping_redis(client)
    finally:
        await client.aclose()
    assert "monitors no primary named 'nosuch'" in str(refused.value), refused.value
