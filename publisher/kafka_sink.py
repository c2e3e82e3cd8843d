"""Publishing to Kafka: an idempotent producer (acks=all), key = aggregateid, envelope headers.

The key decides the partition, so the events of one aggregate share a partition and keep their
order there. The relay awaits every send of a batch and marks only what the broker acknowledged.
After a failure the producer is thrown away and a new one started: a fresh idempotent session
instead of one whose sequence numbers may no longer match the broker's.

A claimed batch is already a batch: its messages are put into one record batch per partition
(aiokafka's `create_batch`/`send_batch`, partitioned as its default partitioner and the Java
client do, murmur2 of the key) and each record batch is sent at once, instead of handing every
message to the producer's accumulator one by one (a coroutine, a future and a partitioner call
per message) and waiting out the linger time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from flowproof.core.config import Settings
from flowproof.core.connect import kafka_client_kwargs
from flowproof.core.logging import get_logger
from flowproof.core.redact import scrub
from flowproof.publisher.errors import SinkError
from flowproof.publisher.kafka_retries import count_produce_retries
from flowproof.publisher.rows import Message
from flowproof.publisher.sink import Outcome, Outcomes, Placed

NAME = "kafka"
# Room for the record batch and request framing around the largest message the relay sends.
_REQUEST_OVERHEAD = 64 * 1024
_BATCH_BYTES = 256 * 1024

log = get_logger(__name__)


def _error(exc: BaseException) -> SinkError:
    return SinkError(NAME, scrub(f"{type(exc).__name__}: {exc}"))


@lru_cache(maxsize=16_384)
def key_hash(key: bytes) -> int:
    """The partitioner hash of a key (murmur2, positive), as aiokafka's and Java's default.

    aiokafka's murmur2 is pure Python (2 µs a key); an aggregate's events come close together,
    so the hashes of recent keys are remembered.
    """
    hashed: int = murmur2(key) & 0x7FFFFFFF
    return hashed


@dataclass(slots=True)
class RecordBatch:
    """The messages of one partition in one record batch, and where they are in the batch."""

    topic: str
    partition: int
    builder: BatchBuilder
    indexes: list[int] = field(default_factory=list)


def producer_options(settings: Settings) -> dict[str, Any]:
    """The relay's producer settings (the bench's raw Kafka limit uses the very same)."""
    return {
        **kafka_client_kwargs(settings),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": settings.relay_kafka_linger_ms,
        "max_batch_size": _BATCH_BYTES,
        "max_request_size": settings.relay_max_message_bytes + _REQUEST_OVERHEAD,
        "request_timeout_ms": int(settings.relay_sink_timeout_seconds * 1000),
    }


class KafkaSink:
    """Produces to the topic `<topic prefix><aggregatetype>`."""

    name = NAME

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        count_produce_retries()

    async def start(self) -> None:
        if self._producer is not None:
            return
        timeout = self._settings.relay_sink_timeout_seconds
        producer = AIOKafkaProducer(**producer_options(self._settings))
        try:
            async with asyncio.timeout(timeout):
                await producer.start()
        except (KafkaError, OSError, TimeoutError) as exc:
            await self._stop(producer)
            raise _error(exc) from None
        self._producer = producer

    async def publish(self, messages: Sequence[Message]) -> Outcomes:
        producer = self._producer
        if producer is None:
            return [SinkError(NAME, "producer not started")] * len(messages)
        outcomes: list[Outcome | None] = [None] * len(messages)
        batches = await self._record_batches(producer, messages, outcomes)
        pending: dict[int, asyncio.Future[object]] = {}
        broken: SinkError | None = None
        failed: set[tuple[str, int]] = set()
        for number, batch in enumerate(batches):
            error = broken
            if error is None and (batch.topic, batch.partition) in failed:
                # Sending it would let its events overtake the earlier ones of their aggregates.
                error = SinkError(NAME, "not sent: an earlier batch of its partition failed")
            if error is None:
                try:
                    pending[number] = await producer.send_batch(
                        batch.builder, batch.topic, partition=batch.partition
                    )
                    continue
                except (KafkaConnectionError, KafkaTimeoutError) as exc:
                    # The cluster is unreachable: each further send would wait out the timeout.
                    broken = error = _error(exc)
                except KafkaError as exc:
                    error = _error(exc)
                    failed.add((batch.topic, batch.partition))
            for index in batch.indexes:
                outcomes[index] = error
        if pending:
            # aiokafka retries a batch for a leader that is down forever (its batches expire
            # only while a partition has no leader), so the relay bounds the wait itself.
            await asyncio.wait(pending.values(), timeout=self._settings.relay_sink_timeout_seconds)
        for number, future in pending.items():
            batch = batches[number]
            problem = _problem(future, self._settings.relay_sink_timeout_seconds)
            # A record batch's records have consecutive offsets from the batch's base offset.
            base = -1 if problem is not None else future.result().offset  # type: ignore[attr-defined]
            for place, index in enumerate(batch.indexes):
                outcomes[index] = problem or Placed(
                    batch.topic, batch.partition, f"{batch.partition}:{base + place}"
                )
        return [o if o is not None else SinkError(NAME, "not sent") for o in outcomes]

    async def _record_batches(
        self,
        producer: AIOKafkaProducer,
        messages: Sequence[Message],
        outcomes: list[Outcome | None],
    ) -> list[RecordBatch]:
        """The messages in record batches by partition, in order; a message whose topic has no
        metadata gets its outcome here instead."""
        partitions: dict[str, list[int] | SinkError] = {}
        filling: dict[tuple[str, int], RecordBatch] = {}
        batches: list[RecordBatch] = []
        for index, message in enumerate(messages):
            topic = message.destination
            known = partitions.get(topic)
            if known is None:
                known = partitions[topic] = await _partitions(producer, topic)
            if isinstance(known, SinkError):
                outcomes[index] = known
                continue
            partition = known[key_hash(message.key) % len(known)]
            batch = filling.get((topic, partition))
            headers = list(message.fields.items())
            if batch is None or not _append(batch.builder, message, headers):
                batch = filling[(topic, partition)] = RecordBatch(
                    topic, partition, producer.create_batch()
                )
                batches.append(batch)
                _append(batch.builder, message, headers)  # a batch always takes its first record
            batch.indexes.append(index)
        if self._settings.relay_kafka_linger_ms == 0:
            for batch in batches:
                batch.builder.close()  # a closed batch is sent at once, not after the linger
        return batches

    async def reset(self) -> None:
        """Abandon the producer: its unsent batches are dropped, not delivered later (which
        would add duplicates beyond the batch the relay sends again), and it is closed."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            async with asyncio.timeout(self._settings.relay_sink_timeout_seconds):
                await _abandon(producer)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("relay.kafka_producer_stop_failed", sink=NAME, error=exc)

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._stop(producer)

    async def _stop(self, producer: AIOKafkaProducer) -> None:
        try:
            async with asyncio.timeout(self._settings.relay_sink_timeout_seconds):
                await producer.stop()
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("relay.kafka_producer_stop_failed", sink=NAME, error=exc)


