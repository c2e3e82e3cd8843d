"""Publishing to Redis Streams: a batch is one transaction (MULTI, an XADD per event, EXEC).

A batch is all or nothing. Redis refuses a command when it is queued (OOM under `noeviction`,
BUSY while a script runs, MISCONF after a failed save, NOPERM) and then discards the whole
transaction (EXECABORT): nothing of the batch is in the stream and all of it is published again,
in order. Without the transaction, the commands after a refused one would run, and the refused
event, published again later, would land after later events of its aggregate. MULTI's own reply
is awaited before the XADDs are sent: were MULTI refused, they would run one by one.

With a Redis Cluster (`redis+cluster://`) a transaction may only touch one hash slot, so a batch
becomes one transaction per stream (a stream is one key), all sent at once, each on a connection
to the primary of its stream's slot: the guarantees above hold per stream, which is where an
aggregate's events go, and a refused or unreachable stream holds back no other. A MOVED or ASK
refusal (the slot moved, or a replica took over) fails that stream's transaction; the relay then
resets the client, which learns the slots again before the batch is published again.

A refusal of one stream only (NOPERM, WRONGTYPE) must not hold back the others: when Redis names
the refused commands, the batch is sent again at once without every event of their aggregates,
which fail and are retried (still in order) by the relay. When the connection breaks before
EXEC's reply, the batch may or may not have run: it is published again (at most a batch of
duplicates, never a reordering, as Redis runs a transaction whole). redis-py's own retries are
off: the relay's retry policy is the only one.

With FLOWPROOF_RELAY_REDIS_MIN_REPLICAS = n > 0, EXEC is followed on the same connection by
`WAIT n <timeout>`: Redis answers how many replicas have acknowledged every write of the
connection so far. Fewer than n is a shortfall: the whole batch is reported failed (nothing of it
is marked published, so a failover cannot lose what the outbox considers delivered), counted in
`flowproof_relay_redis_replica_shortfalls_total`, logged, and published again by the relay's
retry (the copies already on the primary are at most a batch of duplicates per attempt).

The batch is packed by hiredis (C) and written to one pooled connection at once, then the replies
are read in order: the same wire exchange as redis-py's pipeline, without its per-command Python
packing and bookkeeping, which cost more than the rest of the relay's Redis work together.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import hiredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ExecAbortError, RedisClusterException, RedisError, ResponseError

from flowproof.core.config import Settings
from flowproof.core.connect import RedisClient, redis_client
from flowproof.core.logging import get_logger
from flowproof.core.metrics import RELAY_REDIS_REPLICA_SHORTFALLS
from flowproof.core.redact import scrub
from flowproof.publisher.errors import SinkError
from flowproof.publisher.rows import Message
from flowproof.publisher.sink import Outcome, Outcomes, Placed
from flowproof.schemas.envelope import PAYLOAD_FIELD

NAME = "redis"

log = get_logger(__name__)


_FAILURES = (RedisError, OSError, TimeoutError)


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


_MULTI: bytes = hiredis.pack_command(("MULTI",))
_EXEC: bytes = hiredis.pack_command(("EXEC",))


def wait_command(replicas: int, timeout_seconds: float) -> bytes:
    """`WAIT <replicas> <timeout ms>` in the Redis protocol (a timeout of at least 1 ms: 0 would
    block for ever)."""
    timeout_ms = max(1, round(timeout_seconds * 1000))
    packed: bytes = hiredis.pack_command(("WAIT", str(replicas), str(timeout_ms)))  # type: ignore[arg-type]  # stub too narrow
    return packed


def _shortfall(outcomes: Outcomes, confirmed: Any, required: int) -> Outcomes:
    """The outcomes of a batch after WAIT: unchanged when `required` replicas confirmed, else
    every placed message becomes a failure (published again, never marked)."""
    if isinstance(confirmed, int) and confirmed >= required:
        return outcomes
    RELAY_REDIS_REPLICA_SHORTFALLS.inc()
    placed = sum(1 for outcome in outcomes if isinstance(outcome, Placed))
    log.warning(
        "relay.redis_replica_shortfall",
        required=required,
        confirmed=confirmed if isinstance(confirmed, int) else scrub(str(confirmed)),
        events=placed,
    )
    error = SinkError(
        NAME,
        f"WAIT: {confirmed} of the {required} replicas required confirmed the batch; "
        "not marked published, published again",
    )
    return [error if isinstance(outcome, Placed) else outcome for outcome in outcomes]


async def _reply(conn: Any) -> Any:
    """The next reply, with an error reply returned instead of raised."""
    try:
        return await conn.read_response(timeout=math.inf)
    except ResponseError as exc:
        return exc


async def _transaction_replies(
    conn: Any, messages: Sequence[Message]
) -> tuple[Outcomes, dict[int, SinkError], bool]:
    """Read each XADD's and EXEC's replies: the outcomes, the commands refused when queued, and
    whether the connection is back outside a transaction."""
    refused: dict[int, SinkError] = {}
    for index in range(len(messages)):
        queued = await _reply(conn)
        if isinstance(queued, ResponseError):
            refused[index] = _error(queued)
    executed = await _reply(conn)
    if isinstance(executed, ResponseError) or not isinstance(executed, list):
        why = next(iter(refused.values()), executed)
        batch = SinkError(NAME, scrub(f"batch refused, nothing written ({why})"))
        outcomes: Outcomes = [refused.get(i, batch) for i in range(len(messages))]
        aborted = isinstance(executed, ExecAbortError) or "EXECABORT" in str(executed)
        return outcomes, refused, aborted
    return [_placed(m, r) for m, r in zip(messages, executed, strict=True)], {}, True


def _placed(message: Message, reply: Any) -> Placed | SinkError:
    if isinstance(reply, Exception):
        return _error(reply)
    entry = reply.decode() if isinstance(reply, bytes) else str(reply)
    return Placed(message.destination, None, entry)


class RedisSink:
    """XADD to the stream `<stream prefix><aggregatetype>`, optionally capped (MAXLEN ~)."""

    name = NAME

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: RedisClient | None = None
        self._answered = False  # the client answered a PING since it was made
        self._wait = wait_command(
            settings.relay_redis_min_replicas, settings.relay_redis_replica_timeout_seconds
        )

    def _connect(self) -> RedisClient:
        if self._client is None:
            timeout = self._settings.relay_sink_timeout_seconds
            self._client = redis_client(
                self._settings,
                socket_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
        return self._client

    async def start(self) -> None:
        """Connect and PING, once: a no-op while the client that answered is kept (a failed
        batch resets it, and the next start PINGs again). Not one PING per batch: that is a
        round trip more than the batch itself needs."""
        if self._answered:  # close() (and so reset()) clears it with the client
            return
        client = self._connect()
        try:
            await client.ping()
        except (*_FAILURES, RedisClusterException) as exc:
            raise _error(exc) from None
        self._answered = True

    async def publish(self, messages: Sequence[Message]) -> Outcomes:
        maxlen = self._settings.relay_redis_maxlen
        commands = [xadd_command(m, maxlen) for m in messages]
        if not isinstance(self._connect(), RedisCluster):
            return await self._publish(messages, commands)
        # A Cluster runs a transaction on one hash slot only: one per stream, all at once, each
        # on a connection to its stream's node.
        lanes: dict[str, list[int]] = {}
        for index, message in enumerate(messages):
            lanes.setdefault(message.destination, []).append(index)
        results = await asyncio.gather(
            *(
                self._publish([messages[i] for i in lane], [commands[i] for i in lane])
                for lane in lanes.values()
            )
        )
        by_index: dict[int, Outcome] = {}
        for lane, result in zip(lanes.values(), results, strict=True):
            by_index.update(zip(lane, result, strict=True))
        return [by_index[index] for index in range(len(messages))]

    async def _publish(self, messages: Sequence[Message], commands: Sequence[bytes]) -> Outcomes:
        """One transaction; when Redis refused some of its commands, once more without every
        event of their aggregates."""
        outcomes, refused = await self._transaction(messages, commands)
        if not refused or len(refused) == len(messages):
            return outcomes
        blocked = {messages[i].aggregate for i in refused}
        keep = [i for i, m in enumerate(messages) if m.aggregate not in blocked]
        if keep:
            again, _ = await self._transaction(
                [messages[i] for i in keep], [commands[i] for i in keep]
            )
            for index, outcome in zip(keep, again, strict=True):
                outcomes[index] = outcome
        held = SinkError(NAME, "not sent: an earlier event of its aggregate was refused")
        for index, message in enumerate(messages):
            if message.aggregate in blocked and index not in refused:
                outcomes[index] = held
        return outcomes

    async def _checkout(self, stream: str) -> tuple[Any, Callable[[Any], Awaitable[None]]]:
        """A connection to the server of `stream` (with a Cluster: the primary of its hash
        slot), and how to give it back."""
        client = self._connect()
        if isinstance(client, RedisCluster):
            await client.initialize()  # learns the slots once (again after a reset)
            node = client.get_node_from_key(stream)
            if node is None:  # only ever None when asked for a replica
                raise RedisClusterException(f"no node serves {stream}")
            conn = node.acquire_connection()

            async def release(connection: Any) -> None:
                node.release(connection)

            return conn, release
        pool = client.connection_pool
        return await pool.get_connection(), pool.release  # type: ignore[no-untyped-call]

    async def _transaction(
        self, messages: Sequence[Message], commands: Sequence[bytes]
    ) -> tuple[Outcomes, dict[int, SinkError]]:
        """MULTI, the XADDs, EXEC on one connection: the outcomes, and the commands Redis refused
        when they were queued (which made it discard the transaction)."""
        try:
            conn, release = await self._checkout(messages[0].destination)
        except (*_FAILURES, RedisClusterException) as exc:
            return [_error(exc)] * len(messages), {}
        timeout = self._settings.relay_sink_timeout_seconds
        required = self._settings.relay_redis_min_replicas
        clean = False
        try:
            # One time limit for all the replies, not one timer per reply (`math.inf`: none).
            async with asyncio.timeout(timeout):
                await conn.send_packed_command(_MULTI)
                started = await _reply(conn)
                if isinstance(started, ResponseError):
                    clean = True
                    return [_error(started)] * len(messages), {}
                await conn.send_packed_command(b"".join([*commands, _EXEC]))
                outcomes, refused, clean = await _transaction_replies(conn, messages)
                if required and clean and any(isinstance(o, Placed) for o in outcomes):
                    await conn.send_packed_command(self._wait)
                    outcomes = _shortfall(outcomes, await _reply(conn), required)
        except _FAILURES as exc:
            # redis-py has dropped the connection (as it does on cancellation and our time
            # limit): the transaction may or may not have run; all of it is published again.
            error = _error(exc)
            if isinstance(exc, TimeoutError) and not str(exc):
                error = SinkError(NAME, f"no reply within {timeout} s")
            return [error] * len(messages), {}
        finally:
            if not clean:
                # A connection left inside MULTI (EXEC itself refused) must not be reused.
                await conn.disconnect()
            await release(conn)
        return outcomes, refused

    async def reset(self) -> None:
        await self.close()

    async def close(self) -> None:
        client, self._client = self._client, None
        self._answered = False
        if client is not None:
            await client.aclose()
