"""What the verifier sees of a sink's consumer groups: lanes (streams, partitions) and DLQs.

A lane is one Redis stream or one Kafka partition as one consumer group sees it. The Redis and
Kafka readers (`redis_lag`, `kafka_lag`) fill these in; `lag` judges them the same way for both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flowproof.core.config import Sink
from flowproof.verifier.status import Position


@dataclass(frozen=True, slots=True)
class Lane:
    source: str  # stream or topic
    partition: int | None  # Kafka partition; None for a Redis stream
    has_position: bool  # the group exists on the stream / has committed on the partition
    position: Position  # last-delivered id (ms, seq), or (committed offset,)
    behind: int  # entries not yet delivered to the group / messages not yet committed
    behind_exact: bool  # False when `behind` is a lower bound (counting was capped)
    time_lag: float  # seconds since the oldest entry not yet consumed was written; 0 if none
    length: int  # entries in the stream / messages in the partition
    pending: int | None = None  # Redis: delivered, not acknowledged
    oldest_pending_idle: float | None = None  # Redis: seconds since it was last delivered

    @property
    def name(self) -> str:
        if self.partition is None:
            return f"stream {self.source}"
        return f"topic {self.source} partition {self.partition}"

    @property
    def key(self) -> tuple[str, int | None]:
        return (self.source, self.partition)


@dataclass(slots=True)
class GroupLanes:
    sink: Sink
    group: str
    expected: bool  # one of the groups the verifier expects; others are only measured
    alive: bool  # a consumer of the group is alive (Kafka: members; Redis: seen within grace)
    liveness: str  # how `alive` was decided, for the evidence
    lanes: list[Lane] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DeadLetters:
    sink: Sink
    name: str  # the .dlq stream or topic
    depth: int  # entries in it now
    in_window: int  # entries added within the verifier's window


@dataclass(slots=True)
class SinkSnapshot:
    sink: Sink
    taken_at: float
    groups: list[GroupLanes] = field(default_factory=list)
    dead_letters: list[DeadLetters] = field(default_factory=list)
