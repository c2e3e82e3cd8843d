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
from typing import Any, Protocol

import redis.asyncio as aioredis
from aiokafka import TopicPartition
from redis.exceptions import ResponseError

from flowproof.verifier.redis_lag import as_text, parse_entry_id

# At most this many entries of one stream are looked up one by one per evaluation (those the
# group has not reached, oldest first); the rest count as late until a later evaluation.
LOOKUP_CAP = 10_000
# The pending entries of a group read at once (XPENDING ... COUNT).
PENDING_CAP = 100_000


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


# --- Redis ----------------------------------------------------------------------------------


def _entry(value: Any) -> tuple[int, int]:
    return parse_entry_id(as_text(value))


class RedisPositions:
    """Reads a stream's group position, pending entries and entries themselves."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client

    async def classify(self, group: str, copies: Sequence[Copy]) -> list[State]:
        states: dict[int, State] = {}
        for stream, indexes in _by_lane(copies).items():
            lane = [copies[i] for i in indexes]
            for index, state in zip(indexes, await self._stream(stream, group, lane), strict=True):
                states[index] = state
        return [states[i] for i in range(len(copies))]

    async def _stream(self, stream: str, group: str, copies: Sequence[Copy]) -> list[State]:
        client = self._client
        if not await client.exists(stream):
            return [State.GONE] * len(copies)
        info = await client.xinfo_stream(stream)
        first = info.get("first-entry")
        first_id = _entry(first[0]) if first else None
        last_id = _entry(info["last-generated-id"])
        groups = {as_text(g["name"]): g for g in await client.xinfo_groups(stream)}
        delivered = _entry(groups[group]["last-delivered-id"]) if group in groups else None
        states = [_by_position(c, delivered, first_id, last_id) for c in copies]
        await self._look_up(stream, copies, states)
        # Last: an entry read by a consumer that has not acknowledged it yet is pending, even if
        # it was deleted meanwhile (the consumer holds it). Read after the positions above.
        if group in groups:
            pending = await self._pending(stream, group, copies, states)
            for index, copy in enumerate(copies):
                if states[index] in LOST_STATES and copy.position in pending:
                    states[index] = State.PENDING
        return states

    async def _look_up(self, stream: str, copies: Sequence[Copy], states: list[State]) -> None:
        """Whether the entries the group has not reached are still there (up to the cap)."""
        ahead = [i for i, state in enumerate(states) if state is State.AHEAD]
        for index in ahead[LOOKUP_CAP:]:
            states[index] = State.UNCHECKED
        lookups = ahead[:LOOKUP_CAP]
        if not lookups:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for index in lookups:
                position = copies[index].position
                pipe.xrange(stream, min=position, max=position, count=1)
            found = await pipe.execute()
        for index, entries in zip(lookups, found, strict=True):
            if not entries:
                states[index] = State.GONE

    async def _pending(
        self, stream: str, group: str, copies: Sequence[Copy], states: Sequence[State]
    ) -> set[str]:
        suspects = [c.position for c, s in zip(copies, states, strict=True) if s in LOST_STATES]
        if not suspects:
            return set()
        low, high = min(suspects, key=_entry), max(suspects, key=_entry)
        try:
            entries = await self._client.xpending_range(stream, group, low, high, PENDING_CAP)
        except ResponseError:  # NOGROUP: the group went away since XINFO GROUPS
            return set()
        return {as_text(e["message_id"]) for e in entries}


def _by_position(
    copy: Copy,
    delivered: tuple[int, int] | None,
    first: tuple[int, int] | None,
    last: tuple[int, int],
) -> State:
    at = _entry(copy.position)
    if delivered is not None and at <= delivered:
        return State.PASSED
    if first is None or at < first or at > last:
        return State.GONE
    return State.AHEAD


# --- Kafka ----------------------------------------------------------------------------------


class KafkaOffsets(Protocol):
    async def committed(self, group: str) -> dict[TopicPartition, int]: ...

    async def offsets(
        self, tps: Sequence[TopicPartition]
    ) -> tuple[set[TopicPartition], dict[TopicPartition, int], dict[TopicPartition, int]]:
        """The partitions that exist, and their log start and end offsets."""
        ...


class KafkaPositions:
    """Reads a group's committed offsets and the partitions' log start and end offsets."""

    def __init__(self, reader: KafkaOffsets) -> None:
        self._reader = reader

    async def classify(self, group: str, copies: Sequence[Copy]) -> list[State]:
        tps = sorted({TopicPartition(c.destination, c.partition or 0) for c in copies})
        existing, begin, end = await self._reader.offsets(tps)
        committed = await self._reader.committed(group)
        states = []
        for copy in copies:
            tp = TopicPartition(copy.destination, copy.partition or 0)
            offset = int(copy.position.rpartition(":")[2])
            if tp not in existing or offset < begin[tp] or offset >= end[tp]:
                states.append(State.GONE)
            elif tp in committed and offset < committed[tp]:
                states.append(State.PASSED)
            else:
                states.append(State.AHEAD)
        return states


def _by_lane(copies: Iterable[Copy]) -> dict[str, list[int]]:
    lanes: dict[str, list[int]] = {}
    for index, copy in enumerate(copies):
        lanes.setdefault(copy.destination, []).append(index)
    return lanes
