"""Publishing to Redis Streams: one pipelined XADD per event, in seq order, on one connection.

Redis runs a connection's commands in order, so when the connection breaks mid-pipeline what ran
is a prefix of the batch: nothing is reordered, and republishing the batch duplicates at most
that prefix. redis-py's own retries are off: the relay's retry policy is the only one.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from flowproof.config import Settings
from flowproof.connect import redis_client
from flowproof.redact import scrub
from publisher.encoding import Message
from publisher.errors import SinkError
from publisher.sink import Outcomes
from schemas.envelope import PAYLOAD_FIELD

NAME = "redis"


def _error(exc: BaseException) -> SinkError:
    return SinkError(NAME, scrub(f"{type(exc).__name__}: {exc}"))


class RedisSink:
    """XADD to the stream `<stream prefix><aggregatetype>`, optionally capped (MAXLEN ~)."""

    name = NAME

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: aioredis.Redis | None = None

    def _connect(self) -> aioredis.Redis:
        if self._client is None:
            timeout = self._settings.relay_sink_timeout_seconds
            self._client = redis_client(
                self._settings,
                socket_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
        return self._client

    async def start(self) -> None:
        client = self._connect()
        try:
            await client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            raise _error(exc) from None

    async def publish(self, messages: Sequence[Message]) -> Outcomes:
        pipe = self._connect().pipeline(transaction=False)
        maxlen = self._settings.relay_redis_maxlen
        for message in messages:
            fields: dict[FieldT, EncodableT] = {k: v for k, v in message.fields.items()}
            fields[PAYLOAD_FIELD] = message.value
            pipe.xadd(message.destination, fields, maxlen=maxlen, approximate=True)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError, TimeoutError) as exc:
            error = _error(exc)
            return [error] * len(messages)
        return [_error(r) if isinstance(r, BaseException) else None for r in replies]

    async def reset(self) -> None:
        await self.close()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
