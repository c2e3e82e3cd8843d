"""Writing events: `publisher.outbox.emit` inside the caller's transaction, checked before it
writes anything, serialising the writers of one aggregate; `flowproof emit` on the command line."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid

import asyncpg
import pytest

from flowproof.core.routing import InvalidDestination
from flowproof.publisher.errors import EnvelopeInvalid, Oversized
from flowproof.publisher.outbox import emit
from flowproof.schemas.errors import PayloadInvalid, UnknownEventType
from tests.readback import wait_until

ORDER = {
    "order_id": "o-1",
    "customer_id": "c-1",
    "currency": "EUR",
    "total_cents": 1250,
    "lines": [{"sku": "s-1", "quantity": 2, "unit_price_cents": 625}],
}
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def count(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM flowproof_outbox"))


async def test_emit_writes_in_the_callers_transaction(conn: asyncpg.Connection) -> None:
    async with conn.transaction():
        event_id = await emit(
            conn,
            type="orders.OrderPlaced",
            aggregate_type="order",
            aggregate_id="o-1",
            payload=ORDER,
            headers={"traceparent": TRACEPARENT},
        )
        # Rolled back with the caller's transaction: emit never commits by itself.
        with pytest.raises(RuntimeError, match="roll back"):
            async with conn.transaction():
                await emit(
                    conn,
                    type="orders.OrderPlaced",
                    aggregate_type="order",
                    aggregate_id="o-2",
                    payload=ORDER,
                )
                raise RuntimeError("roll back")
    row = await conn.fetchrow("SELECT * FROM flowproof_outbox")
    assert await count(conn) == 1
    assert row["id"] == event_id
    assert (row["type"], row["aggregatetype"], row["aggregateid"]) == (
        "orders.OrderPlaced",
        "order",
        "o-1",
    )
    assert json.loads(row["payload"]) == ORDER
    assert json.loads(row["headers"]) == {"traceparent": TRACEPARENT}
    assert row["txid"] is not None  # the inserting transaction, for the relay's cursors
    progress = await conn.fetchrow("SELECT * FROM flowproof_outbox_progress")
    assert progress["redis_published_at"] is None and progress["kafka_published_at"] is None
    assert progress["redis_state"] is None and progress["kafka_state"] is None  # pending


@pytest.mark.parametrize(
    ("changes", "error", "field"),
    [
        ({"payload": {**ORDER, "total_cents": "12.50"}}, PayloadInvalid, "total_cents"),
        ({"payload": {**ORDER, "lines": [{"sku": "s"}]}}, PayloadInvalid, "lines[0].quantity"),
        ({"payload": {**ORDER, "extra": 1}}, PayloadInvalid, "extra"),
        ({"type": "orders.Nope"}, UnknownEventType, None),
        ({"aggregate_type": "bad type"}, InvalidDestination, None),
        ({"headers": {"traceparent": "x"}}, EnvelopeInvalid, "traceparent"),
        ({"aggregate_id": ""}, EnvelopeInvalid, "aggregateid"),
        ({"payload": {**ORDER, "customer_id": "c" * 1_000_001}}, Oversized, None),
    ],
    ids=["wrong-type", "nested-missing", "unknown-field", "type", "dest", "trace", "id", "size"],
)
async def test_emit_refuses_a_bad_event_before_writing(
    conn: asyncpg.Connection, changes: dict[str, object], error: type[Exception], field: str | None
) -> None:
    event = {
        "type": "orders.OrderPlaced",
        "aggregate_type": "order",
        "aggregate_id": "o-1",
        "payload": ORDER,
        **changes,
    }
    async with conn.transaction():
        with pytest.raises(error) as raised:
            await emit(conn, **event)  # type: ignore[arg-type]
        if field is not None:
            assert raised.value.field == field  # type: ignore[attr-defined]
            assert repr(field) in str(raised.value)
        # Nothing was sent to PostgreSQL: the caller's transaction is still usable.
        await emit(
            conn,
            type="orders.OrderPlaced",
            aggregate_type="order",
            aggregate_id="ok",
            payload=ORDER,
        )
    assert await count(conn) == 1


async def test_writers_of_one_aggregate_get_seqs_in_commit_order(database_url: str) -> None:
    first, second, other = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        first_tx = first.transaction()
        await first_tx.start()
        await emit(
            first,
            type="orders.OrderPlaced",
            aggregate_type="order",
            aggregate_id="A",
            payload=ORDER,
        )
        # A second writer of the same aggregate waits for the first transaction...
        second_tx = second.transaction()
        await second_tx.start()
        waiting = asyncio.create_task(
            emit(
                second,
                type="orders.OrderPlaced",
                aggregate_type="order",
                aggregate_id="A",
                payload=ORDER,
            )
        )

        async def second_waits() -> bool:
            return bool(
                await other.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND pid = $1",
                    second.get_server_pid(),
                )
            )

        await wait_until(second_waits, 10)
        # ...while a writer of another aggregate does not.
        await emit(
            other,
            type="orders.OrderPlaced",
            aggregate_type="order",
            aggregate_id="B",
            payload=ORDER,
        )
        assert not waiting.done()
        await first_tx.commit()
        await asyncio.wait_for(waiting, 10)
        await second_tx.commit()
        rows = await other.fetch("SELECT seq, aggregateid FROM flowproof_outbox ORDER BY seq")
    finally:
        for connection in (first, second, other):
            await connection.close()
    a_rows = [r["seq"] for r in rows if r["aggregateid"] == "A"]
    b_seq = next(r["seq"] for r in rows if r["aggregateid"] == "B")
    # The second writer's row got its seq after the first committed: after B's, too.
    assert a_rows[0] < b_seq < a_rows[1]


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


async def test_emit_command(settings_env: dict[str, str], conn: asyncpg.Connection) -> None:
    base = ["emit", "--type", "orders.OrderPlaced", "--aggregate-type", "order"]
    done = await flowproof(
        settings_env,
        *base,
        "--aggregate-id", "o-9",
        "--payload", json.dumps(ORDER),
        "--headers", json.dumps({"traceparent": TRACEPARENT}),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    event_id = uuid.UUID(done.stdout.strip())
    assert (
        await conn.fetchval("SELECT aggregateid FROM flowproof_outbox WHERE id = $1", event_id)
        == "o-9"
    )

    bad = await flowproof(
        settings_env,
        *base,
        "--aggregate-id",
        "o-9",
        "--payload",
        json.dumps({**ORDER, "total_cents": "x"}),
    )
    assert bad.returncode == 2
    assert "invalid event" in bad.stderr and "'total_cents'" in bad.stderr
    unknown = await flowproof(
        settings_env, "emit", "--type", "orders.Nope", "--aggregate-type", "order",
        "--aggregate-id", "o-9", "--payload", "{}",
    )  # fmt: skip
    assert unknown.returncode == 2
    assert "unknown event type 'orders.Nope'" in unknown.stderr
    not_json = await flowproof(settings_env, *base, "--aggregate-id", "o-9", "--payload", "{oops")
    assert not_json.returncode == 2
    assert "--payload is not valid JSON" in not_json.stderr
    assert await count(conn) == 1  # nothing but the good one was written
