"""The Redis sink's round trips: one PING when it connects, none per batch (real redis-server).

Each batch is MULTI, then the XADDs and EXEC; a PING before every batch was one round trip more
per batch, which at a steady low rate (a few events a batch) is a third of the relay's Redis
traffic and a wait on every event's way. A private server, so that the counts are this test's.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import redis.asyncio as aioredis
from pydantic import SecretStr

from flowproof.core.config import Settings
from flowproof.publisher.redis_sink import RedisSink
from flowproof.publisher.rows import Message
from flowproof.publisher.sink import Placed
from tests.private_services import PrivateRedis


def _message(seq: int, prefix: str) -> Message:
    fields = {"id": str(uuid.uuid4()).encode(), "type": b"orders.OrderPlaced"}
    return Message(seq, ("order", "o-1"), f"{prefix}order", b"o-1", b"\x00value", fields)


async def _calls(url: str, command: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_the_sink_pings_when_it_connects_and_not_per_batch(
    settings: Settings, tmp_path: Path
) -> None:
    with PrivateRedis(tmp_path / "redis") as server:
        sink = RedisSink(settings.model_copy(update={"redis_url": SecretStr(server.url)}))
        prefix = settings.stream_prefix
        try:
            await sink.start()
            await sink.publish([_message(1, prefix)])
            # The client is connected (redis-py's first command on a new connection may add a
            # health-check PING of its own): from here on, no batch adds one.
            pings = await _calls(server.url, "ping")
            for batch in range(1, 5):
                await sink.start()  # what the worker does before every batch
                outcomes = await sink.publish([_message(batch * 2 + n, prefix) for n in (0, 1)])
                assert all(isinstance(o, Placed) for o in outcomes), outcomes
            assert await _calls(server.url, "ping") == pings
            assert await _calls(server.url, "xadd") == 9
            assert await _calls(server.url, "multi") == 5

            # After a failure the worker resets the sink: the next start checks the server again.
            await sink.reset()
            await sink.start()
            assert await _calls(server.url, "ping") > pings
        finally:
            await sink.close()
