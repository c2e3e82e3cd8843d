"""The Kafka consumer: one member of a consumer group over every topic it consumes.

Topics are `<topic_prefix><aggregatetype>`: the configured aggregate types, or a pattern
subscription to every topic under the prefix except `.dlq` ones (new topics are found at each
metadata refresh, every discovery interval). Offsets are committed by hand, only after a batch's
dead letters and receipts are written (consumers.commit), while the next batch is processed. A
rebalance listener makes the revocation of partitions wait until the batch in hand is processed
and every batch before it receipted and committed, so a rebalance costs at most the duplicates of
a batch whose commit the group refused, never a lost receipt.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    MessageSizeTooLargeError,
)
from aiokafka.structs import TopicPartition

from flowproof.consumers.commit import BatchCommitter, CommitLane, ConsumerStats, DeadLetterSink
from flowproof.consumers.deadletter import VALUE_DROPPED, DeadLetter, Unwritable
from flowproof.consumers.delivery import Delivery
from flowproof.consumers.errors import AckFailed, DeadLetterFailed
from flowproof.consumers.options import ConsumerOptions
from flowproof.consumers.processing import Processor
from flowproof.consumers.receipts import ReceiptWriter
from flowproof.core import metrics
from flowproof.core.config import Settings
from flowproof.core.connect import kafka_client_kwargs, kafka_refusal
from flowproof.core.errors import ComponentUnreachable
from flowproof.core.logging import get_logger
from flowproof.core.redact import scrub
from flowproof.core.routing import DLQ_SUFFIX, destination

log = get_logger(__name__)

POLL_TIMEOUT_MS = 200  # how long one getmany waits, bounding how late a stop is seen
DRAIN_ASSIGNMENT_WAIT = 15.0  # seconds a draining consumer waits to be given partitions


_TOO_LARGE = b"too large for the dead-letter topic"
_TOO_LARGE_ALL = b"too large for the dead-letter topic, with its key and headers"


def topic_pattern(prefix: str) -> str:
    """Every topic under `prefix` except dead-letter topics."""
    return f"^{re.escape(prefix)}.*(?<!{re.escape(DLQ_SUFFIX)})$"


class KafkaDeadLetters:
    """Dead letters as messages of `<topic>.dlq`: original key, value and headers + `dlq_*`."""

    def __init__(self, producer: AIOKafkaProducer, options: ConsumerOptions) -> None:
        self._producer = producer
        self._options = options

    async def send(self, letters: Sequence[DeadLetter]) -> list[Unwritable]:
        unwritable: list[Unwritable] = []
        for letter in letters:
            problem = await self._send_letter(letter)
            if problem is not None:
                unwritable.append(Unwritable(letter, problem))
        return unwritable

    async def _send_letter(self, letter: DeadLetter) -> str | None:
        """Send one letter: whole, then without the original bytes, then with only the `dlq_*`
        fields; None when one of them was taken, else why none could be."""
        delivery = letter.delivery
        topic = letter.destination
        annotations = list(letter.annotations(self._options.group, self._options.name))
        original = [(name, value or b"") for name, value in delivery.headers]
        attempts = [
            (delivery.key, delivery.value, [*original, *annotations]),
            (delivery.key, None, [*original, *annotations, (VALUE_DROPPED, _TOO_LARGE)]),
            (None, None, [*annotations, (VALUE_DROPPED, _TOO_LARGE_ALL)]),
        ]
        refused = ""
        for key, value, headers in attempts:
            try:
                await self._send(topic, key, value, headers)
                return None
            except MessageSizeTooLargeError as exc:
                log.warning("consumer.dlq_value_dropped", topic=topic)
                refused = f"{type(exc).__name__}: {exc}"
        return f"{topic} refused even the dead letter without the original message ({refused})"

    async def _send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        if key is None and value is None:
            # A record with neither (a tombstone) is refused by the client: keep an empty value.
            value = b""
        try:
            await self._producer.send_and_wait(topic, value=value, key=key, headers=headers)
        except MessageSizeTooLargeError:
            raise
        except KafkaError as exc:
            raise DeadLetterFailed(f"producing to {topic} failed: {exc!r}") from exc


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Holds a revocation until the batches in hand are receipted and committed."""

    def __init__(self, owner: KafkaConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._owner.batch_lock:
            # The batches in hand have committed (or given up) before the partitions go.
            await self._owner.lane.settle()
        log.info("consumer.partitions_revoked", partitions=_describe(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("consumer.partitions_assigned", partitions=_describe(assigned))


def _describe(partitions: set[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}:{tp.partition}" for tp in partitions)


class KafkaConsumer:
    """Consumes with an AIOKafkaConsumer it is given, started, in `options.group`.

    `run(stop)` returns when `stop` is set (after the batches in hand are committed), or with
    `drain=True` once every assigned partition is read to its end.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        processor: Processor,
        committer: BatchCommitter,
        options: ConsumerOptions,
    ) -> None:
        self._consumer = consumer
        self._processor = processor
        self._committer = committer
        self.lane = CommitLane(committer)
        self._options = options
        self.batch_lock = asyncio.Lock()

    def subscribe(self) -> None:
        """Subscribe to the configured topics, or to the prefix pattern."""
        listener = _Rebalance(self)
        if self._options.aggregatetypes:
            topics = [destination(self._options.prefix, a) for a in self._options.aggregatetypes]
            self._consumer.subscribe(topics=topics, listener=listener)
        else:
            self._consumer.subscribe(pattern=topic_pattern(self._options.prefix), listener=listener)

    async def run(self, stop: asyncio.Event, *, drain: bool = False) -> None:
        """Consume until `stop` is set (or, when draining, until every partition is read)."""
        self.subscribe()
        started = time.monotonic()
        try:
            while not stop.is_set():
                records = await self._consumer.getmany(
                    timeout_ms=POLL_TIMEOUT_MS, max_records=self._options.batch_size
                )
                if records:
                    await asyncio.shield(self._finish(records))
                elif drain and await self._drained(started):
                    break
        finally:
            await self.lane.settle()

    async def _finish(self, records: dict[TopicPartition, list[Any]]) -> None:
        async with self.batch_lock:
            received_at = dt.datetime.now(dt.UTC)
            batch = [
                Delivery(
                    source=message.topic,
                    position=f"{message.partition}:{message.offset}",
                    headers=tuple(message.headers or ()),
                    value=message.value,
                    key=message.key,
                    received_at=received_at,
                )
                for messages in records.values()
                for message in messages
            ]
            offsets = {tp: messages[-1].offset + 1 for tp, messages in records.items()}
            outcome = await self._processor.process(batch)
            self._processor.observe(outcome)
            await self.lane.hand_off(outcome, lambda: self._commit(offsets))

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group moved these partitions on; their new owner reads from the last commit
            # and the receipts of this batch are written, so this only costs duplicates.
            metrics.CONSUMER_ERRORS.labels(**self._options.labels, operation="commit").inc()
            log.warning(
                "consumer.commit_refused",
                partitions=_describe(set(offsets)),
                error=f"{type(exc).__name__}: {exc}",
            )
        except KafkaError as exc:
            raise AckFailed(f"offset commit failed: {exc!r}") from exc

    async def _drained(self, started: float) -> bool:
        assigned = self._consumer.assignment()
        if not assigned:
            return time.monotonic() - started > DRAIN_ASSIGNMENT_WAIT
        ends = await self._consumer.end_offsets(list(assigned))
        for tp in assigned:
            try:
                position = await self._consumer.position(tp)
            except IllegalStateError:
                return False  # reassigned meanwhile: look again on the next turn
            if position < ends[tp]:
                return False
        return True


async def consume_kafka(
    settings: Settings,
    processor: Processor,
    options: ConsumerOptions,
    writer: ReceiptWriter,
    *,
    stop: asyncio.Event,
    drain: bool,
) -> ConsumerStats:
    """Consume the Kafka topics of `options` until stopped (or drained); see consumers.run."""
    common = kafka_client_kwargs(settings)
    kafka = AIOKafkaConsumer(
        **common,
        group_id=options.group,
        client_id=options.name,
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # a new group reads the topics from the start
        fetch_max_wait_ms=options.fetch_max_wait_ms,
        max_poll_records=options.batch_size,
        metadata_max_age_ms=int(options.discovery_interval * 1000),
        isolation_level="read_committed",
    )
    producer = AIOKafkaProducer(
        **common, client_id=f"{options.name}-dlq", acks="all", enable_idempotence=True
    )
    try:
        await _start_kafka(kafka, producer, settings)
        dead_letters: DeadLetterSink = KafkaDeadLetters(producer, options)
        committer = BatchCommitter(options, writer, dead_letters, stop)
        consumer = KafkaConsumer(kafka, processor, committer, options)
        try:
            await consumer.run(stop, drain=drain)
        except KafkaError as exc:
            refusal = kafka_refusal(exc, settings)
            if refusal is None:
                raise
            raise refusal from None
        return committer.stats
    finally:
        # stop() leaves the group at once, so the partitions move without a session timeout.
        await kafka.stop()
        await producer.stop()


async def _start_kafka(
    kafka: AIOKafkaConsumer, producer: AIOKafkaProducer, settings: Settings
) -> None:
    try:
        await kafka.start()
        await producer.start()
    except Exception as exc:  # aiokafka raises many unrelated types on connect
        refusal = kafka_refusal(exc, settings)
        if refusal is not None:
            raise refusal from None
        raise ComponentUnreachable("kafka", scrub(str(exc)) or type(exc).__name__) from None
