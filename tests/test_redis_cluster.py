"""The pipeline against a private 3-primary Redis Cluster (`redis+cluster://`): the relay
publishes one transaction per stream on the stream's node and records every entry id; the
consumer reads every stream wherever it lives and dead-letters to `.dlq` streams that may live
on other nodes; the verifier finds the streams, their lag and the dead letters on every node, and
judges nothing lost. The aggregate types are chosen so that every primary holds at least one
stream and one dead-letter stream."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from pydantic import SecretStr
from redis.asyncio.cluster import RedisCluster

from flowproof.consumers.run import consume
from flowproof.core.config import Settings
from flowproof.core.connect import redis_client
from flowproof.core.routing import dlq_name
from flowproof.publisher.errors import SinkError
from flowproof.publisher.redis_sink import RedisSink
from flowproof.publisher.relay import Relay
from flowproof.publisher.rows import Message
from flowproof.publisher.sink import Placed
from flowproof.verifier.commands import check_once
from flowproof.verifier.lanes import SinkSnapshot
from flowproof.verifier.model import FLOW_LOST
from flowproof.verifier.redis_lag import redis_snapshot
from tests.private_services import PrivateRedisCluster
from tests.readback import insert_canaries, unpublished
from tests.test_consumer_support import bad_messages

PER_AGGREGATE = 25
AGGREGATES = ["x-1", "x-2", "x-3"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedisCluster]:
    with PrivateRedisCluster(tmp_path_factory.mktemp("redis-cluster")) as servers:
        yield servers


@pytest.fixture
def on_cluster(settings: Settings, cluster: PrivateRedisCluster) -> Settings:
    return settings.model_copy(update={"redis_url": SecretStr(cluster.url), "sinks": ("redis",)})


@pytest.fixture
async def client(on_cluster: Settings) -> AsyncIterator[RedisCluster]:
    cluster_client = redis_client(on_cluster)
    assert isinstance(cluster_client, RedisCluster)
    await cluster_client.initialize()
    yield cluster_client
    async for key in cluster_client.scan_iter(match=f"{on_cluster.stream_prefix}*"):
        await cluster_client.delete(key)
    await cluster_client.aclose()


def node_of(client: RedisCluster, key: str) -> str:
    node = client.get_node_from_key(key)
    assert node is not None
    return node.name


def spread_types(client: RedisCluster, prefix: str) -> list[str]:
    """Aggregate types whose streams, and whose dead-letter streams, cover every primary."""
    primaries = {node.name for node in client.get_primaries()}
    chosen: list[str] = []
    streams: set[str] = set()
    dlqs: set[str] = set()
    for n in range(1000):
        name = f"spread{n}"
        stream = f"{prefix}{name}"
        here, dlq_here = node_of(client, stream), node_of(client, dlq_name(stream))
        if here not in streams or dlq_here not in dlqs:
            chosen.append(name)
            streams.add(here)
            dlqs.add(dlq_here)
        if streams == primaries and dlqs == primaries:
            return chosen
    raise AssertionError("no aggregate types cover every primary")


async def snapshot(client: RedisCluster, prefix: str, group: str) -> SinkSnapshot:
    """What the verifier reads of the Redis side (its window: the last 10 minutes)."""
    now = time.time()
    return await redis_snapshot(
        client,
        prefix=prefix,
        expected_groups=[group],
        alive_within=30.0,
        window_start=now - 600,
        now=now,
    )


async def test_publish_consume_verify_on_every_node(
    on_cluster: Settings, database_url: str, client: RedisCluster
) -> None:
    prefix = on_cluster.stream_prefix
    types = spread_types(client, prefix)
    conn = await asyncpg.connect(database_url)
    try:
        for aggregatetype in types:
            await insert_canaries(conn, AGGREGATES, PER_AGGREGATE, aggregatetype=aggregatetype)
        await Relay(on_cluster).run_until_idle()
        assert await unpublished(conn, "redis") == 0
        recorded = await conn.fetch(
            "SELECT destination, count(*) AS n FROM flowproof_outbox_deliveries "
            "WHERE sink = 'redis' GROUP BY destination"
        )
    finally:
        await conn.close()
    per_stream = len(AGGREGATES) * PER_AGGREGATE
    assert {r["destination"]: r["n"] for r in recorded} == {
        f"{prefix}{t}": per_stream for t in types
    }
    for aggregatetype in types:
        assert await client.xlen(f"{prefix}{aggregatetype}") == per_stream

    # One undecodable entry in every stream: each goes to its .dlq, wherever that lives.
    bad = bad_messages()["bad_magic"]
    for aggregatetype in types:
        await client.xadd(f"{prefix}{aggregatetype}", bad.redis_fields())  # type: ignore[arg-type]

    group = on_cluster.consumer_group
    before = await snapshot(client, prefix, group)
    (lanes,) = [g for g in before.groups if g.group == group]
    behind = {lane.source: lane.behind for lane in lanes.lanes}
    assert behind == {f"{prefix}{t}": per_stream + 1 for t in types}
    assert {node_of(client, s) for s in behind} == {n.name for n in client.get_primaries()}

    stats = await consume(on_cluster, sink="redis", group=group, drain=True)
    assert stats.receipts == len(types) * (per_stream + 1)

    after = await snapshot(client, prefix, group)
    (lanes,) = [g for g in after.groups if g.group == group]
    assert all(lane.behind == 0 and lane.pending == 0 for lane in lanes.lanes)
    dead = {d.name: d.depth for d in after.dead_letters}
    assert dead == {dlq_name(f"{prefix}{t}"): 1 for t in types}
    assert {node_of(client, d) for d in dead} == {n.name for n in client.get_primaries()}

    report = await check_once(on_cluster.model_copy(update={"flow_lost_grace_seconds": 0.0}))
    lost = report.check(FLOW_LOST)
    assert lost.passed, lost.detail
    assert any(f.data.get("judged") == len(types) * per_stream for f in lost.findings), lost


async def test_a_refused_stream_holds_back_no_other(
    on_cluster: Settings, client: RedisCluster
) -> None:
    """One transaction per stream, on its node: the stream Redis refuses (WRONGTYPE: the key is
    a string) fails alone, the others' entries are placed, their ids given back in order."""
    prefix = on_cluster.stream_prefix
    types = spread_types(client, prefix)
    refused = types[0]
    await client.set(f"{prefix}{refused}", "not a stream")
    messages = [
        Message(
            seq=n,
            aggregate=(aggregatetype, f"a-{n % 2}"),
            destination=f"{prefix}{aggregatetype}",
            key=f"a-{n % 2}".encode(),
            value=b"\x00value",
            fields={"id": str(n).encode()},
        )
        for n, aggregatetype in enumerate(types * 3)
    ]
    sink = RedisSink(on_cluster)
    try:
        await sink.start()
        outcomes = await sink.publish(messages)
    finally:
        await sink.close()
    for message, outcome in zip(messages, outcomes, strict=True):
        if message.destination == f"{prefix}{refused}":
            assert isinstance(outcome, SinkError) and "WRONGTYPE" in outcome.detail, outcome
            continue
        assert isinstance(outcome, Placed), outcome
        entries = await client.xrange(message.destination, outcome.position, outcome.position)
        assert entries and entries[0][1][b"id"] == str(message.seq).encode()
    placed = {
        m.destination for m, o in zip(messages, outcomes, strict=True) if isinstance(o, Placed)
    }
    assert {node_of(client, s) for s in placed} | {node_of(client, f"{prefix}{refused}")} == {
        n.name for n in client.get_primaries()
    }
