"""What the relay needs from a sink, and the rule for what it may mark after a publish."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from flowproof.publisher.errors import SinkError
from flowproof.publisher.rows import Aggregate, Message


@dataclass(frozen=True, slots=True)
class Placed:
    """Where the sink put an acknowledged message: the verifier judges loss by this."""

    destination: str  # stream or topic
    partition: int | None  # Kafka partition; None for Redis
    position: str  # stream entry id, or partition:offset


# One outcome per message, in the order sent: where the sink put it, or why it did not take it.
Outcome = Placed | SinkError
Outcomes = list[Outcome]


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


@dataclass(slots=True)
class Acknowledged:
    """What a publish gave: the seqs that may be marked published, every placement the sink
    acknowledged (marked or not: a copy in the sink is a fact), how many placed ones may not be
    marked, and the errors."""

    marked: list[int]
    placements: list[tuple[int, Placed]]
    held_back: int
    errors: list[SinkError]


def acknowledged(messages: Sequence[Message], outcomes: Outcomes) -> Acknowledged:
    """Sort a publish's outcomes into what may be marked and what was only placed.

    Per aggregate, only the acknowledged events before its first failure count: a later event
    the sink took anyway is published again after the failed one, so the aggregate's order holds
    in what the consumers see first (the second copy is a duplicate, bounded by the batch).
    """
    failed: set[Aggregate] = set()
    result = Acknowledged([], [], 0, [])
    for message, outcome in zip(messages, outcomes, strict=True):
        if isinstance(outcome, SinkError):
            failed.add(message.aggregate)
            result.errors.append(outcome)
            continue
        result.placements.append((message.seq, outcome))
        if message.aggregate in failed:
            result.held_back += 1
        else:
            result.marked.append(message.seq)
    return result
