"""One sink's publishing loop: take a fair share of slots, claim, encode, publish, mark.

Everything a worker writes (park marks, published marks) goes through the connection that holds
its slot locks; see `publisher.slots`. A full batch is followed at once by the next claim, so a
busy outbox needs no NOTIFY; an idle worker waits for a NOTIFY, the poll interval or a stop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from flowproof.core.aio import shielded, wait_any
from flowproof.core.config import Settings
from flowproof.core.errors import ComponentUnreachable
from flowproof.core.logging import get_logger
from flowproof.core.metrics import RELAY_PARKED, RELAY_PUBLISH_FAILURES, RELAY_PUBLISHED
from flowproof.core.retry import RetryPolicy
from flowproof.publisher.db import close_quietly, connect_relay, database_boundary
from flowproof.publisher.encoding import Encoder
from flowproof.publisher.errors import DatabaseLost, SinkError
from flowproof.publisher.pacing import Pacing
from flowproof.publisher.queries import deliveries_table, query
from flowproof.publisher.rows import Message, OutboxRow, Parked
from flowproof.publisher.sink import Acknowledged, Sink, acknowledged
from flowproof.publisher.slots import SlotLeases, fair_share

log = get_logger(__name__)

# The columns of `<outbox>_deliveries` the relay writes (COPY), in the order of its rows.
DELIVERY_COLUMNS = ("seq", "sink", "destination", "partition", "position", "created_at")


@dataclass(slots=True)
class SinkStats:
    """What one worker did, for tests and the bench (the metrics have the same, process-wide)."""

    published: int = 0
    parked: int = 0
    failures: int = 0
    batches: int = 0


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    claimed: int = 0
    full: bool = False
    failed: int = 0


# How long a worker whose sink is connected waits for the other sinks to connect before its
# first claim. Workers that start together keep claiming the same rows at about the same time,
# which is what lets one encoding serve them all (flowproof.publisher.encode_cache).
START_GRACE_SECONDS = 3.0


class StartLine:
    """Where the workers of one relay wait for each other once, before their first claim."""

    def __init__(self, workers: int) -> None:
        self._left = workers
        self._everyone = asyncio.Event()

    async def arrive(self, stop: asyncio.Event) -> None:
        """Wait until every worker arrived, the grace passed, or a stop was requested."""
        self._left -= 1
        if self._left <= 0:
            self._everyone.set()
        await wait_any([self._everyone, stop], START_GRACE_SECONDS)


def retry_policy(settings: Settings) -> RetryPolicy:
    """The relay's policy: capped, jittered, forever (a down sink must not lose events)."""
    base = settings.relay_retry_base_seconds
    return RetryPolicy(base=base, cap=max(settings.relay_retry_cap_seconds, base))


