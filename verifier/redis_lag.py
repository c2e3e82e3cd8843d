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

from flowproof.core.routing import is_dlq
from flowproof.verifier.lanes import DeadLetters, GroupLanes, Lane, SinkSnapshot

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
    snapshot = SinkSnapshot(sink="redis", taken_at=now)
    streams, dlqs = await find_streams(client, prefix)
    groups: dict[str, GroupLanes] = {}
    idle: dict[str, list[float]] = {}
    for group in expected_groups:
        groups[group] = GroupLanes("redis", group, True, False, "")
    for stream in streams:
        length = int(await client.xlen(stream))
        infos = {as_text(i["name"]): i for i in await client.xinfo_groups(stream)}
        for name in sorted(set(infos) | set(expected_groups)):
            info = infos.get(name)
            if info is None and length == 0:
                continue  # nothing to consume yet: a missing group is no evidence of anything
            entry = groups.setdefault(name, GroupLanes("redis", name, False, False, ""))
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
        snapshot.dead_letters.append(DeadLetters("redis", dlq, depth, recent))
    return snapshot
