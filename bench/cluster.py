"""`make bench`'s Redis Cluster figures: the relay publishing to a 3-primary Redis Cluster (the
devstack's, DEVSTACK_REDIS_CLUSTER_URL) beside the raw limit of that cluster, measured the same
way as the single server's (bench/raw.py): the relay's exact messages, one pipeline per relay
batch, each awaited in turn; here one pipeline per node of the batch, sent at once.

The benchmark workload has one aggregate type (`order`), hence one stream, which a Cluster keeps
on one node. To spread the load over the nodes, as several aggregate types would, each aggregate
of the pool is given one of a few aggregate types (`order-a`, `order-b`, ...) chosen so that
every primary holds two of their streams; an aggregate keeps its type, so its order holds.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import zlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster

from bench.payloads import Pool, Row
from bench.raw import batches
from bench.scratch import STACK_ENV
from flowproof.core.config import Settings
from flowproof.core.connect import redis_client
from flowproof.publisher.redis_sink import xadd_command
from flowproof.publisher.rows import Message

CLUSTER_ENV = "DEVSTACK_REDIS_CLUSTER_URL"
STREAMS_PER_NODE = 2


def cluster_url() -> str:
    """The devstack's Redis Cluster (the environment, else .devstack/env)."""
    url = os.environ.get(CLUSTER_ENV)
    if not url and STACK_ENV.is_file():
        for line in STACK_ENV.read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == CLUSTER_ENV:
                url = value.strip()
    if not url:
        raise SystemExit(f"{CLUSTER_ENV} is not set: run `make stack-up` (or set it) first")
    return url


async def _client(settings: Settings) -> RedisCluster:
    client = redis_client(settings)
    if not isinstance(client, RedisCluster):
        raise SystemExit(f"{CLUSTER_ENV} does not name a Redis Cluster (redis+cluster://)")
    await client.initialize()
    return client


async def spread_types(settings: Settings) -> list[str]:
    """Aggregate types whose streams (under the settings' prefix) put STREAMS_PER_NODE on every
    primary of the cluster."""
    client = await _client(settings)
    try:
        primaries = {node.name for node in client.get_primaries()}
        per_node: dict[str, list[str]] = {name: [] for name in primaries}
        for n in range(10_000):
            name = f"order-{n}"
            node = client.get_node_from_key(f"{settings.stream_prefix}{name}")
            assert node is not None
            if len(per_node[node.name]) < STREAMS_PER_NODE:
                per_node[node.name].append(name)
            if all(len(names) == STREAMS_PER_NODE for names in per_node.values()):
                return sorted(name for names in per_node.values() for name in names)
    finally:
        await client.aclose()
    raise SystemExit("no aggregate types spread over every primary of the cluster")


def spread_pool(pool: Pool, types: Sequence[str]) -> Pool:
    """The pool with each aggregate given one of `types` (the same for all its events)."""

    def typed(row: Row) -> str:
        return types[zlib.crc32(row.aggregateid.encode()) % len(types)]

    return Pool([Row(typed(r), r.aggregateid, r.type, r.payload) for r in pool.rows])


async def pipelined(settings: Settings, messages: Sequence[Message]) -> float:
    """Messages/s of redis-py's ClusterPipeline of XADD (it sends one pipeline per node), one
    per relay batch, each awaited in turn."""
    client = await _client(settings)
    try:
        started = time.monotonic()
        for chunk in batches(messages, settings.relay_batch_size):
            pipe = client.pipeline()
            for message in chunk:
                fields: dict[Any, Any] = {**message.fields, "payload": message.value}
                pipe.xadd(message.destination, fields)
            await pipe.execute()
        return len(messages) / (time.monotonic() - started)
    finally:
        await client.aclose()


async def packed(settings: Settings, messages: Sequence[Message]) -> float:
    """Messages/s of XADDs packed by hiredis, a relay batch at a time: each node's commands
    written at once on a connection of its own, all nodes at the same time, then the replies."""
    client = await _client(settings)
    try:
        started = time.monotonic()
        for chunk in batches(messages, settings.relay_batch_size):
            by_node: dict[Any, list[bytes]] = {}
            for message in chunk:
                node = client.get_node_from_key(message.destination)
                by_node.setdefault(node, []).append(xadd_command(message, None))
            await asyncio.gather(*(_send(node, commands) for node, commands in by_node.items()))
        return len(messages) / (time.monotonic() - started)
    finally:
        await client.aclose()


async def _send(node: Any, commands: list[bytes]) -> None:
    conn = node.acquire_connection()
    try:
        await conn.send_packed_command(b"".join(commands))
        for _ in commands:
            reply = await conn.read_response(timeout=math.inf)
            if isinstance(reply, Exception):
                raise reply
    finally:
        node.release(conn)