class SinkWorker:
    """Publishes the outbox to one sink, for the slots it holds."""

    def __init__(
        self,
        settings: Settings,
        sink: Sink,
        encoder: Encoder,
        *,
        wake: asyncio.Event,
        stop: asyncio.Event,
        start_line: StartLine | None = None,
        pacing: Pacing | None = None,
    ) -> None:
        self.settings = settings
        self._pacing = pacing
        self.sink = sink
        self._start_line = start_line
        self.name = sink.name
        self.encoder = encoder
        self.leases = SlotLeases(settings.outbox_table, sink.name)
        self.stats = SinkStats()
        self._wake = wake
        self._stop = stop
        # Set while the worker waits for a NOTIFY or the poll interval (tests wait for it).
        self.idle = asyncio.Event()
        self._policy = retry_policy(settings)
        self._conn: asyncpg.Connection | None = None
        self._next_rebalance = 0.0
        self._failing = False
        table, sink_name = settings.outbox_table, sink.name
        self._claim = query("claim", table, sink_name)
        self._mark = query("mark_published", table, sink_name)
        self._park_sql = query("park", table, sink_name)
        self._deliveries = deliveries_table(table)

    def wake(self) -> None:
        """Look for rows now instead of at the end of the poll interval."""
        self._wake.set()

    async def run(self, *, until_idle: bool = False) -> None:
        """Publish until stopped, or, with `until_idle`, until nothing is left to claim."""
        attempt = 0
        try:
            await self._start()
            while not self._stop.is_set():
                try:
                    outcome = await self._cycle()
                except (DatabaseLost, ComponentUnreachable) as exc:
                    attempt += 1
                    await self._drop_connection()
                    log.warning("relay.database_lost", sink=self.name, error=str(exc))
                    await self._pause(attempt)
                    continue
                if outcome.failed:
                    attempt += 1
                    await self._pause(attempt)
                    continue
                attempt = 0
                if outcome.full:
                    continue
                if until_idle:
                    if outcome.claimed == 0:
                        return
                    continue
                await self._idle()
        finally:
            await self._drop_connection()
            await self.sink.close()

    async def _start(self) -> None:
        """Connect the sink before the first claim (a failure is retried by the loop), then
        wait a little for the other sinks of the relay to be connected too."""
        try:
            await self.sink.start()
        except SinkError as exc:
            log.warning("relay.sink_unavailable", sink=self.name, error=str(exc))
        if self._start_line is not None:
            await self._start_line.arrive(self._stop)

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self.leases.lost()
            self._conn = await connect_relay(self.settings, self.name)
            self._next_rebalance = 0.0
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self.leases.lost()
        await close_quietly(conn)

    async def _cycle(self) -> BatchOutcome:
        conn = await self._connection()
        async with database_boundary(f"{self.name} worker"):
            if self.leases.member_id is None:
                await self.leases.join(conn)
            now = asyncio.get_running_loop().time()
            if now >= self._next_rebalance:
                await self.leases.rebalance(conn)
                self._next_rebalance = now + self.settings.relay_rebalance_interval_seconds
            if not self.leases.owned:
                return BatchOutcome()
            if self._pacing is not None:
                await self._pacing.pace(self.name, self._stop)
            # Cleared before the claim: a NOTIFY that arrives from here on wakes the next wait.
            self._wake.clear()
            records = await conn.fetch(
                self._claim, sorted(self.leases.owned), self.settings.relay_batch_size
            )
        if not records:
            return BatchOutcome()
        self.stats.batches += 1
        rows = [OutboxRow.from_record(r) for r in records]
        if not await self.encoder.register_schemas(rows):  # the schema registry did not answer
            return BatchOutcome(claimed=len(rows), failed=len(rows))
        plan = self.encoder.plan(rows)
        if plan.parked:
            await self._park(conn, plan.parked)
        created = {row.seq: row.created_at for row in rows}
        failed = await self._publish(conn, plan.messages, created)
        return BatchOutcome(
            claimed=len(records),
            full=len(records) == self.settings.relay_batch_size,
            failed=failed,
        )

    async def _park(self, conn: asyncpg.Connection, parked: Sequence[Parked]) -> None:
        async with database_boundary(f"{self.name} worker parking rows"):
            await shielded(
                conn.execute(
                    self._park_sql,
                    [p.seq for p in parked],
                    [p.reason for p in parked],
                    [p.error for p in parked],
                ),
                "park",
            )
        self.stats.parked += len(parked)
        for row in parked:
            RELAY_PARKED.labels(row.reason).inc()
            log.warning(
                "relay.parked",
                sink=self.name,
                seq=row.seq,
                id=str(row.id),
                reason=row.reason,
                error=row.error,
            )

    async def _publish(
        self,
        conn: asyncpg.Connection,
        messages: Sequence[Message],
        created: dict[int, dt.datetime | None],
    ) -> int:
        """Send, then mark what the sink acknowledged; return how many sends failed."""
        if not messages:
            return 0
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await self.sink.start()
            outcomes = await self.sink.publish(messages)
        except SinkError as exc:
            outcomes = [exc] * len(messages)
        result = acknowledged(messages, outcomes)
        marked, held_back, errors = result.marked, result.held_back, result.errors
        if result.placements:
            async with database_boundary(f"{self.name} worker marking rows"):
                await shielded(self._record(conn, result, created), "mark_published")
            self.stats.published += len(marked)
            RELAY_PUBLISHED.labels(self.name).inc(len(marked))
        if errors:
            self.stats.failures += len(errors)
            RELAY_PUBLISH_FAILURES.labels(self.name).inc(len(errors))
            log.warning(
                "relay.publish_failed",
                sink=self.name,
                failed=len(errors),
                published=len(marked),
                published_again_later=held_back,
                error=str(errors[0]),
            )
            self._failing = True
            await self.sink.reset()
            return len(errors)
        if self._failing:
            self._failing = False
            log.info("relay.sink_recovered", sink=self.name)
        log.debug(
            "relay.batch_published",
            sink=self.name,
            events=len(marked),
            seconds=round(loop.time() - started, 4),
        )
        return 0

    async def _record(
        self,
        conn: asyncpg.Connection,
        result: Acknowledged,
        created: dict[int, dt.datetime | None],
    ) -> None:
        """Mark the batch published and record where the sink put each event, atomically: a
        published event always has its position (the verifier judges loss by it)."""
        rows = [
            (seq, self.name, placed.destination, placed.partition, placed.position, created[seq])
            for seq, placed in result.placements
        ]
        async with conn.transaction():
            if result.marked:
                await conn.execute(self._mark, result.marked)
            await conn.copy_records_to_table(
                self._deliveries, records=rows, columns=DELIVERY_COLUMNS
            )

    async def _idle(self) -> None:
        timeout = self.settings.relay_poll_interval_seconds
        if len(self.leases.owned) < fair_share(self.leases.members):
            # Below its share: look again for slots another relay gave back.
            timeout = min(timeout, self.settings.relay_rebalance_interval_seconds)
        self.idle.set()
        try:
            await wait_any([self._wake, self._stop], timeout)
        finally:
            self.idle.clear()

    async def _pause(self, attempt: int) -> None:
        delay = self._policy.delay(attempt) or self._policy.cap
        log.info("relay.retry_scheduled", sink=self.name, attempt=attempt, seconds=round(delay, 3))
        await wait_any([self._stop], delay)
