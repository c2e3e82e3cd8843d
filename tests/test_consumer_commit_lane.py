"""The consumers' commit lane with plain objects: the durable end of a batch runs while the next
batch is processed, one at a time and in order, and nothing after an abandoned batch is acked.

The same lane on a real Redis and PostgreSQL: tests/test_consumer_redis.py
(`test_the_next_batch_is_read_while_the_receipts_are_written`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from flowproof.consumers.commit import BatchCommitter, CommitLane
from flowproof.consumers.deadletter import DeadLetter, Unwritable
from flowproof.consumers.errors import ReceiptWriteFailed
from flowproof.consumers.options import ConsumerOptions
from flowproof.consumers.processing import BatchOutcome
from flowproof.consumers.receipts import Receipt
from flowproof.core.config import Settings


class Writer:
    """Receipts written in memory; a write waits while `gate` is clear; `failing` raise."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.failing = False
        self.tried = asyncio.Event()  # set by each write
        self.written: list[int] = []  # batch sizes, in the order written

    async def write(self, receipts: Sequence[Receipt]) -> None:
        self.tried.set()
        await self.gate.wait()
        if self.failing:
            raise ReceiptWriteFailed("PostgreSQL is down (a test)")
        self.written.append(len(receipts))


class NoDeadLetters:
    async def send(self, letters: Sequence[DeadLetter]) -> list[Unwritable]:
        return []


def outcome(size: int) -> BatchOutcome:
    return BatchOutcome(deliveries=size, receipts=[Any] * size)  # type: ignore[list-item]


def committer(writer: Writer, stop: asyncio.Event) -> BatchCommitter:
    settings = Settings()
    options = ConsumerOptions.from_settings(settings, sink="redis", group="lane-test")
    return BatchCommitter(options, writer, NoDeadLetters(), stop)  # type: ignore[arg-type]


async def test_the_next_batch_goes_on_while_the_one_before_is_written_and_acks_keep_order() -> None:
    writer, acked = Writer(), list[int]()
    lane = CommitLane(committer(writer, asyncio.Event()))

    def ack(n: int) -> Any:
        async def done() -> None:
            acked.append(n)

        return done

    writer.gate.clear()  # PostgreSQL is slow
    await asyncio.wait_for(lane.hand_off(outcome(1), ack(1)), 1)  # returns at once
    second = asyncio.create_task(lane.hand_off(outcome(2), ack(2)))
    await asyncio.sleep(0.05)
    assert not second.done()  # one batch at a time in the durable end
    assert acked == [] and writer.written == []
    writer.gate.set()
    await asyncio.wait_for(second, 1)
    await lane.settle()
    assert writer.written == [1, 2] and acked == [1, 2]


async def test_after_an_abandoned_batch_no_later_batch_is_acknowledged() -> None:
    # A Kafka offset commit of the later batch would skip the abandoned one for good.
    writer, acked, stop = Writer(), list[int](), asyncio.Event()
    batches = committer(writer, stop)
    lane = CommitLane(batches)

    def ack(n: int) -> Any:
        async def done() -> None:
            acked.append(n)

        return done

    writer.failing = True
    stop.set()  # stopping while PostgreSQL fails: the batch is given up after one try
    await lane.hand_off(outcome(3), ack(1))
    await asyncio.wait_for(writer.tried.wait(), 1)
    writer.failing = False  # PostgreSQL is back just as the next batch comes
    await lane.hand_off(outcome(4), ack(2))
    await lane.settle()
    assert acked == [] and writer.written == []
    assert batches.stats.abandoned_batches == 2 and batches.stats.batches == 0


async def test_an_error_of_the_durable_end_is_raised_by_the_next_hand_off() -> None:
    lane = CommitLane(committer(Writer(), asyncio.Event()))

    async def broken() -> None:
        raise RuntimeError("a bug in the ack")

    await lane.hand_off(outcome(1), broken)
    with pytest.raises(RuntimeError, match="a bug in the ack"):
        await lane.hand_off(outcome(1), broken)
    await lane.settle()  # raised once, then gone
