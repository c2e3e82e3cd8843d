"""Redis failover under load: a private primary, its replica and a Sentinel
(tests/private_services.py `ReplicatedRedis`); flowproof's processes use the redis+sentinel:// URL.

The loss is made likely, not left to chance: the replica is frozen (SIGSTOP), the primary drops
the replication link once its output buffer for the replica passes 256 kB (what it sent is then
nowhere but in the kernel's socket buffers), the Redis consumer is frozen too (a consumer that
keeps up would receive, before the kill, what the failover then drops: delivered, not lost), the
relay goes on publishing a relay batch more (MIN_REPLICAS=0; with 1, for a second), then the
primary is killed (SIGKILL), the replica thawed, and the Sentinel promotes it within seconds.

- MIN_REPLICAS=0: the relay marked what the primary acknowledged; the entries written after the
  link dropped are gone. The independent accounting looks each recorded entry up in the new
  primary (`accounting.redis_dropped`) and counts the events no consumer received: `flow.lost`
  must report exactly as many, and the receipts-based accounting too.
- MIN_REPLICAS=1: the relay marks a batch only once WAIT confirmed the replica has it; the old
  primary is started again, the Sentinel makes it the new primary's replica, and nothing is lost.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from tests.faults.accounting import lane_lost
from tests.faults.conftest import RunFactory
from tests.faults.scenario import Endpoints, Faults, Plan, Run
from tests.private_services import ReplicatedRedis, redis_ask

RELAY_BATCH = 500
CONSUMER_BATCH = 256
# The replication link of a frozen replica is dropped past this much unsent output.
REPLICA_BUFFER = ["--client-output-buffer-limit", "replica 256kb 0 0"]


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[ReplicatedRedis]:
    with ReplicatedRedis(tmp_path / "redis", config=REPLICA_BUFFER) as servers:
        yield servers


def _replicas(port: int) -> int | None:
    info = redis_ask(port, "INFO", "replication")
    return int(info["connected_slaves"]) if isinstance(info, dict) else None


async def _published(run: Run) -> int:
    conn = await asyncpg.connect(run.endpoints.database_url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(DISTINCT seq) FROM flowproof_outbox_deliveries WHERE sink = 'redis'"
        )
        return count
    finally:
        await conn.close()


def failover(servers: ReplicatedRedis, *, alone: int | None, old_primary_back: bool) -> Faults:
    """Freeze the replica until the primary dropped it, then the Redis consumer too (what the
    primary takes from now on is read by no one), let the primary take writes alone (until the
    relay marked `alone` more events published; with None, for a second), kill it, thaw the
    replica, wait for the Sentinel to promote it, thaw the consumer; with `old_primary_back`,
    start the old primary again (the Sentinel makes it the new primary's replica)."""

    async def faults(run: Run) -> None:
        await run.at_fraction(0.1, 0.2)
        replica_pid = servers.replica.pid
        assert replica_pid is not None
        consumers = run.named("consume-redis")
        async with run.fault("Redis primary SIGKILL, replica promoted"):
            os.kill(replica_pid, signal.SIGSTOP)
            try:

                async def link_dropped() -> bool:
                    return await asyncio.to_thread(_replicas, servers.primary.port) == 0

                took = await run.wait_until(link_dropped, 90.0, "the primary dropping the replica")
                for consumer in consumers:
                    consumer.freeze()
                run.mark(f"the primary dropped the frozen replica after {took:.1f} s")
                if alone is None:
                    await asyncio.sleep(1.0)
                else:
                    floor = await _published(run) + alone

                    async def marked() -> bool:
                        return await _published(run) >= floor

                    took = await run.wait_until(marked, 60.0, f"{alone} events marked")
                    run.mark(f"{alone} more events marked published in {took:.1f} s")
                await asyncio.to_thread(servers.primary.kill)
                run.mark("primary killed")
            finally:
                os.kill(replica_pid, signal.SIGCONT)

            async def promoted() -> bool:
                return await asyncio.to_thread(servers.current) is servers.replica

            try:
                took = await run.wait_until(promoted, 60.0, "the Sentinel promoting the replica")
                run.mark(f"the Sentinel promoted the replica {took:.1f} s after the kill")
            finally:
                for consumer in consumers:
                    consumer.thaw()
            if old_primary_back:
                await asyncio.to_thread(servers.primary.start)

                async def has_replica() -> bool:
                    return await asyncio.to_thread(_replicas, servers.replica.port) == 1

                took = await run.wait_until(has_replica, 60.0, "the old primary as replica")
                run.mark(f"the old primary is the new primary's replica after {took:.1f} s")
        await run.recovered()

    return faults


@pytest.mark.faults_full
@pytest.mark.timeout(420)
async def test_failover_with_min_replicas_0_loses_and_the_verifier_says_how_many(
    make_run: RunFactory, shared_endpoints: Endpoints, replicated: ReplicatedRedis
) -> None:
    plan = Plan(
        "Redis failover, MIN_REPLICAS=0 (replication paused; loss expected)",
        max_duplicates={"redis": 4 * (RELAY_BATCH + CONSUMER_BATCH), "kafka": 0},
        rate=500.0,  # the workload goes on for 40 s: the primary takes writes alone
        seed=71,
        lossy=("redis",),
        env={"FLOWPROOF_RELAY_REDIS_MIN_REPLICAS": "0"},
    )
    endpoints = replace(shared_endpoints, redis_url=replicated.url)
    run = make_run(plan, endpoints)
    result = await run.execute(failover(replicated, alone=RELAY_BATCH, old_primary_back=False))
    dropped = await run.redis_dropped()
    assert result.passed, result.explain()
    assert dropped.dropped > 0, f"the failover dropped nothing this time: {dropped}"
    # Looked up entry by entry, by receipts, and by the verifier (checked in result.passed):
    assert dropped.dropped_unreceived == lane_lost(result.per_lane, "redis"), dropped


@pytest.mark.faults_full
@pytest.mark.timeout(420)
async def test_failover_with_min_replicas_1_loses_nothing(
    make_run: RunFactory, shared_endpoints: Endpoints, replicated: ReplicatedRedis
) -> None:
    plan = Plan(
        "Redis failover, MIN_REPLICAS=1 (replication paused)",
        # Each WAIT shortfall publishes the batch again on the primary (which then dies): the
        # copies the consumer read there, and the batch in flight at the kill.
        max_duplicates={"redis": 4 * (RELAY_BATCH + CONSUMER_BATCH), "kafka": 0},
        rate=500.0,
        seed=73,
        recover_timeout=150.0,
        env={
            "FLOWPROOF_RELAY_REDIS_MIN_REPLICAS": "1",
            "FLOWPROOF_RELAY_REDIS_REPLICA_TIMEOUT_SECONDS": "1",
        },
    )
    endpoints = replace(shared_endpoints, redis_url=replicated.url)
    run = make_run(plan, endpoints)
    result = await run.execute(failover(replicated, alone=None, old_primary_back=True))
    dropped = await run.redis_dropped()
    assert result.passed, result.explain()
    assert dropped.dropped == 0, dropped
