"""Lost or late: deciding, from where the sink put an event, whether a group can still get it.

An event without a receipt from its destination is **lost** for a consumer group when every copy
the relay recorded (`<outbox>_deliveries`) is either *passed* — the group has gone beyond its
position and it is not pending in the group (Redis: at or before the last-delivered id and not in
the pending entries list; Kafka: below the committed offset) — or *gone* — its entry is no longer
in the sink (Redis: deleted, trimmed, or never persisted; Kafka: below the log start offset after
retention or `DeleteRecords`, at or above the end offset after a truncation, or its partition is
gone). Otherwise it is **late**: the group has not reached it yet, or holds it unacknowledged.

The order of reads makes this exact. The receipts were read before the sink; the events found
passed or gone are then looked up in the receipts again: a consumer writes receipts before it
acknowledges, so an event acknowledged before the sink was read has its receipt by then.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class State(enum.Enum):
    PASSED = "passed by the group without a receipt"
    GONE = "no longer in the sink"
    PENDING = "delivered, not acknowledged"
    AHEAD = "not reached by the group yet"
    UNCHECKED = "not looked up (over the lookup cap)"


LOST_STATES = frozenset({State.PASSED, State.GONE})


@dataclass(frozen=True, slots=True)
class Copy:
    """One place the sink put an event."""

    event_id: uuid.UUID
    destination: str
    partition: int | None
    position: str
    age: float  # seconds since it was published

    @property
    def lane(self) -> str:
        if self.partition is None:
            return f"stream {self.destination}"
        return f"topic {self.destination} partition {self.partition}"


class PositionReader(Protocol):
    """What a sink tells about the copies of events one group has no receipt for."""

    async def classify(self, group: str, copies: Sequence[Copy]) -> list[State]:
        """One state per copy, in order."""


@dataclass(slots=True)
class LaneLoss:
    lane: str
    passed: int = 0
    gone: int = 0
    positions: list[str] = field(default_factory=list)
    examples: list[uuid.UUID] = field(default_factory=list)

    def text(self) -> str:
        parts = []
        if self.passed:
            parts.append(f"{self.passed} passed by the group without a receipt")
        if self.gone:
            parts.append(f"{self.gone} no longer in the sink")
        at = ", ".join(self.positions[:3])
        eg = ", ".join(str(i) for i in self.examples[:3])
        return f"{self.lane}: {'; '.join(parts)} (positions {at}; e.g. {eg})"


@dataclass(slots=True)
class Verdict:
    """The lost and late events among those without a receipt."""

    lost: list[uuid.UUID] = field(default_factory=list)
    lanes: dict[str, LaneLoss] = field(default_factory=dict)
    late: int = 0
    oldest_late_age: float = 0.0
    unchecked: int = 0

    def evidence(self) -> str:
        return "; ".join(lane.text() for lane in self.lanes.values())


def judge_copies(copies: Sequence[Copy], states: Sequence[State]) -> Verdict:
    """An event is lost when every copy of it is passed or gone; else late."""
    by_event: dict[uuid.UUID, list[tuple[Copy, State]]] = {}
    for copy, state in zip(copies, states, strict=True):
        by_event.setdefault(copy.event_id, []).append((copy, state))
    verdict = Verdict()
    for event_id, seen in by_event.items():
        if all(state in LOST_STATES for _, state in seen):
            verdict.lost.append(event_id)
            copy, state = seen[0]
            lane = verdict.lanes.setdefault(copy.lane, LaneLoss(copy.lane))
            if state is State.PASSED:
                lane.passed += 1
            else:
                lane.gone += 1
            lane.positions.append(copy.position)
            lane.examples.append(event_id)
            continue
        verdict.late += 1
        verdict.unchecked += any(state is State.UNCHECKED for _, state in seen)
        verdict.oldest_late_age = max(verdict.oldest_late_age, *(c.age for c, _ in seen))
    return verdict


def by_lane(copies: Iterable[Copy]) -> dict[str, list[int]]:
    lanes: dict[str, list[int]] = {}
    for index, copy in enumerate(copies):
        lanes.setdefault(copy.destination, []).append(index)
    return lanes
