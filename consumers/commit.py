"""The durable end of a batch: dead letters, then receipts, then the ack or offset commit.

The order is what makes "XACK only after the receipts are durably written" true: a crash at any
point leaves the batch unacknowledged, so it is delivered again (a duplicate receipt or dead
letter, never a missing one). Each step is retried with backoff until it succeeds; when a stop
is requested while a step keeps failing, the batch is abandoned unacknowledged, for another
delivery, and so is every batch after it (a Kafka offset commit past it would skip it).

A consumer reads and processes its next batch while the one before is in its durable end
(`CommitLane`): one batch at a time in the durable end, in the order read, so acknowledgements
and offset commits keep their order and a crash still duplicates at most the receipts of one
batch (those of the batch in hand are not written before the batch ahead of it is done).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from flowproof.consumers.deadletter import DeadLetter, Unwritable
from flowproof.consumers.errors import ConsumerError
from flowproof.consumers.options import ConsumerOptions
from flowproof.consumers.processing import BatchOutcome
from flowproof.consumers.receipts import ReceiptWriter, clean_text
from flowproof.core import metrics
from flowproof.core.aio import sleep_unless_stopped
from flowproof.core.logging import get_logger
from flowproof.core.retry import RetryPolicy

log = get_logger(__name__)


class DeadLetterSink(Protocol):
    """Where a sink's dead letters go (`<name>.dlq` in Redis or Kafka)."""

    async def send(self, letters: Sequence[DeadLetter]) -> list[Unwritable]:
        """Write every letter durably, or raise DeadLetterFailed (the batch is retried); return
        the letters the sink will never take."""


@dataclass
class ConsumerStats:
    """Totals of one consumer run (what `consume --drain` prints, what tests check)."""

    batches: int = 0
    received: int = 0
    invalid: int = 0
    dead_lettered: int = 0
    receipts: int = 0
    abandoned_batches: int = 0


class BatchCommitter:
    """Writes a batch's dead letters and receipts, then acknowledges it."""

    def __init__(
        self,
        options: ConsumerOptions,
        receipts: ReceiptWriter,
        dead_letters: DeadLetterSink,
        stop: asyncio.Event,
    ) -> None:
        self._options = options
        self._receipts = receipts
        self._dead_letters = dead_letters
        self._stop = stop
        self._retry = RetryPolicy(base=0.2, cap=5.0)
        self._abandoned = False
        self.stats = ConsumerStats()

    async def commit(self, outcome: BatchOutcome, ack: Callable[[], Awaitable[None]]) -> bool:
        """Dead letters, receipts, ack; True when all three were done. Once a batch was
        abandoned, every later one is too, untouched."""
        if self._abandoned:
            self.stats.abandoned_batches += 1
            log.warning(
                "consumer.batch_abandoned",
                step="none",
                messages=outcome.deliveries,
                detail="a batch before it was abandoned; it will be delivered again",
            )
            return False
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("dead_letter", lambda: self._send_dead_letters(outcome)),
            ("receipts", lambda: self._receipts.write(outcome.receipts)),
            ("ack", ack),
        ]
        for operation, step in steps:
            if not await self._until_done(operation, step):
                self._abandoned = True
                self.stats.abandoned_batches += 1
                log.warning(
                    "consumer.batch_abandoned",
                    step=operation,
                    messages=outcome.deliveries,
                    detail="left unacknowledged; it will be delivered again",
                )
                return False
        stats = self.stats
        stats.batches += 1
        stats.received += outcome.deliveries
        stats.invalid += sum(outcome.invalid.values())
        stats.dead_lettered += len(outcome.dead_letters)
        stats.receipts += len(outcome.receipts)
        if outcome.receipts:
            metrics.CONSUMER_RECEIPTS_WRITTEN.labels(**self._options.labels).inc(
                len(outcome.receipts)
            )
        return True

    async def _send_dead_letters(self, outcome: BatchOutcome) -> None:
        """Send the batch's dead letters; one the sink will never take is written down on its
        receipt (and logged and counted) instead of stopping the consumer."""
        unwritable = await self._dead_letters.send(outcome.dead_letters)
        if not unwritable:
            return
        why = {(u.letter.delivery.source, u.letter.delivery.position): u.error for u in unwritable}
        for receipt in outcome.receipts:
            error = why.get((receipt.source, receipt.position))
            if error is not None:
                receipt.dead_letter_error = clean_text(error)
        metrics.CONSUMER_DEAD_LETTER_UNWRITABLE.labels(**self._options.labels).inc(len(unwritable))
        for item in unwritable:
            log.error(
                "consumer.dead_letter_unwritable",
                reason=item.letter.reason,
                source=item.letter.delivery.source,
                position=item.letter.delivery.position,
                destination=item.letter.destination,
                error=item.error,
            )

    async def _until_done(self, operation: str, step: Callable[[], Awaitable[None]]) -> bool:
        attempt = 0
        while True:
            try:
                await step()
                return True
            except ConsumerError as exc:
                attempt += 1
                metrics.CONSUMER_ERRORS.labels(**self._options.labels, operation=operation).inc()
                delay = self._retry.delay(attempt) or self._retry.cap
                log.error(
                    "consumer.commit_step_failed",
                    step=operation,
                    attempt=attempt,
                    retry_in=None if self._stop.is_set() else round(delay, 2),
                    error=str(exc),
                )
                if self._stop.is_set():
                    return False
                await sleep_unless_stopped(self._stop, delay)


class CommitLane:
    """Runs the durable end of one batch at a time in the background, in hand-off order.

    `hand_off` waits for the batch before to be done, then starts this one's and returns: the
    consumer reads and processes its next batch meanwhile. `settle` waits for the one in flight;
    a consumer settles before it stops, before partitions are revoked, and before anything that
    must not see its own unacknowledged entries (XAUTOCLAIM).
    """

    def __init__(self, committer: BatchCommitter) -> None:
        self._committer = committer
        self._task: asyncio.Task[bool] | None = None

    async def hand_off(self, outcome: BatchOutcome, ack: Callable[[], Awaitable[None]]) -> None:
        """Start the durable end of `outcome` once the one before it is done."""
        await self.settle()
        self._task = asyncio.create_task(
            self._committer.commit(outcome, ack), name="consumer.commit"
        )

    async def settle(self) -> None:
        """Wait for the batch in flight, if any (its error, if it raised, is raised here)."""
        task = self._task
        if task is None:
            return
        try:
            await asyncio.shield(task)
        finally:
            if task.done():
                self._task = None
