"""Reading the Redis side: streams under the prefix, their consumer groups, and the DLQs.

Per stream and group: entries not yet delivered (XINFO GROUPS `lag`; when Redis cannot tell, as
after XDEL or trimming, the entries after the last-delivered id are counted with XRANGE), pending
entries and the idle time of the oldest (XPENDING), and the time lag: now minus the millisecond
part of the first undelivered entry's id. A group that does not exist on a stream with entries
is reported with every entry behind: its consumer never ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from flowproof.core import metrics
from flowproof.core.config import Settings
from flowproof.core.connect import ping_redis, redis_client
from flowproof.core.routing import is_dlq
from flowproof.core.sinks import REDIS
from flowproof.verifier.lanes import DeadLetters, GroupLanes, Lane, SinkSnapshot
from flowproof.verifier.loss import LOST_STATES, Copy, PositionReader, State, by_lane
from flowproof.verifier.sink_reader import GaugeSetter, SinkReader

# Counting entries by XRANGE stops here; beyond it `behind` is a lower bound.
COUNT_CAP = 100_000
_PAGE = 1000


def as_text(value: Any) -> str:
    """A Redis reply value (bytes or str) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_entry_id(entry_id: str) -> tuple[int, int]:
    """A stream entry id "ms-seq" as (ms, seq)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def find_streams(client: aioredis.Redis, prefix: str) -> tuple[list[str], list[str]]:
    """The streams under `prefix`: (event streams, dead-letter streams), sorted."""
    streams: list[str] = []
    dlqs: list[str] = []
    # The prefix only holds [A-Za-z0-9._-] (validated), so it is a literal glob.
    async for key in client.scan_iter(match=f"{prefix}*", count=1000, _type="stream"):
        name = as_text(key)
        (dlqs if is_dlq(name) else streams).append(name)
    return sorted(streams), sorted(dlqs)


async def count_after(client: aioredis.Redis, stream: str, after: str) -> tuple[int, bool]:
    """Entries with an id above `after`, counted up to COUNT_CAP: (count, exact)."""
    counted, cursor = 0, f"({after}"
    while counted < COUNT_CAP:
        page = await client.xrange(stream, min=cursor, max="+", count=_PAGE) or []
        counted += len(page)
        if len(page) < _PAGE:
            return counted, True
        cursor = f"({as_text(page[-1][0])}"
    return counted, False


async def _first_after(client: aioredis.Redis, stream: str, after: str) -> str | None:
    entries = await client.xrange(stream, min=f"({after}", max="+", count=1) or []
    return as_text(entries[0][0]) if entries else None


async def _lane(
    client: aioredis.Redis, stream: str, length: int, info: dict[str, Any] | None, now: float
) -> Lane:
    last_delivered = as_text(info["last-delivered-id"]) if info else "0-0"
    first_undelivered = await _first_after(client, stream, last_delivered)
    time_lag = 0.0
    if first_undelivered is not None:
        time_lag = max(0.0, now - parse_entry_id(first_undelivered)[0] / 1000)
    if info is None:
        return Lane(stream, None, False, (0, 0), length, True, time_lag, length)
    lag = info.get("lag")
    if lag is not None:
        behind, exact = int(lag), True
    elif first_undelivered is None:
        behind, exact = 0, True
    else:
        behind, exact = await count_after(client, stream, last_delivered)
    pending = int(info.get("pending") or 0)
    oldest_idle = None
    if pending:
        oldest = await client.xpending_range(stream, as_text(info["name"]), "-", "+", 1)
        if oldest:
            oldest_idle = int(oldest[0]["time_since_delivered"]) / 1000
    return Lane(
        source=stream,
        partition=None,
        has_position=True,
        position=parse_entry_id(last_delivered),
        behind=behind,
        behind_exact=exact,
        time_lag=time_lag,
        length=length,
        pending=pending,
        oldest_pending_idle=oldest_idle,
    )


async def _min_idle(client: aioredis.Redis, stream: str, group: str) -> float | None:
    consumers = await client.xinfo_consumers(stream, group)
    idles = [int(c["idle"]) / 1000 for c in consumers if c.get("idle") is not None]
    return min(idles) if idles else None


async def redis_snapshot(
    client: aioredis.Redis,
    *,
    prefix: str,
    expected_groups: Sequence[str],
    alive_within: float,
    window_start: float,
    now: float,
) -> SinkSnapshot:
    """Everything the lag and conformance checks need from Redis, read once."""
    snapshot = SinkSnapshot(sink=REDIS.name, taken_at=now)
    streams, dlqs = await find_streams(client, prefix)
    groups: dict[str, GroupLanes] = {}
    idle: dict[str, list[float]] = {}
    for group in expected_groups:
        groups[group] = GroupLanes(REDIS.name, group, True, False, "")
    for stream in streams:
        length = int(await client.xlen(stream))
        infos = {as_text(i["name"]): i for i in await client.xinfo_groups(stream)}
        for name in sorted(set(infos) | set(expected_groups)):
            info = infos.get(name)
            if info is None and length == 0:
                continue  # nothing to consume yet: a missing group is no evidence of anything
            entry = groups.setdefault(name, GroupLanes(REDIS.name, name, False, False, ""))
            entry.lanes.append(await _lane(client, stream, length, info, now))
            if info is not None:
                seen = await _min_idle(client, stream, name)
                if seen is not None:
                    idle.setdefault(name, []).append(seen)
    for name, entry in groups.items():
        seen = min(idle.get(name, []), default=None)
        entry.alive = seen is not None and seen <= alive_within
        entry.liveness = (
            "no consumer" if seen is None else f"a consumer was last seen {seen:.1f}s ago"
        )
    snapshot.groups = [groups[name] for name in sorted(groups)]
    for dlq in dlqs:
        depth = int(await client.xlen(dlq))
        recent, _ = await count_after(client, dlq, f"{int(window_start * 1000)}-0")
        snapshot.dead_letters.append(DeadLetters(REDIS.name, dlq, depth, recent))
    return snapshot


# --- positions: lost or late (flowproof.verifier.loss) ------------------------------------

# At most this many entries of one stream are looked up one by one per evaluation (those the
# group has not reached, oldest first); the rest count as late until a later evaluation.
LOOKUP_CAP = 10_000
# The pending entries of a group read at once (XPENDING ... COUNT).
PENDING_CAP = 100_000


def _entry(value: Any) -> tuple[int, int]:
    return parse_entry_id(as_text(value))


class RedisPositions:
    """Reads a stream's group position, pending entries and entries themselves."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client

    async def classify(self, group: str, copies: Sequence[Copy]) -> list[State]:
        states: dict[int, State] = {}
        for stream, indexes in by_lane(copies).items():
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


