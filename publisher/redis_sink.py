"""Publishing to Redis Streams: one pipelined XADD per event, in seq order, on one connection.

Redis runs a connection's commands in order, so when the connection breaks mid-pipeline what ran
is a prefix of the batch: the replies read before the break are marked, the rest is published
again (nothing is reordered; at most what ran unseen is duplicated). redis-py's own retries are
off: the relay's retry policy is the only one.

The batch is packed by hiredis (C) and written to one pooled connection at once, then the replies
are read in order: the same wire exchange as redis-py's pipeline, without its per-command Python
packing and bookkeeping, which cost more than the rest of the relay's Redis work together.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

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


def xadd_command(message: Message, maxlen: int | None) -> bytes:
    """The XADD of one message in the Redis protocol: envelope fields, then `payload`."""
    args: list[str | bytes] = ["XADD", message.destination]
    if maxlen is not None:
        args += ["MAXLEN", "~", str(maxlen)]
    args.append("*")
    for name, value in message.fields.items():
        args.append(name)
        args.append(value)
    args.append(PAYLOAD_FIELD)
    args.append(message.value)
    packed: bytes = hiredis.pack_command(tuple(args))  # type: ignore[arg-type]  # stub too narrow
    return packed


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
        maxlen = self._settings.relay_redis_maxlen
        packed = b"".join([xadd_command(message, maxlen) for message in messages])
        pool = self._connect().connection_pool
        try:
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        except (RedisError, OSError, TimeoutError) as exc:
            return [_error(exc)] * len(messages)
        outcomes: Outcomes = []
        timeout = self._settings.relay_sink_timeout_seconds
        try:
            await conn.send_packed_command(packed)
            # One time limit for all the replies, not one timer per reply (`math.inf`: none).
            async with asyncio.timeout(timeout):
                for _ in messages:
                    try:
                        await conn.read_response(timeout=math.inf)
                    except ResponseError as exc:  # this XADD was refused; the connection is fine
                        outcomes.append(_error(exc))
                    else:
                        outcomes.append(None)
        except (RedisError, OSError, TimeoutError) as exc:
            # redis-py has dropped the connection (as it does on cancellation and our time
            # limit): the replies read are acknowledged; the rest may or may not have run.
            error = _error(exc)
            if isinstance(exc, TimeoutError) and not str(exc):
                error = SinkError(NAME, f"no reply within {timeout} s")
            outcomes += [error] * (len(messages) - len(outcomes))
        finally:
            await pool.release(conn)
        return outcomes

    async def reset(self) -> None:
        await self.close()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
