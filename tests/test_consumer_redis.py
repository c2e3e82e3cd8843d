"""The Redis consumer against a real Redis and PostgreSQL: receipts, DLQ, claims, limits."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from structlog.testing import capture_logs

from flowproof.consumers.run import consume
from flowproof.core.config import Settings
from flowproof.core.sampling import is_sampled
from tests.readback import wait_until
from tests.test_consumer_support import (
    EXPECTED_REASON,
    bad_messages,
    canary,
    event,
    group_name,
    metric,
    receipts,
    xadd_all,
)


async def test_every_event_is_receipted_once_and_acked(
    settings: Settings, database_url: str, redis_client: aioredis.Redis, name_prefix: str
) -> None:
    orders = [event(i, version=1 + i % 2) for i in range(40)]  # both OrderPlaced versions
    canaries = [canary(i) for i in range(5)]
    order_ids = await xadd_all(redis_client, f"{name_prefix}orders", orders)
    await xadd_all(redis_client, f"{name_prefix}canary", canaries)
    group = group_name()
    before = metric("flowproof_consumer_received_total", sink="redis", group=group)

    stats = await consume(settings, sink="redis", group=group, drain=True, batch_size=16)

    rows = await receipts(database_url)
    by_id = {row["event_id"]: row for row in rows}
    assert len(rows) == 45 and len(by_id) == 45
    assert set(by_id) == {m.id for m in orders + canaries}
    first = by_id[orders[0].id]
    assert first["source"] == f"{name_prefix}orders"
    assert first["position"] == order_ids[0]
    assert first["event_type"] == "orders.OrderPlaced"
    assert first["aggregatetype"] == "orders"
    assert first["aggregateid"] == orders[0].envelope.aggregateid
    assert first["created_at"] == orders[0].envelope.created_at
    assert first["schema_id"] == int.from_bytes(orders[0].value[1:5], "big")
    assert first["received_at"] >= first["created_at"]
    assert first["consumer_group"] == group and first["sink"] == "redis"
    assert all(r["valid"] and r["reason"] is None and r["delivery_count"] == 1 for r in rows)
    assert all(r["dead_letter_reason"] is None for r in rows)
    assert stats.received == 45 and stats.receipts == 45 and stats.batches >= 3
    for stream in ("orders", "canary"):
        pending = await redis_client.xpending(f"{name_prefix}{stream}", group)
        assert pending["pending"] == 0
    assert metric("flowproof_consumer_received_total", sink="redis", group=group) == before + 45
    assert metric("flowproof_e2e_latency_seconds_count", sink="redis", group=group) == 45


async def test_each_bad_message_kind_is_dead_lettered_and_the_consumer_goes_on(
    settings: Settings, database_url: str, redis_client: aioredis.Redis, name_prefix: str
) -> None:
    stream = f"{name_prefix}orders"
    bad = bad_messages("orders")
    before_good, after_good = event(10), event(11)
    ids = await xadd_all(redis_client, stream, [before_good, *bad.values(), after_good])
    position_of = dict(zip(["before", *bad, "after"], ids, strict=True))
    group = group_name()

    with capture_logs() as logs:
        stats = await consume(
            settings, sink="redis", group=group, drain=True, max_message_bytes=4096
        )

    rows = {row["position"]: row for row in await receipts(database_url)}
    assert len(rows) == len(bad) + 2
    for kind, reason in EXPECTED_REASON.items():
        row = rows[position_of[kind]]
        assert not row["valid"], kind
        assert row["reason"] == reason and row["dead_letter_reason"] == reason, kind
        assert row["error"], kind
    assert "'id'" in rows[position_of["envelope"]]["error"]
    assert "'created_at'" in rows[position_of["bad_created_at"]]["error"]
    assert rows[position_of["bad_magic"]]["event_id"] == bad["bad_magic"].id
    assert rows[position_of["envelope"]]["event_id"] is None  # the id is what was missing
    assert rows[position_of["before"]]["valid"] and rows[position_of["after"]]["valid"]

    dlq = await redis_client.xrange(f"{stream}.dlq")
    assert len(dlq) == len(bad)
    by_position = {fields[b"dlq_position"].decode(): fields for _, fields in dlq}
    for kind, message in bad.items():
        fields = by_position[position_of[kind]]
        assert fields[b"dlq_reason"].decode() == EXPECTED_REASON[kind]
        assert fields[b"payload"] == message.value  # the original bytes, unchanged
        assert fields[b"dlq_group"].decode() == group
        assert fields[b"dlq_error"]
    assert (await redis_client.xpending(stream, group))["pending"] == 0
    assert stats.invalid == len(bad) and stats.dead_lettered == len(bad)
    for reason in set(EXPECTED_REASON.values()):
        expected = sum(1 for r in EXPECTED_REASON.values() if r == reason)
        labels = {"sink": "redis", "group": group, "reason": reason}
        assert metric("flowproof_consumer_invalid_total", **labels) == expected
    assert sum(1 for e in logs if e["event"] == "consumer.invalid") == len(bad)

    # The DLQ itself is never consumed: a second run finds nothing new.
    again = await consume(settings, sink="redis", group=group, drain=True)
    assert again.received == 0
    assert not await redis_client.exists(f"{stream}.dlq.dlq")


async def test_delivery_limit_sends_entries_to_the_dlq(
    settings: Settings, database_url: str, redis_client: aioredis.Redis, name_prefix: str
) -> None:
    stream = f"{name_prefix}orders"
    messages = [event(i) for i in range(3)]
    ids = await xadd_all(redis_client, stream, messages)
    group = group_name()
    await redis_client.xgroup_create(stream, group, id="0")
    # A consumer that crashed on these entries again and again: read, never acknowledged.
    await redis_client.xreadgroup(group, "crasher", {stream: ">"})
    await redis_client.execute_command("XCLAIM", stream, group, "crasher", 0, *ids, "RETRYCOUNT", 7)

    stats = await consume(
        settings, sink="redis", group=group, drain=True, claim_idle_ms=0, max_deliveries=5
    )

    rows = await receipts(database_url)
    assert {r["event_id"] for r in rows} == {m.id for m in messages}
    assert all(r["valid"] and r["dead_letter_reason"] == "max_deliveries" for r in rows)
    assert all(r["delivery_count"] == 8 for r in rows)  # 7 + the claim
    dlq = await redis_client.xrange(f"{stream}.dlq")
    assert [f[b"dlq_reason"] for _, f in dlq] == [b"max_deliveries"] * 3
    assert (await redis_client.xpending(stream, group))["pending"] == 0
    assert stats.dead_lettered == 3


async def test_own_pending_entries_are_read_again_after_a_restart(
    settings: Settings, database_url: str, redis_client: aioredis.Redis, name_prefix: str
) -> None:
    stream = f"{name_prefix}orders"
    messages = [event(i) for i in range(4)]
    await xadd_all(redis_client, stream, messages)
    group = group_name()
    await redis_client.xgroup_create(stream, group, id="0")
    await redis_client.xreadgroup(group, "same-name", {stream: ">"}, count=2)

    await consume(settings, sink="redis", group=group, drain=True, name="same-name")

    rows = await receipts(database_url)
    assert {r["event_id"] for r in rows} == {m.id for m in messages}
    counts = sorted(r["delivery_count"] for r in rows)
    assert counts == [1, 1, 2, 2]  # two were delivered before the "restart"
    assert (await redis_client.xpending(stream, group))["pending"] == 0


async def test_sampling_keeps_a_deterministic_share_and_every_invalid_message(
    settings: Settings, database_url: str, redis_client: aioredis.Redis, name_prefix: str
) -> None:
    stream = f"{name_prefix}orders"
    messages = [event(i) for i in range(200)]
    broken = bad_messages("orders")["corrupt_avro"]
    await xadd_all(redis_client, stream, [*messages, broken])
    sampled = settings.model_copy(update={"receipt_sample_ratio": 0.25})

    stats = await consume(sampled, sink="redis", group=group_name(), drain=True)

    rows = await receipts(database_url)
    valid = {r["event_id"] for r in rows if r["valid"]}
    assert valid == {m.id for m in messages if is_sampled(m.id, 0.25)}
    assert 20 < len(valid) < 80
    assert [r["reason"] for r in rows if not r["valid"]] == ["corrupt_avro"]
    assert stats.received == 201


async def test_new_streams_are_discovered_and_dlq_streams_skipped(
    settings: Settings, database_url: str, redis_client: aioredis.Redis, name_prefix: str
) -> None:
    await xadd_all(redis_client, f"{name_prefix}orders.dlq", [event(0)])
    await xadd_all(redis_client, f"{name_prefix}orders", [event(1)])
    group = group_name()
    stop = asyncio.Event()
    task = asyncio.create_task(
        consume(settings, sink="redis", group=group, stop=stop, discovery_interval=0.1)
    )
    try:
        late = event(2, aggregatetype="payments")
        await xadd_all(redis_client, f"{name_prefix}payments", [late])

        async def late_receipted() -> bool:
            return late.id in {r["event_id"] for r in await receipts(database_url)}

        await wait_until(late_receipted, within=20)
    finally:
        stop.set()
        stats = await task
    assert stats.received == 2
    groups = await redis_client.xinfo_groups(f"{name_prefix}orders.dlq")
    assert groups == []  # never joined, never read


async def test_group_of_an_existing_stream_reads_its_history(
    settings: Settings, database_url: str, redis_client: aioredis.Redis, name_prefix: str
) -> None:
    # XGROUP CREATE ... 0: a group created after the events still receives them; a second
    # consumer of the group (BUSYGROUP) joins without error and finds nothing left.
    messages = [event(i) for i in range(3)]
    await xadd_all(redis_client, f"{name_prefix}orders", messages)
    group = group_name()
    first = await consume(settings, sink="redis", group=group, drain=True)
    second = await consume(settings, sink="redis", group=group, drain=True)
    assert (first.received, second.received) == (3, 0)
    other = await consume(settings, sink="redis", group=group_name(), drain=True)
    assert other.received == 3
    rows = await receipts(database_url)
    assert len(rows) == 6 and len({r["consumer_group"] for r in rows}) == 2
    assert uuid.UUID(str(rows[0]["event_id"])) in {m.id for m in messages}


async def test_a_nul_in_a_valid_envelope_does_not_block_the_receipts(
    settings: Settings, database_url: str, redis_client: aioredis.Redis, name_prefix: str
) -> None:
    odd = event(1)
    odd.envelope = odd.envelope.model_copy(update={"aggregateid": "a\x00b"})
    await xadd_all(redis_client, f"{name_prefix}orders", [odd, event(2)])
    stats = await consume(settings, sink="redis", group=group_name(), drain=True)
    rows = {r["event_id"]: r for r in await receipts(database_url)}
    assert stats.abandoned_batches == 0 and len(rows) == 2
    assert rows[odd.id]["aggregateid"] == "a\ufffdb"


async def test_the_next_batch_is_read_while_the_receipts_are_written(
    settings: Settings, database_url: str, redis_client: aioredis.Redis, name_prefix: str
) -> None:
    # While PostgreSQL holds the first batch's receipts (a lock on the table), the consumer reads
    # and processes the next batch; it acknowledges neither, and reads no third (one batch at a
    # time in the durable end). Once the lock goes, everything is receipted once and acked.
    stream = f"{name_prefix}orders"
    messages = [event(i) for i in range(12)]
    await xadd_all(redis_client, stream, messages)
    group = group_name()

    async def pending() -> int:
        try:
            return int((await redis_client.xpending(stream, group))["pending"])
        except ResponseError:  # NOGROUP: the consumer has not created it yet
            return 0

    stop = asyncio.Event()
    locker = await asyncpg.connect(database_url)
    task: asyncio.Task[object] | None = None
    try:
        lock = locker.transaction()
        await lock.start()
        await locker.execute("LOCK TABLE flowproof_receipts IN SHARE MODE")
        task = asyncio.create_task(
            consume(settings, sink="redis", group=group, stop=stop, batch_size=4)
        )

        async def two_batches_in_hand() -> bool:
            assert task is not None
            if task.done():
                raise AssertionError(f"the consumer stopped: {task.result()}")
            return await pending() == 8

        await wait_until(two_batches_in_hand, within=20)
        await asyncio.sleep(0.5)
        assert await pending() == 8 and not task.done()
        assert await receipts(database_url) == []
        await lock.rollback()

        async def all_done() -> bool:
            return len(await receipts(database_url)) == 12 and await pending() == 0

        await wait_until(all_done, within=20)
    finally:
        stop.set()
        await locker.close()
        stats = await task if task is not None else None
    rows = await receipts(database_url)
    assert sorted(str(r["event_id"]) for r in rows) == sorted(str(m.id) for m in messages)
    assert stats is not None and stats.abandoned_batches == 0  # type: ignore[attr-defined]
