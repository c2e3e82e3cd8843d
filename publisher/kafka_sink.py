"""Publishing to Kafka: an idempotent producer (acks=all), key = aggregateid, envelope headers.

The key decides the partition, so the events of one aggregate share a partition and keep their
order there. The relay awaits every send of a batch and marks only what the broker acknowledged.
After a failure the producer is thrown away and a new one started: a fresh idempotent session
instead of one whose sequence numbers may no longer match the broker's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from flowproof.config import Settings
from flowproof.connect import kafka_client_kwargs
from flowproof.logging import get_logger
from flowproof.redact import scrub
from publisher.encoding import Aggregate, Message
from publisher.errors import SinkError
from publisher.sink import Outcomes

NAME = "kafka"
# Room for the record batch and request framing around the largest message the relay sends.
_REQUEST_OVERHEAD = 64 * 1024
_BATCH_BYTES = 256 * 1024

log = get_logger(__name__)


def _error(exc: BaseException) -> SinkError:
    return SinkError(NAME, scrub(f"{type(exc).__name__}: {exc}"))


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
        outcomes: Outcomes = [None] * len(messages)
        pending: dict[int, asyncio.Future[object]] = {}
        broken: SinkError | None = None
        failed: set[Aggregate] = set()
        for index, message in enumerate(messages):
            if broken is not None:
                outcomes[index] = broken
                continue
            if message.aggregate in failed:
                # Sending it would let it overtake the earlier event of its aggregate that failed.
                outcomes[index] = SinkError(
                    NAME, "not sent: an earlier event of its aggregate failed"
                )
                continue
            try:
                pending[index] = await producer.send(
                    message.destination,
                    value=message.value,
                    key=message.key,
                    headers=list(message.fields.items()),
                )
            except (KafkaConnectionError, KafkaTimeoutError) as exc:
                # The cluster is unreachable: each further send would wait out the timeout too.
                broken = outcomes[index] = _error(exc)
            except KafkaError as exc:
                outcomes[index] = _error(exc)
                failed.add(message.aggregate)
        if pending:
            # aiokafka retries a batch for a leader that is down forever (its batches expire
            # only while a partition has no leader), so the relay bounds the wait itself.
            await asyncio.wait(pending.values(), timeout=self._settings.relay_sink_timeout_seconds)
        for index, future in pending.items():
            if not future.done():
                outcomes[index] = SinkError(
                    NAME,
                    f"no acknowledgement within {self._settings.relay_sink_timeout_seconds} s",
                )
                future.add_done_callback(_observed)
            elif future.cancelled():
                outcomes[index] = SinkError(NAME, "send cancelled")
            elif (problem := future.exception()) is not None:
                outcomes[index] = _error(problem)
        return outcomes

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


def _observed(future: asyncio.Future[object]) -> None:
    # The send was already counted as failed (no acknowledgement in time); this only retrieves
    # the late outcome so asyncio does not report it as never retrieved.
    if not future.cancelled():
        future.exception()
