"""The workload of a fault scenario: order events written to the outbox as an application would.

`WorkloadDriver` emits `total` events of `flowproof.workload.OrderWorkload` at about `rate` per
second, a small transaction every tick (`flowproof.workload.emit_batch`), on its own connection.
It writes straight to PostgreSQL, never through a fault proxy: the application is not under test.
When PostgreSQL goes away (its restart is a scenario), the batch in hand is tried again on a new
connection until it commits; a commit whose answer was lost may then be written twice (as new
events: the accounting counts what the outbox holds, so that costs nothing).
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from flowproof.publisher.outbox import Outbox
from flowproof.workload import EventSpec, OrderWorkload, emit_batch

RETRY_PAUSE = 0.2
CONNECT_TIMEOUT = 5.0
_LOST = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up
    asyncpg.exceptions.InternalClientError,  # a statement on a session the server just ended
)


class WorkloadDriver:
    """Emits `total` events at `rate` per second; `emitted` counts the committed ones."""

    def __init__(
        self,
        database_url: str,
        outbox: Outbox,
        *,
        total: int,
        rate: float,
        seed: int,
        tick: float = 0.05,
        orders: int = 2000,
    ) -> None:
        self.database_url = database_url
        self.outbox = outbox
        self.total = total
        self.rate = rate
        self.tick = tick
        self.workload = OrderWorkload(seed=seed, orders=orders)
        self.emitted = 0
        self.retries = 0
        self.errors: list[str] = []
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._progress = asyncio.Condition()
        self._conn: asyncpg.Connection | None = None

    async def run(self) -> int:
        """Emit everything, then return how many events were committed."""
        self.started_at = time.monotonic()
        try:
            while self.emitted < self.total:
                due = min(int((time.monotonic() - self.started_at) * self.rate), self.total)
                if due > self.emitted:
                    await self._emit(self.workload.take(due - self.emitted))
                else:
                    await asyncio.sleep(self.tick)
        finally:
            self.finished_at = time.monotonic()
            if self._conn is not None:
                self._conn.terminate()
        return self.emitted

    async def wait_emitted(self, count: int) -> None:
        """Until at least `count` events are committed (or all of them are)."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.emitted >= min(count, self.total))

    async def _emit(self, specs: list[EventSpec]) -> None:
        while True:
            try:
                conn = await self._connection()
                await emit_batch(conn, self.outbox, specs)
                break
            except _LOST as exc:
                # PostgreSQL is restarting (a scenario): keep the batch, try it again.
                self.retries += 1
                if len(self.errors) < 20:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                if self._conn is not None:
                    self._conn.terminate()
                self._conn = None
                await asyncio.sleep(RETRY_PAUSE)
        async with self._progress:
            self.emitted += len(specs)
            self._progress.notify_all()

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.database_url, timeout=CONNECT_TIMEOUT)
        return self._conn