# --- the verifier's reader of Redis (flowproof.verifier.sinks) ----------------------------


class RedisSinkReader(SinkReader):
    """Redis Streams for the verifier: one client, kept between evaluations."""

    spec = REDIS

    def __init__(self, settings: Settings, timeout: float) -> None:
        super().__init__(settings, timeout)
        self._client = redis_client(settings, socket_timeout=timeout)

    async def connect(self) -> None:
        await ping_redis(self._client)

    async def snapshot(
        self, groups: Sequence[str], *, alive_within: float, window_start: float, now: float
    ) -> SinkSnapshot:
        return await redis_snapshot(
            self._client,
            prefix=self.spec.prefix(self.settings),
            expected_groups=groups,
            alive_within=alive_within,
            window_start=window_start,
            now=now,
        )

    def positions(self) -> PositionReader:
        return RedisPositions(self._client)

    async def release(self) -> None:
        """Nothing to release: the client is kept between evaluations."""

    async def close(self) -> None:
        await self._client.aclose()

    @staticmethod
    def export(snapshot: SinkSnapshot, gauge: GaugeSetter) -> None:
        for group in snapshot.groups:
            for lane in group.lanes:
                labels = (lane.source, group.group)
                gauge(metrics.REDIS_GROUP_LAG, labels, lane.behind)
                gauge(metrics.REDIS_GROUP_PENDING, labels, lane.pending or 0)
                gauge(metrics.REDIS_GROUP_LAG_SECONDS, labels, lane.time_lag)
                idle = lane.oldest_pending_idle or 0.0
                gauge(metrics.REDIS_GROUP_OLDEST_PENDING_IDLE, labels, idle)
