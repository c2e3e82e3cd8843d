"""The independent accounting of a fault scenario, in SQL over the outbox and the receipts.

It does not use the verifier's queries, its `position_order` column or its window: it parses the
receipts' positions itself and counts, per sink and consumer group, over every event of the run
(the scenario's database holds nothing else):

- lost: events with no valid receipt (published or not: at the end of a scenario an event the
  relay never published is lost as surely as one a consumer never saw);
- duplicated: events with more than one receipt; `published_twice` of them at two positions or
  more (the relay sent them again), the rest redelivered at one position;
- reordered: events whose first delivery position precedes the first delivery position of an
  earlier (seq) event of the same aggregate in the same stream or Kafka partition (a self-join,
  where the verifier uses a window function);
- split: aggregates whose events were first delivered in more than one stream or partition;
- unexpected: receipts of event ids the outbox never had; invalid: receipts marked invalid.

Run both on a connection with `enable_nestloop = off` (see `scenario.Run._connect`).
`disagreements` puts the verifier's evidence (`flow.lost`, `flow.duplicates`, `flow.order`)
beside it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import asyncpg

from flowproof.core.config import Settings
from flowproof.core.connect import redis_client
from flowproof.verifier.model import FLOW_DUPLICATES, FLOW_LOST, FLOW_ORDER, Report
from flowproof.verifier.redis_lag import as_text

# $1 sink, $2 consumer group. Positions: Redis "ms-seq" in a stream; Kafka "partition:offset".
ACCOUNT_SQL = """
WITH events AS (
    -- Published: the sink acknowledged it (a delivery record), or its cursor passed it without
    -- setting it aside (rows written by the tests' fixtures, which record no delivery).
    SELECT o.seq, o.id, o.aggregatetype, o.aggregateid,
           EXISTS (SELECT 1 FROM flowproof_outbox_deliveries AS d
                   WHERE d.seq = o.seq AND d.sink = $1)
           OR (flowproof_cursor_passed(o.txid, o.seq, c.snap, c.next_snap, c.next_seq)
               AND NOT EXISTS (SELECT 1 FROM flowproof_outbox_parked AS p
                               WHERE p.seq = o.seq AND p.sink = $1)) AS published
    FROM flowproof_outbox AS o
    JOIN flowproof_outbox_cursors AS c ON c.sink = $1 AND c.slot = o.slot
),
deliveries AS (
    SELECT event_id, valid, position,
           CASE WHEN $1 = 'redis' THEN source
                ELSE source || '#' || split_part(position, ':', 1) END AS lane,
           CASE WHEN $1 = 'redis' THEN split_part(position, '-', 1)::numeric
                ELSE split_part(position, ':', 2)::numeric END AS major,
           CASE WHEN $1 = 'redis' THEN split_part(position, '-', 2)::numeric
                ELSE 0 END AS minor
    FROM flowproof_receipts
    WHERE sink = $1 AND consumer_group = $2 AND event_id IS NOT NULL
),
per_event AS (
    SELECT event_id,
           count(*) AS receipts,
           count(*) FILTER (WHERE valid) AS valid_receipts,
           count(DISTINCT lane || '@' || position) AS positions
    FROM deliveries
    GROUP BY event_id
),
first_delivery AS (
    SELECT DISTINCT ON (event_id) event_id, lane, major, minor
    FROM deliveries
    ORDER BY event_id, major, minor, lane
),
placed AS (
    SELECT e.seq, e.aggregatetype, e.aggregateid, f.lane, f.major, f.minor
    FROM events e JOIN first_delivery f ON f.event_id = e.id
)
SELECT
    (SELECT count(*) FROM events) AS events,
    (SELECT count(*) FROM events WHERE NOT published) AS unpublished,
    (SELECT count(*) FROM events e LEFT JOIN per_event p ON p.event_id = e.id
     WHERE coalesce(p.valid_receipts, 0) = 0) AS lost,
    (SELECT count(*) FROM events e LEFT JOIN per_event p ON p.event_id = e.id
     WHERE coalesce(p.valid_receipts, 0) = 0 AND e.published) AS lost_published,
    (SELECT array_agg(id) FROM (
        SELECT e.id FROM events e LEFT JOIN per_event p ON p.event_id = e.id
        WHERE coalesce(p.valid_receipts, 0) = 0 ORDER BY e.seq LIMIT 5) AS x) AS lost_examples,
    (SELECT count(*) FROM events e JOIN per_event p ON p.event_id = e.id
     WHERE p.receipts > 1) AS duplicated,
    (SELECT count(*) FROM events e JOIN per_event p ON p.event_id = e.id
     WHERE p.positions > 1) AS published_twice,
    (SELECT coalesce(sum(p.receipts - 1), 0) FROM events e JOIN per_event p ON p.event_id = e.id)
        AS extra_receipts,
    (SELECT count(DISTINCT later.seq) FROM placed later JOIN placed earlier
        ON earlier.aggregatetype = later.aggregatetype
       AND earlier.aggregateid = later.aggregateid
       AND earlier.lane = later.lane
       AND earlier.seq < later.seq
       AND (earlier.major, earlier.minor) > (later.major, later.minor)) AS reordered,
    (SELECT count(*) FROM (
        SELECT 1 FROM placed GROUP BY aggregatetype, aggregateid
        HAVING count(DISTINCT lane) > 1) AS s) AS split,
    (SELECT count(*) FROM per_event p WHERE NOT EXISTS (
        SELECT 1 FROM events e WHERE e.id = p.event_id)) AS unexpected,
    (SELECT count(*) FROM flowproof_receipts
     WHERE sink = $1 AND consumer_group = $2 AND NOT valid) AS invalid
"""

# The smallest seq in ($1, $2] still lacking a valid receipt in one of the (sink, group) pairs
# ($3 sinks, $4 groups); NULL when every event of that range was received everywhere.
FIRST_MISSING_SQL = """
SELECT min(o.seq)
FROM flowproof_outbox o
CROSS JOIN unnest($3::text[], $4::text[]) AS g (sink, grp)
WHERE o.seq > $1 AND o.seq <= $2
  AND NOT EXISTS (
      SELECT 1 FROM flowproof_receipts r
      WHERE r.event_id = o.id AND r.sink = g.sink AND r.consumer_group = g.grp AND r.valid)
"""


@dataclass(frozen=True, slots=True)
class Account:
    """What the outbox and the receipts say about one sink and consumer group."""

    sink: str
    group: str
    events: int
    unpublished: int
    lost: int
    lost_published: int  # of the lost, those the relay marked published
    lost_examples: tuple[str, ...]
    duplicated: int
    published_twice: int
    extra_receipts: int
    reordered: int
    split: int
    unexpected: int
    invalid: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def account(conn: asyncpg.Connection, sink: str, group: str) -> Account:
    """Count lost, duplicated and reordered events of `sink` and `group` (see the module)."""
    row = await conn.fetchrow(ACCOUNT_SQL, sink, group)
    assert row is not None
    return Account(
        sink=sink,
        group=group,
        events=row["events"],
        unpublished=row["unpublished"],
        lost=row["lost"],
        lost_published=row["lost_published"],
        lost_examples=tuple(str(i) for i in row["lost_examples"] or ()),
        duplicated=row["duplicated"],
        published_twice=row["published_twice"],
        extra_receipts=row["extra_receipts"],
        reordered=row["reordered"],
        split=row["split"],
        unexpected=row["unexpected"],
        invalid=row["invalid"],
    )


async def first_missing(
    conn: asyncpg.Connection, after: int, upto: int, lanes: list[tuple[str, str]]
) -> int | None:
    """The first seq in (after, upto] some (sink, group) has no valid receipt of, or None."""
    value: int | None = await conn.fetchval(
        FIRST_MISSING_SQL, after, upto, [s for s, _ in lanes], [g for _, g in lanes]
    )
    return value


def _evidence(report: Report, check: str, sink: str, group: str) -> dict[str, Any]:
    for finding in report.check(check).findings:
        if finding.data.get("sink") == sink and finding.data.get("group") == group:
            return finding.data
    raise AssertionError(f"the verifier's {check} has no evidence for {sink}/{group}")


def disagreements(report: Report, accounts: list[Account]) -> list[str]:
    """Where the verifier's numbers differ from the accounting's (empty when they agree)."""
    problems = []
    for acc in accounts:
        lost = _evidence(report, FLOW_LOST, acc.sink, acc.group)
        dup = _evidence(report, FLOW_DUPLICATES, acc.sink, acc.group)
        order = _evidence(report, FLOW_ORDER, acc.sink, acc.group)
        pairs = {
            "judged events": (lost["judged"], acc.events - acc.unpublished),
            # The verifier judges published events only, and its "lost" is "no receipt at all"
            # where ours is "no valid receipt": the same when no receipt is invalid.
            "lost": (lost["lost"], acc.lost_published),
            "unexpected": (dup["unexpected"], acc.unexpected),
            "duplicated": (dup["duplicated"], acc.duplicated),
            "published twice": (dup["published_twice"], acc.published_twice),
            "reordered": (order["out_of_order"], acc.reordered),
        }
        for what, (verifier, ours) in pairs.items():
            if verifier != ours:
                problems.append(
                    f"{acc.sink}/{acc.group} {what}: verifier {verifier}, accounting {ours}"
                )
    return problems


async def redis_group_behind(settings: Settings, group: str) -> str | None:
    """Why `group` has not read every stream under the prefix to its end and acknowledged it
    all, or None when it has."""
    client = redis_client(settings)
    try:
        async for key in client.scan_iter(match=f"{settings.stream_prefix}*", _type="stream"):
            for info in await client.xinfo_groups(key):
                if as_text(info["name"]) != group:
                    continue
                if info.get("pending"):
                    return f"{as_text(key)}: {info['pending']} pending"
                lag = info.get("lag")
                if lag is None:  # Redis cannot tell (after a failover): look past the position
                    after = f"({as_text(info['last-delivered-id'])}"
                    lag = len(await client.xrange(key, min=after, max="+", count=1))
                if lag:
                    return f"{as_text(key)}: lag {lag}"
        return None
    finally:
        await client.aclose()


@dataclass(frozen=True, slots=True)
class Dropped:
    """Events marked published to Redis whose every recorded entry is gone from its stream (a
    failover dropped what the primary had acknowledged), found by looking each entry up."""

    published: int
    dropped: int
    dropped_unreceived: int  # of those, the ones no consumer received before the failover


def lane_lost(per_lane: list[str], sink: str) -> int:
    """The lost count of `sink` in a fault-table row's per-lane column ("redis 3/0/0; ...")."""
    for lane in per_lane:
        name, _, counts = lane.partition(" ")
        if name == sink:
            return int(counts.split("/", 1)[0])
    raise AssertionError(f"no {sink} lane in {per_lane}")


async def redis_dropped(conn: asyncpg.Connection, settings: Settings, group: str) -> Dropped:
    """Count the published events whose Redis entries a failover dropped (see `Dropped`)."""
    rows = await conn.fetch(
        """SELECT o.seq, d.destination, d.position,
                  EXISTS (SELECT 1 FROM flowproof_receipts r
                          WHERE r.event_id = o.id AND r.sink = 'redis'
                            AND r.consumer_group = $1 AND r.valid) AS received
           FROM flowproof_outbox o JOIN flowproof_outbox_deliveries d
             ON d.seq = o.seq AND d.sink = 'redis'""",
        group,
    )
    client = redis_client(settings)
    present: dict[int, bool] = {}
    try:
        for start in range(0, len(rows), 1000):
            chunk = rows[start : start + 1000]
            async with client.pipeline(transaction=False) as pipe:
                for row in chunk:
                    pipe.xrange(row["destination"], row["position"], row["position"], count=1)
                found = await pipe.execute()
            for row, entries in zip(chunk, found, strict=True):
                present[row["seq"]] = present.get(row["seq"], False) or bool(entries)
    finally:
        await client.aclose()
    received = {row["seq"] for row in rows if row["received"]}
    dropped = [seq for seq, here in present.items() if not here]
    return Dropped(
        published=len(present),
        dropped=len(dropped),
        dropped_unreceived=sum(1 for seq in dropped if seq not in received),
    )
