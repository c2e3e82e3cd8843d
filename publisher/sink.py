"""What the relay needs from a sink, and the rule for what it may mark after a publish."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from publisher.encoding import Aggregate, Message
from publisher.errors import SinkError

# One outcome per message, in the order sent: None when the sink acknowledged it.
Outcomes = list[SinkError | None]


class Sink(Protocol):
    """A destination of the relay: Redis Streams or Kafka."""

    name: str

    async def start(self) -> None:
        """Connect, or raise SinkError; a no-op when connected."""

    async def publish(self, messages: Sequence[Message]) -> Outcomes:
        """Send the messages in order; never raises for a sink failure, reports it per message."""

    async def reset(self) -> None:
        """Drop the connection after a failure, so the next `start` begins afresh."""

    async def close(self) -> None:
        """Release what `start` opened."""


def acknowledged(messages: Sequence[Message], outcomes: Outcomes) -> tuple[list[int], int]:
    """The seqs that may be marked published, and how many acknowledged ones may not.

    Per aggregate, only the acknowledged events before its first failure count: a later event
    the sink took anyway is published again after the failed one, so the aggregate's order holds
    in what the consumers see first (the second copy is a duplicate, bounded by the batch).
    """
    failed: set[Aggregate] = set()
    marked: list[int] = []
    held_back = 0
    for message, outcome in zip(messages, outcomes, strict=True):
        if outcome is not None:
            failed.add(message.aggregate)
        elif message.aggregate in failed:
            held_back += 1
        else:
            marked.append(message.seq)
    return marked, held_back
