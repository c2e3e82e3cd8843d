"""The Redis Streams consumer: one member of a consumer group over every stream it consumes.

Streams are `<stream_prefix><aggregatetype>`, either the configured aggregate types or every
stream under the prefix (except `.dlq` ones), looked for again every discovery interval. Groups
are created when absent (XGROUP CREATE ... 0 MKSTREAM, so a new group reads the whole stream).
Each turn of the loop takes one batch, in this order of preference:

1. at start, this consumer's own pending entries (a restart under the same name);
2. entries another consumer read but left unacknowledged longer than the claim idle time
   (XAUTOCLAIM: a dead consumer's work is taken over), checked every half idle time;
3. new entries (XREADGROUP >, with a short block).

Delivery counts come from XPENDING; an entry delivered more than the allowed number of times
goes to `<stream>.dlq` (max_deliveries). A batch is acknowledged (XACK) only after its dead
letters and receipts are written (consumers.commit); the next batch is read and processed
meanwhile. That durable end is waited for before the consumer reads its own pending entries (1)
or claims (2), which would take the entries in flight again, and before it stops.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    BusyLoadingError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)

from flowproof.consumers.commit import BatchCommitter, CommitLane, ConsumerStats
from flowproof.consumers.deadletter import VALUE_DROPPED, DeadLetter, Unwritable
from flowproof.consumers.delivery import Delivery
from flowproof.consumers.errors import AckFailed, DeadLetterFailed
from flowproof.consumers.options import ConsumerOptions
from flowproof.consumers.processing import Processor
from flowproof.consumers.receipts import ReceiptWriter
from flowproof.core import metrics
from flowproof.core.aio import sleep_unless_stopped
from flowproof.core.config import Settings
from flowproof.core.connect import RedisClient, ping_redis, redis_client
from flowproof.core.logging import get_logger
from flowproof.core.retry import RetryPolicy
from flowproof.core.routing import InvalidDestination, destination, is_dlq
from flowproof.schemas.envelope import PAYLOAD_FIELD

log = get_logger(__name__)

# On a Redis Cluster, the pause after a read of every stream found nothing (instead of BLOCK).
CLUSTER_POLL_SECONDS = 0.05

# An entry as redis-py returns it: (entry id, fields), fields None when the entry was trimmed.
Entry = tuple[bytes, dict[bytes, bytes] | None]


_PAYLOAD = PAYLOAD_FIELD.encode()


@lru_cache(maxsize=4096)
def _field_name(raw: bytes) -> str:
    # The same few field names on every entry: decoded once.
    return raw.decode("utf-8", "surrogateescape")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# Refusals that pass: the dead letter is sent again (with its batch) until Redis takes it. Any
# other error reply (WRONGTYPE: the DLQ key is not a stream, NOPERM: the ACL forbids it, ...)
# will not change by retrying.
_TRANSIENT = frozenset(
    {"OOM", "BUSY", "MISCONF", "LOADING", "READONLY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN"}
)


def _transient(error: ResponseError) -> bool:
    # redis-py turns some codes into classes and drops the code from the text.
    mapped = (OutOfMemoryError, BusyLoadingError, ReadOnlyError, TryAgainError, MasterDownError)
    return isinstance(error, mapped) or str(error).split(" ", 1)[0] in _TRANSIENT


class RedisDeadLetters:
    """Dead letters as entries of `<stream>.dlq`: the original fields plus `dlq_*` ones."""

    def __init__(self, client: RedisClient, options: ConsumerOptions) -> None:
        self._client = client
        self._options = options

    async def send(self, letters: Sequence[DeadLetter]) -> list[Unwritable]:
        if not letters:
            return []
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for letter in letters:
                    pipe.xadd(letter.destination, self._fields(letter))  # type: ignore[arg-type]
                results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            raise DeadLetterFailed(f"XADD to the DLQ failed: {exc}") from exc
        unwritable: list[Unwritable] = []
        for letter, result in zip(letters, results, strict=True):
            if not isinstance(result, Exception):
                continue
            if not isinstance(result, ResponseError) or _transient(result):
                # Redis may take it later (memory freed, a failover over): the batch is retried.
                raise DeadLetterFailed(f"XADD to {letter.destination} failed: {result}")
            unwritable.append(Unwritable(letter, f"XADD to {letter.destination}: {result}"))
        return unwritable

    def _fields(self, letter: DeadLetter) -> dict[bytes, bytes]:
        delivery = letter.delivery
        fields = {
            name.encode("utf-8", "surrogateescape"): value for name, value in delivery.headers
        }
        if delivery.value is not None:
            fields[PAYLOAD_FIELD.encode()] = delivery.value
        else:
            fields[VALUE_DROPPED.encode()] = b"the entry had no payload field"
        for name, value in letter.annotations(self._options.group, self._options.name):
            fields[name.encode()] = value
        return fields


class RedisConsumer:
    """Consumes the streams of one consumer group with a client it is given (and does not close).

    `run(stop)` returns when `stop` is set (after the batches in hand are committed), or with
    `drain=True` as soon as nothing is left to read or claim.
    """

    def __init__(
        self,
        client: RedisClient,
        processor: Processor,
        committer: BatchCommitter,
        options: ConsumerOptions,
    ) -> None:
        self._client = client
        self._processor = processor
        self._committer = committer
        self._lane = CommitLane(committer)
        self._options = options
        self._streams: list[str] = []
        self._groups_ready: set[str] = set()
        self._ignored: set[str] = set()  # streams under the prefix that are not flowproof's
        self._claim_cursors: dict[str, bytes] = {}
        self._rotation = 0  # the stream a Cluster read starts with (see `_xreadgroup`)
        self._own_pending = True
        self._next_discovery = 0.0
        self._next_claim = 0.0
        # Half the idle time, so an entry waits at most 1.5 idle times before it is taken over.
        self._claim_interval = min(max(options.claim_idle_ms / 2000, 0.05), 5.0)
        self._retry = RetryPolicy(base=0.2, cap=5.0)

    @property
    def streams(self) -> list[str]:
        return list(self._streams)

    async def run(self, stop: asyncio.Event, *, drain: bool = False) -> None:
        """Consume until `stop` is set (or, when draining, until nothing is left)."""
        failures = 0
        try:
            while not stop.is_set():
                try:
                    batch = await self._next_batch(stop, drain=drain)
                    failures = 0
                except (RedisError, RedisClusterException, OSError) as exc:
                    failures += 1
                    metrics.CONSUMER_ERRORS.labels(**self._options.labels, operation="read").inc()
                    delay = self._retry.delay(failures) or self._retry.cap
                    log.error("consumer.read_failed", error=str(exc), retry_in=round(delay, 2))
                    await sleep_unless_stopped(stop, delay)
                    continue
                if batch:
                    await asyncio.shield(self._finish(batch))
                elif drain:
                    break
        finally:
            await self._lane.settle()
        await self._leave()

    # --- where batches come from ----------------------------------------------------------------

    async def _next_batch(self, stop: asyncio.Event, *, drain: bool) -> list[Delivery]:
        now = time.monotonic()
        if now >= self._next_discovery:
            await self._discover()
            self._next_discovery = now + self._options.discovery_interval
        if not self._streams:
            if not drain:
                await sleep_unless_stopped(stop, self._options.discovery_interval)
            return []
        if self._own_pending:
            await self._lane.settle()  # the entries in flight are still this consumer's pending
            batch = await self._read("0")
            if batch:
                return batch
            self._own_pending = False
        if drain or now >= self._next_claim:
            await self._lane.settle()  # its entries are pending, and idle for a while
            batch = await self._claim()
            if batch:
                return batch
            self._next_claim = now + self._claim_interval
        return await self._read(">", block_ms=None if drain else self._options.block_ms)

    async def _discover(self) -> None:
        if self._options.aggregatetypes:
            found = [destination(self._options.prefix, a) for a in self._options.aggregatetypes]
        else:
            keys = {
                key
                async for key in self._client.scan_iter(
                    match=f"{self._options.prefix}*", _type="stream", count=1000
                )
            }
            found = sorted(name for name in map(self._consumable, keys) if name is not None)
        for stream in found:
            if stream not in self._groups_ready:
                await self._ensure_group(stream)
        if found != self._streams:
            log.info("consumer.streams", streams=found, group=self._options.group)
        self._streams = found

    def _consumable(self, key: bytes | str) -> str | None:
        """The stream's name if a relay could have written it, else None.

        Redis keys are binary: a stream under the prefix may have a name no aggregatetype gives
        (not UTF-8, a NUL, a space), which would crash the decoding or make receipts PostgreSQL
        refuses. Such a stream is not flowproof's: it is left alone, and said so once.
        """
        name = key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else key
        if is_dlq(name):
            return None
        try:
            destination("", name)
        except InvalidDestination as exc:
            if name not in self._ignored:
                self._ignored.add(name)
                log.warning("consumer.stream_ignored", stream=ascii(name), error=str(exc))
            return None
        return name

    async def _ensure_group(self, stream: str) -> None:
        try:
            await self._client.xgroup_create(stream, self._options.group, id="0", mkstream=True)
            log.info("consumer.group_created", stream=stream, group=self._options.group)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups_ready.add(stream)

    async def _read(self, last_id: str, block_ms: int | None = None) -> list[Delivery]:
        try:
            response: Any = await self._xreadgroup(last_id, block_ms)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # A stream or its group was deleted under us: create them again on the next turn.
            log.warning("consumer.group_missing", error=str(exc))
            self._groups_ready.clear()
            self._next_discovery = 0.0
            return []
        received_at = dt.datetime.now(dt.UTC)
        batch: list[Delivery] = []
        for stream_key, entries in response or []:
            stream = _text(stream_key)
            counts = await self._delivery_counts(stream, entries) if last_id != ">" else {}
            batch += await self._deliveries(stream, entries, received_at, counts)
        return batch

    async def _xreadgroup(self, last_id: str, block_ms: int | None) -> Any:
        """XREADGROUP over every stream: one command on one server; on a Redis Cluster (one
        hash slot per command) one per stream, without BLOCK, starting with a different stream
        each time so that a busy one cannot starve the others, then a short pause when none
        had anything."""
        options = self._options
        if not isinstance(self._client, RedisCluster):
            return await self._client.xreadgroup(
                options.group,
                options.name,
                dict.fromkeys(self._streams, last_id),
                count=options.batch_size,
                block=block_ms,
            )
        self._rotation = (self._rotation + 1) % len(self._streams)
        order = self._streams[self._rotation :] + self._streams[: self._rotation]
        response: list[Any] = []
        room = options.batch_size
        for stream in order:
            if room <= 0:
                break
            got: Any = await self._client.xreadgroup(
                options.group, options.name, {stream: last_id}, count=room
            )
            for key, entries in got or []:
                if entries:
                    response.append((key, entries))
                    room -= len(entries)
        if not response and block_ms:
            await asyncio.sleep(min(block_ms / 1000, CLUSTER_POLL_SECONDS))
        return response

    async def _claim(self) -> list[Delivery]:
        batch: list[Delivery] = []
        for stream in self._streams:
            room = self._options.batch_size - len(batch)
            if room <= 0:
                break
            cursor, entries, trimmed = await self._client.xautoclaim(
                stream,
                self._options.group,
                self._options.name,
                min_idle_time=self._options.claim_idle_ms,
                start_id=self._claim_cursors.get(stream, b"0-0"),
                count=room,
            )
            self._claim_cursors[stream] = cursor
            if trimmed:
                log.warning("consumer.claimed_trimmed", stream=stream, entries=len(trimmed))
            if not entries:
                continue
            metrics.CONSUMER_REDIS_CLAIMED.labels(stream=stream, group=self._options.group).inc(
                len(entries)
            )
            log.info("consumer.claimed", stream=stream, entries=len(entries))
            counts = await self._delivery_counts(stream, entries)
            batch += await self._deliveries(stream, entries, dt.datetime.now(dt.UTC), counts)
        return batch

    async def _delivery_counts(self, stream: str, entries: Sequence[Entry]) -> dict[str, int]:
        if not entries:
            return {}
        ids = [_text(entry_id) for entry_id, _ in entries]
        pending: list[dict[str, Any]] = await self._client.xpending_range(
            stream,
            self._options.group,
            min=ids[0],
            max=ids[-1],
            count=len(ids),
            consumername=self._options.name,
        )
        return {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}

    async def _deliveries(
        self,
        stream: str,
        entries: Sequence[Entry],
        received_at: dt.datetime,
        counts: dict[str, int],
    ) -> list[Delivery]:
        deliveries = []
        trimmed = []
        for entry_id, fields in entries:
            position = _text(entry_id)
            if not fields:  # trimmed from the stream before anyone acknowledged it
                trimmed.append(position)
                continue
            payload = fields.get(_PAYLOAD)
            headers = tuple(
                (_field_name(name), value) for name, value in fields.items() if name != _PAYLOAD
            )
            deliveries.append(
                Delivery(
                    source=stream,
                    position=position,
                    headers=headers,
                    value=payload,
                    received_at=received_at,
                    delivery_count=counts.get(position, 1),
                )
            )
        if trimmed:
            # Nothing is left to receipt or dead-letter; acknowledge so they stop coming back.
            log.warning("consumer.pending_trimmed", stream=stream, entries=len(trimmed))
            await self._client.xack(stream, self._options.group, *trimmed)
        return deliveries

    # --- finishing a batch ----------------------------------------------------------------------

    async def _finish(self, batch: list[Delivery]) -> None:
        outcome = await self._processor.process(batch)
        self._processor.observe(outcome)
        await self._lane.hand_off(outcome, lambda: self._ack(batch))

    async def _ack(self, batch: Sequence[Delivery]) -> None:
        by_stream: dict[str, list[str]] = {}
        for delivery in batch:
            by_stream.setdefault(delivery.source, []).append(delivery.position)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for stream, ids in by_stream.items():
                    pipe.xack(stream, self._options.group, *ids)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise AckFailed(f"XACK failed: {exc}") from exc

    async def _leave(self) -> None:
        """Remove this consumer from its groups when it holds no pending entries.

        A consumer with pending entries stays, so that others can claim them (deleting it
        would drop them from the group's pending list).
        """
        for stream in self._streams:
            try:
                consumers: list[dict[str, Any]] = await self._client.xinfo_consumers(
                    stream, self._options.group
                )
                mine = [c for c in consumers if _text(c["name"]) == self._options.name]
                if mine and int(mine[0]["pending"]) == 0:
                    await self._client.xgroup_delconsumer(
                        stream, self._options.group, self._options.name
                    )
            except (RedisError, OSError) as exc:
                log.warning("consumer.leave_failed", stream=stream, error=str(exc))


async def consume_redis(
    settings: Settings,
    processor: Processor,
    options: ConsumerOptions,
    writer: ReceiptWriter,
    *,
    stop: asyncio.Event,
    drain: bool,
) -> ConsumerStats:
    """Consume the Redis streams of `options` until stopped (or drained); see consumers.run."""
    client = redis_client(settings)
    try:
        await ping_redis(client)
        committer = BatchCommitter(options, writer, RedisDeadLetters(client, options), stop)
        consumer = RedisConsumer(client, processor, committer, options)
        await consumer.run(stop, drain=drain)
        return committer.stats
    finally:
        await client.aclose()