async def _abandon(producer: AIOKafkaProducer) -> None:
    # aiokafka has no public "abort", and `stop()` flushes, which never ends while the broker
    # is down. So: stop its sender task first (it lets in-flight requests finish), then fail
    # the batches still queued (what aiokafka does itself when its sender dies), then `stop()`
    # has nothing left to flush. With another aiokafka lacking these, `stop()` times out.
    sender = getattr(producer, "_sender", None)
    close_sender = getattr(sender, "close", None)
    if callable(close_sender):
        await close_sender()
    accumulator = getattr(producer, "_message_accumulator", None)
    fail_all = getattr(accumulator, "fail_all", None)
    if callable(fail_all):
        fail_all(KafkaTimeoutError("producer abandoned after a failed batch"))
    await producer.stop()


async def _partitions(producer: AIOKafkaProducer, topic: str) -> list[int] | SinkError:
    """The partitions of `topic` (waiting for its metadata, as `send` does), or the error."""
    try:
        return sorted(await producer.partitions_for(topic))
    except KafkaError as exc:
        return _error(exc)


def _append(builder: BatchBuilder, message: Message, headers: list[tuple[str, bytes]]) -> bool:
    """Add the message to the record batch; False when the batch is full."""
    appended = builder.append(timestamp=None, key=message.key, value=message.value, headers=headers)
    return appended is not None


def _problem(future: asyncio.Future[object], timeout: float) -> SinkError | None:
    """What went wrong with a sent record batch, or None when the broker acknowledged it."""
    if not future.done():
        future.add_done_callback(_observed)
        return SinkError(NAME, f"no acknowledgement within {timeout} s")
    if future.cancelled():
        return SinkError(NAME, "send cancelled")
    problem = future.exception()
    return None if problem is None else _error(problem)


def _observed(future: asyncio.Future[object]) -> None:
    # The send was already counted as failed (no acknowledgement in time); this only retrieves
    # the late outcome so asyncio does not report it as never retrieved.
    if not future.cancelled():
        future.exception()
