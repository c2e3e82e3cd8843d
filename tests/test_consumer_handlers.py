"""Handlers: typed events, reader versions, retries, then the DLQ (through real Redis)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel
from structlog.testing import capture_logs

from flowproof.consumers.app import Consumer
from flowproof.consumers.event import Event, Payload
from flowproof.consumers.run import consume
from flowproof.core.config import Settings
from flowproof.core.errors import ConfigError
from flowproof.schemas.errors import UnknownEventType
from flowproof.schemas.registry import SchemaRegistry
from tests.test_consumer_support import event, group_name, metric, receipts, xadd_all

REGISTRY = SchemaRegistry.load()


class OrderPlaced(BaseModel):
    order_id: str
    customer_id: str
    total_cents: int
    channel: str
    coupon_code: str | None


@dataclass(frozen=True)
class OrderPlacedV1:
    order_id: str
    total_cents: int
    currency: str
    customer_id: str
    lines: list[dict[str, object]]


async def test_typed_events_resolved_to_the_reader_version(
    settings: Settings, redis_client: aioredis.Redis, name_prefix: str
) -> None:
    written_v1, written_v2 = event(1, version=1), event(2, version=2)
    await xadd_all(redis_client, f"{name_prefix}orders", [written_v1, written_v2])
    paid = event(
        3,
        event_type="orders.OrderPaid",
        payload={"order_id": "o-3", "payment_id": "p", "amount_cents": 5, "method": "CARD"},
    )
    await xadd_all(redis_client, f"{name_prefix}orders", [paid])
    seen: list[Event[OrderPlaced]] = []
    raw: list[Event[Payload]] = []
    app = Consumer(REGISTRY)

    @app.handler("orders.OrderPlaced", model=OrderPlaced)
    async def on_placed(evt: Event[OrderPlaced]) -> None:
        seen.append(evt)

    @app.handler("orders.OrderPaid")
    def on_paid(evt: Event[Payload]) -> None:  # plain functions work too
        raw.append(evt)

    await consume(settings, sink="redis", group=group_name(), app=app, drain=True)

    assert [e.id for e in seen] == [written_v1.id, written_v2.id]
    assert [e.version for e in seen] == [1, 2]  # the writer's version
    assert all(e.reader.version == 2 for e in seen)
    assert seen[0].payload.channel == "web"  # v2's default fills what v1 did not write
    assert seen[0].payload == OrderPlaced(
        order_id="o-1", customer_id="c-1", total_cents=100, channel="web", coupon_code=None
    )
    assert seen[0].created_at == written_v1.envelope.created_at
    assert seen[0].aggregateid == "agg-1" and seen[0].delivery_count == 1
    assert raw[0].payload["method"] == "CARD" and raw[0].type == "orders.OrderPaid"


async def test_a_handler_can_pin_an_older_reader_version(
    settings: Settings, redis_client: aioredis.Redis, name_prefix: str
) -> None:
    written_v2 = event(7, version=2)
    await xadd_all(redis_client, f"{name_prefix}orders", [written_v2])
    seen: list[Event[OrderPlacedV1]] = []
    app = Consumer(REGISTRY)

    @app.handler("orders.OrderPlaced", model=OrderPlacedV1, version=1)
    async def on_placed(evt: Event[OrderPlacedV1]) -> None:
        seen.append(evt)

    await consume(settings, sink="redis", group=group_name(), app=app, drain=True)
    assert len(seen) == 1
    assert seen[0].version == 2 and seen[0].reader.version == 1
    assert seen[0].payload.order_id == "o-7"


async def test_handler_errors_are_retried_then_dead_lettered(
    settings: Settings, database_url: str, redis_client: aioredis.Redis, name_prefix: str
) -> None:
    flaky, broken, fine = event(1), event(2), event(3)
    stream = f"{name_prefix}orders"
    await xadd_all(redis_client, stream, [flaky, broken, fine])
    calls: Counter[object] = Counter()
    app = Consumer(REGISTRY)

    @app.handler("orders.OrderPlaced")
    async def on_placed(evt: Event[Payload]) -> None:
        calls[evt.id] += 1
        if evt.id == broken.id or (evt.id == flaky.id and calls[evt.id] == 1):
            raise RuntimeError(f"cannot handle {evt.payload['order_id']}")

    group = group_name()
    with capture_logs() as logs:
        stats = await consume(
            settings, sink="redis", group=group, app=app, drain=True, handler_attempts=3
        )

    assert calls == {flaky.id: 2, broken.id: 3, fine.id: 1}
    rows = {r["event_id"]: r for r in await receipts(database_url)}
    assert rows[flaky.id]["dead_letter_reason"] is None
    assert rows[fine.id]["dead_letter_reason"] is None
    dead = rows[broken.id]
    assert dead["valid"] and dead["reason"] is None  # the message itself conforms
    assert dead["dead_letter_reason"] == "handler_error"
    assert "RuntimeError: cannot handle o-2" in dead["error"]
    dlq = await redis_client.xrange(f"{stream}.dlq")
    assert len(dlq) == 1
    assert dlq[0][1][b"dlq_reason"] == b"handler_error"
    assert dlq[0][1][b"id"] == str(broken.id).encode()
    assert (await redis_client.xpending(stream, group))["pending"] == 0
    assert stats.dead_lettered == 1
    failures = [e for e in logs if e["event"] == "consumer.handler_failed"]
    assert len(failures) == 4 and failures[-1]["retry_in"] is None
    labels = {"sink": "redis", "group": group}
    assert metric("flowproof_consumer_handler_failures_total", **labels) == 4
    assert metric("flowproof_consumer_dead_lettered_total", **labels, reason="handler_error") == 1


async def test_a_payload_the_model_refuses_is_a_handler_error(
    settings: Settings, database_url: str, redis_client: aioredis.Redis, name_prefix: str
) -> None:
    class Strict(BaseModel):
        order_id: int  # the schema says string: every conversion fails

    await xadd_all(redis_client, f"{name_prefix}orders", [event(1)])
    app = Consumer(REGISTRY)
    app.add_handler("orders.OrderPlaced", lambda evt: None, model=Strict)
    await consume(
        settings, sink="redis", group=group_name(), app=app, drain=True, handler_attempts=1
    )
    (row,) = await receipts(database_url)
    assert row["dead_letter_reason"] == "handler_error" and "order_id" in row["error"]


def test_registration_refuses_what_cannot_work() -> None:
    app = Consumer(REGISTRY)
    with pytest.raises(UnknownEventType):
        app.add_handler("orders.OrderRefunded", lambda evt: None)
    with pytest.raises(ConfigError, match="no schema version 3"):
        app.add_handler("orders.OrderPlaced", lambda evt: None, version=3)

    class NeedsMore(BaseModel):
        order_id: str
        loyalty_points: int

    with pytest.raises(ConfigError, match="loyalty_points"):
        app.add_handler("orders.OrderPlaced", lambda evt: None, model=NeedsMore)
    app.add_handler("orders.OrderPlaced", lambda evt: None)
    with pytest.raises(ConfigError, match="already has a handler"):
        app.add_handler("orders.OrderPlaced", lambda evt: None)
