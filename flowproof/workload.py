"""A generated workload of the sample domain (orders), for the demo, benchmarks and fault tests.

Each order lives through OrderPlaced -> OrderPaid -> OrderShipped, or is cancelled on the way, so
the events of one aggregate have a real order that the verifier can check. Payloads are about
200 bytes of Avro.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from flowproof.publisher.outbox import Outbox

AGGREGATE_TYPE = "order"
_SKUS = [f"SKU-{n:05d}" for n in range(1, 400)]
_CARRIERS = ("dhl", "ups", "postnl", "dpd")


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One event to emit: what `publisher.outbox.emit` takes."""

    type: str
    aggregate_type: str
    aggregate_id: str
    payload: dict[str, Any]


class OrderWorkload:
    """An endless, reproducible stream of order events over `orders` concurrent orders."""

    def __init__(self, seed: int = 7, orders: int = 500, prefix: str = "o") -> None:
        self._rng = random.Random(seed)
        self._orders = orders
        self._prefix = prefix
        self._next_order = 0
        # order id -> the step it reached: 0 placed, 1 paid (then shipped or cancelled: done)
        self._open: dict[str, int] = {}

    def __iter__(self) -> Iterator[EventSpec]:
        return self

    def __next__(self) -> EventSpec:
        if len(self._open) < self._orders:
            return self._place()
        order_id = self._rng.choice(list(self._open))
        step = self._open[order_id]
        if step == 0 and self._rng.random() < 0.9:
            self._open[order_id] = 1
            return self._paid(order_id)
        del self._open[order_id]
        if step == 1 and self._rng.random() < 0.95:
            return self._shipped(order_id)
        return self._cancelled(order_id)

    def take(self, count: int) -> list[EventSpec]:
        return [next(self) for _ in range(count)]

    def _spec(self, event_type: str, order_id: str, payload: dict[str, Any]) -> EventSpec:
        return EventSpec(event_type, AGGREGATE_TYPE, order_id, payload)

    def _place(self) -> EventSpec:
        self._next_order += 1
        order_id = f"{self._prefix}-{self._next_order:08d}"
        self._open[order_id] = 0
        lines: list[dict[str, Any]] = []
        total = 0
        for _ in range(self._rng.randint(1, 3)):
            quantity, price = self._rng.randint(1, 4), self._rng.randint(199, 9999)
            lines.append(
                {"sku": self._rng.choice(_SKUS), "quantity": quantity, "unit_price_cents": price}
            )
            total += quantity * price
        payload = {
            "order_id": order_id,
            "customer_id": f"c-{self._rng.randint(1, 50_000):06d}",
            "currency": self._rng.choice(("EUR", "USD", "GBP")),
            "total_cents": total,
            "lines": lines,
            "channel": self._rng.choice(("web", "app", "store")),
            "coupon_code": "WELCOME10" if self._rng.random() < 0.1 else None,
        }
        return self._spec("orders.OrderPlaced", order_id, payload)

    def _paid(self, order_id: str) -> EventSpec:
        payload = {
            "order_id": order_id,
            "payment_id": f"pay-{self._rng.getrandbits(48):012x}",
            "amount_cents": self._rng.randint(199, 30_000),
            "method": self._rng.choice(("CARD", "TRANSFER", "WALLET")),
        }
        return self._spec("orders.OrderPaid", order_id, payload)

    def _shipped(self, order_id: str) -> EventSpec:
        payload = {
            "order_id": order_id,
            "carrier": self._rng.choice(_CARRIERS),
            "tracking_number": f"TR{self._rng.getrandbits(40):010d}",
            "shipped_at": dt.datetime.now(dt.UTC).isoformat(),
        }
        return self._spec("orders.OrderShipped", order_id, payload)

    def _cancelled(self, order_id: str) -> EventSpec:
        payload = {
            "order_id": order_id,
            "reason": self._rng.choice(("customer request", "payment failed", "out of stock")),
            "refund_cents": self._rng.choice((None, self._rng.randint(199, 30_000))),
        }
        return self._spec("orders.OrderCancelled", order_id, payload)


async def emit_batch(conn: asyncpg.Connection, outbox: Outbox, specs: list[EventSpec]) -> None:
    """Emit `specs` in one transaction on `conn`, as an application would."""
    async with conn.transaction():
        for spec in specs:
            await outbox.emit(
                conn,
                type=spec.type,
                aggregate_type=spec.aggregate_type,
                aggregate_id=spec.aggregate_id,
                payload=spec.payload,
            )


async def emit_at_rate(
    pool: asyncpg.Pool,
    outbox: Outbox,
    workload: OrderWorkload,
    *,
    rate: float,
    stop: asyncio.Event,
    on_emitted: Callable[[int], None] = lambda _n: None,
    tick: float = 0.05,
) -> int:
    """Emit events at about `rate` per second until `stop` is set; return how many.

    Every `tick` seconds the events due are written in one transaction; a pool connection at a
    time, so the rate holds as long as the database keeps up (if it does not, the shortfall is
    made up as fast as it can, never skipped).
    """
    emitted = 0
    started = time.monotonic()
    while not stop.is_set():
        due = int((time.monotonic() - started) * rate) - emitted
        if due > 0:
            async with pool.acquire() as conn:
                await emit_batch(conn, outbox, workload.take(due))
            emitted += due
            on_emitted(emitted)
        try:
            await asyncio.wait_for(stop.wait(), tick)
        except TimeoutError:
            continue
    return emitted
