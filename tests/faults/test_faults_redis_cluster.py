"""A Redis Cluster node's primary killed under load: a private cluster of 3 primaries with one
replica each (tests/private_services.py `PrivateRedisCluster`); flowproof's processes use the
redis+cluster:// URL. The primary holding the workload's stream is killed (SIGKILL) mid-run; the
other primaries elect its replica within about a second of the node timeout, the relay, the
consumers and the verifier learn the new slot owner, and the killed node is started again (it
rejoins as a replica).

Replication in a Cluster is asynchronous and MIN_REPLICAS is 0 here, so the kill may drop entries
the primary acknowledged: the run allows it (a lossy sink) and the verdict must agree with the
accounting, the lost ones counted a second time by looking every recorded entry up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster

from flowproof.core.connect import redis_client
from tests.faults.accounting import lane_lost
from tests.faults.conftest import RunFactory
from tests.faults.scenario import Endpoints, Faults, Plan, Run
from tests.private_services import PrivateRedis, PrivateRedisCluster

RELAY_BATCH = 500
CONSUMER_BATCH = 256


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[PrivateRedisCluster]:
    with PrivateRedisCluster(tmp_path / "cluster", replicas=1) as servers:
        yield servers


async def _primary_of(run: Run, cluster: PrivateRedisCluster, stream: str) -> PrivateRedis:
    client = redis_client(run.settings())
    assert isinstance(client, RedisCluster)
    try:
        await client.initialize()
        node = client.get_node_from_key(stream)
        assert node is not None
        return next(n for n in cluster.nodes if n.port == int(node.port))
    finally:
        await client.aclose()


def primary_killed(cluster: PrivateRedisCluster) -> Faults:
    async def faults(run: Run) -> None:
        await run.at_fraction(0.3, 0.5)
        stream = f"{run.prefix}order"
        victim = await _primary_of(run, cluster, stream)
        async with run.fault("Redis Cluster primary SIGKILL, replica promoted"):
            await asyncio.to_thread(victim.kill)
            run.mark(f"killed the primary of {stream} (port {victim.port})")

            async def promoted() -> bool:
                try:
                    now = await _primary_of(run, cluster, stream)
                except Exception:  # the cluster is failing over: ask again
                    return False
                return now is not victim

            took = await run.wait_until(promoted, 60.0, "a replica taking the slots over")
            run.mark(f"the replica took the slots over {took:.1f} s after the kill")
            await asyncio.to_thread(victim.start)
            run.mark("the killed node started again (a replica now)")
        await run.recovered()

    return faults


@pytest.mark.faults_full
@pytest.mark.timeout(420)
async def test_cluster_primary_killed_the_verdict_agrees(
    make_run: RunFactory, shared_endpoints: Endpoints, cluster: PrivateRedisCluster
) -> None:
    plan = Plan(
        "Redis Cluster primary SIGKILL, replica promoted (3 primaries + 3 replicas)",
        max_duplicates={"redis": 4 * (RELAY_BATCH + CONSUMER_BATCH), "kafka": 0},
        seed=79,
        lossy=("redis",),
        recover_timeout=150.0,
    )
    endpoints = replace(shared_endpoints, redis_url=cluster.url)
    run = make_run(plan, endpoints)
    result = await run.execute(primary_killed(cluster))
    dropped = await run.redis_dropped()
    assert result.passed, result.explain()
    assert dropped.dropped_unreceived == lane_lost(result.per_lane, "redis"), dropped
