"""Rows that can never be published are parked per sink with a reason, counted, listed by
`flowproof parked list`, retried by `flowproof parked retry`; they hold back only the later
events of their own aggregate, and that waiting shows in a gauge."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import asyncpg
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from flowproof.core.config import Settings
from flowproof.publisher.relay import Relay
from tests.readback import read_stream, read_topic

SINKS = ("redis", "kafka")
GOOD = {"run_id": "r", "sequence": 1, "total": 1}
# aggregate id -> (aggregatetype, type, payload, headers, expected reason) of its first event
BAD = {
    "unknown": ("canary", "nope.Missing", GOOD, None, "unknown_type"),
    "invalid": ("canary", "flowproof.Canary", {**GOOD, "sequence": "one"}, None, "payload_invalid"),
    "big": ("canary", "flowproof.Canary", {**GOOD, "note": "x" * 1_100_000}, None, "oversized"),
    "dest": ("bad type!", "flowproof.Canary", GOOD, None, "bad_destination"),
    "trace": ("canary", "flowproof.Canary", GOOD, {"traceparent": "nope"}, "envelope"),
}
LATER = 2  # good events after each bad one, in the same aggregate


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def insert(
    conn: asyncpg.Connection,
    aggregate: tuple[str, str],
    event_type: str,
    payload: dict[str, object],
    headers: dict[str, str] | None = None,
) -> str:
    return str(
        await conn.fetchval(
            "INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload, headers) "
            "VALUES ($1, $2, $3, $4::text::jsonb, $5::text::jsonb) RETURNING id",
            *aggregate,
            event_type,
            json.dumps(payload),
            json.dumps(headers) if headers else None,
        )
    )


async def flowproof(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "flowproof", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def published(conn: asyncpg.Connection, sink: str, aggregateid: str) -> list[bool]:
    rows = await conn.fetch(
        f"SELECT {sink}_published_at IS NOT NULL AS done FROM flowproof_outbox_progress "
        "WHERE aggregateid = $1 ORDER BY seq",
        aggregateid,
    )
    return [r["done"] for r in rows]


# One batch for everything, and batches of two: the rows behind a parked one are then in the
# next batch, claimed and encoded while the one that parks it is still in flight.
@pytest.mark.parametrize("batch_size", [500, 2])
@pytest.mark.usefixtures("kafka_admin")
async def test_bad_rows_are_parked_and_hold_back_only_their_aggregate(
    settings: Settings,
    settings_env: dict[str, str],
    conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    batch_size: int,
) -> None:
    settings = settings.model_copy(update={"relay_batch_size": batch_size})
    good_before = [
        await insert(conn, ("canary", f"good-{i}"), "flowproof.Canary", GOOD) for i in range(3)
    ]
    first_ids = {}
    for aggregateid, (aggregatetype, event_type, payload, headers, _) in BAD.items():
        first_ids[aggregateid] = await insert(
            conn, (aggregatetype, aggregateid), event_type, payload, headers
        )
        for _ in range(LATER):  # later, valid events of the same aggregate
            await insert(conn, (aggregatetype, aggregateid), "flowproof.Canary", GOOD)
    good_after = [
        await insert(conn, ("canary", f"good-{i}"), "flowproof.Canary", GOOD) for i in range(3)
    ]
    reasons = [value[-1] for value in BAD.values()]
    parked_before = {r: metric("flowproof_relay_parked_total", reason=r) for r in reasons}

    relay = Relay(settings)
    await relay.run_until_idle()

    for sink in SINKS:
        # Good rows of other aggregates, before and after the bad ones, all went out.
        for i in range(3):
            assert await published(conn, sink, f"good-{i}") == [True, True]
        rows = await conn.fetch(
            f"SELECT aggregateid, {sink}_parked_reason AS reason, {sink}_parked_error AS error, "
            f"{sink}_published_at IS NOT NULL AS done FROM flowproof_outbox_progress "
            "WHERE aggregateid = ANY($1) ORDER BY seq",
            list(BAD),
        )
        for aggregateid, (*_, reason) in BAD.items():
            mine = [r for r in rows if r["aggregateid"] == aggregateid]
            assert mine[0]["reason"] == reason, (sink, aggregateid, mine[0]["error"])
            assert mine[0]["error"]
            # The later events wait (pending, neither published nor parked) to keep the order.
            assert [(r["reason"], r["done"]) for r in mine[1:]] == [(None, False)] * LATER
        assert relay.stats[sink].parked == len(BAD)
        assert metric("flowproof_outbox_parked_events", sink=sink) == len(BAD)
        assert (
            metric("flowproof_outbox_waiting_behind_parked_events", sink=sink) == len(BAD) * LATER
        )
        assert metric("flowproof_outbox_pending_events", sink=sink) == len(BAD) * LATER
    invalid_error = await conn.fetchval(
        "SELECT redis_parked_error FROM flowproof_outbox_progress WHERE id = $1",
        first_ids["invalid"],
    )
    assert "'sequence'" in invalid_error  # the message names the field
    for reason in reasons:  # one parking per event and sink
        assert metric("flowproof_relay_parked_total", reason=reason) - parked_before[reason] == 2
    stream = await read_stream(redis_client, f"{settings.stream_prefix}canary")
    assert {m.event_id for m in stream} == set(good_before + good_after)

    # `flowproof parked list` shows them, with seq, id, sink and reason.
    listed = await flowproof(settings_env, "parked", "list")
    assert listed.returncode == 0, listed.stderr
    for aggregateid, (*_, reason) in BAD.items():
        lines = [line for line in listed.stdout.splitlines() if first_ids[aggregateid] in line]
        assert len(lines) == 2, listed.stdout  # one per sink
        assert all(reason in line for line in lines)
        assert {s for s in SINKS for line in lines if f"  {s}  " in line} == set(SINKS)

    # Fix the unknown-type row, retry it: it and the events behind it go out, in order.
    await conn.execute(
        "UPDATE flowproof_outbox SET type = 'flowproof.Canary' WHERE id = $1", first_ids["unknown"]
    )
    retried = await flowproof(settings_env, "parked", "retry", "--id", first_ids["unknown"])
    assert retried.returncode == 0, retried.stderr
    assert "redis: 1 row(s)" in retried.stdout and "kafka: 1 row(s)" in retried.stdout
    await relay.run_until_idle()
    for sink in SINKS:
        assert await published(conn, sink, "unknown") == [True] * (1 + LATER)
    topic = await read_topic(settings, f"{settings.topic_prefix}canary")
    unknown_ids = [m.event_id for m in topic if m.fields["aggregateid"] == "unknown"]
    assert unknown_ids[0] == first_ids["unknown"] and len(unknown_ids) == 1 + LATER

    # Retry everything parked for Redis only: still bad, so parked again; Kafka's untouched.
    kafka_since = await conn.fetch(
        "SELECT id, kafka_parked_at FROM flowproof_outbox_progress "
        "WHERE kafka_parked_reason IS NOT NULL ORDER BY seq"
    )
    retried = await flowproof(settings_env, "parked", "retry", "--sink", "redis", "--all")
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.strip() == "redis: 4 row(s) will be retried"
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM flowproof_outbox_progress "
            "WHERE redis_state IS NOT NULL AND redis_state <> 'queued'"
        )
        == 0
    )
    await relay.run_until_idle()
    assert relay.stats["redis"].parked == len(BAD) + 4
    assert (
        await conn.fetch(
            "SELECT id, kafka_parked_at FROM flowproof_outbox_progress "
            "WHERE kafka_parked_reason IS NOT NULL ORDER BY seq"
        )
        == kafka_since
    )
    for aggregateid in ("invalid", "big", "dest", "trace"):
        assert await published(conn, "redis", aggregateid) == [False] * (1 + LATER)


async def test_parked_retry_needs_one_of_id_and_all(settings_env: dict[str, str]) -> None:
    neither = await flowproof(settings_env, "parked", "retry")
    assert neither.returncode == 2
    assert "exactly one of --id ID and --all" in neither.stderr
    bad_id = await flowproof(settings_env, "parked", "retry", "--id", "nope")
    assert bad_id.returncode == 2
    assert "not a UUID" in bad_id.stderr
    empty = await flowproof(settings_env, "parked", "list")
    assert empty.returncode == 0
    assert empty.stdout.strip() == "no parked rows"
