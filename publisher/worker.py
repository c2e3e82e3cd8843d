"""One sink's publishing loop: take a fair share of slots, claim, encode, publish, record.

The outbox is never updated. A batch comes either from the queue of rows set aside earlier
(`<outbox>_parked`, state queued: parked rows given another try, rows owed at the upgrade) or
from the rounds of the owned slots' cursors (`<outbox>_cursors`, PgQ-style snapshot batches; see
migrations 0050 and 0060). A claim is one round trip (the `<outbox>_claim` function), and so is
the record of what a batch did, in one statement: where the sink put each event
(`<outbox>_deliveries`), the rows set aside (parked, held behind a parked row, queued behind
queued rows of their aggregate), and the cursors moved past the batch.

Everything a worker writes goes through the connection that holds its slot locks; see
`publisher.slots`. A full batch is followed at once by the next claim, so a busy outbox needs no
NOTIFY; an idle worker waits for a NOTIFY, the poll interval or a stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from flowproof.core.aio import shielded, wait_any
from flowproof.core.config import Settings
from flowproof.core.errors import ComponentUnreachable
from flowproof.core.logging import get_logger
from flowproof.core.metrics import RELAY_PARKED, RELAY_PUBLISH_FAILURES, RELAY_PUBLISHED
from flowproof.core.retry import RetryPolicy
from flowproof.core.sqltext import text_array
from flowproof.publisher.db import close_quietly, connect_relay, database_boundary
from flowproof.publisher.encoding import Encoder
from flowproof.publisher.errors import DatabaseLost, SinkError
from flowproof.publisher.pacing import Pacing
from flowproof.publisher.queries import query
from flowproof.publisher.rows import Aggregate, Message, OutboxRow, Parked
from flowproof.publisher.sink import Acknowledged, Outcomes, Sink, acknowledged
from flowproof.publisher.slots import SlotLeases

log = get_logger(__name__)


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


@dataclass(frozen=True, slots=True)
class SetAside:
    """A row of a batch that is not published now: parked (with a reason), held behind a parked
    row of its aggregate, or queued behind queued rows of its aggregate."""

    seq: int
    slot: int
    aggregatetype: str
    aggregateid: str
    state: str
    reason: str | None = None
    error: str | None = None


@dataclass(slots=True)
class Batch:
    """One claim: its rows, where they came from, and what the worker made of them."""

    rows: list[OutboxRow]
    slots: dict[int, int]  # seq -> slot
    queued: bool  # from the queue (else from the cursors' rounds)
    owned: list[int]  # the slots claimed for
    set_aside: list[SetAside] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)  # what is sent, once prepared

    def aside(self, row: OutboxRow, state: str, why: Parked | None = None) -> None:
        """Set `row` aside as `state` (parked: `why`)."""
        reason, error = (why.reason, why.error) if why is not None else (None, None)
        self.set_aside.append(
            SetAside(
                row.seq,
                self.slots[row.seq],
                row.aggregatetype,
                row.aggregateid,
                state,
                reason,
                error,
            )
        )


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
        member_id: int | None = None,
    ) -> None:
        self.settings = settings
        self._pacing = pacing
        self.sink = sink
        self._start_line = start_line
        self.name = sink.name
        self.encoder = encoder
        self.leases = SlotLeases(settings.outbox_table, sink.name, member_id=member_id)
        self.stats = SinkStats()
        self._wake = wake
        self._stop = stop
        # Set while the worker waits for a NOTIFY or the poll interval (tests wait for it).
        self.idle = asyncio.Event()
        self._policy = retry_policy(settings)
        self._conn: asyncpg.Connection | None = None
        self._next_rebalance = 0.0
        self._failing = False
        self._ahead: Batch | None = None  # claimed and encoded while the one before was in flight
        table, sink_name = settings.outbox_table, sink.name
        self._claim = query("claim", table, sink_name)
        self._record_batch = query("record", table, sink_name)

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
        batch, self._ahead = self._ahead, None
        if batch is None:
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
                # Cleared before the claim: a NOTIFY that arrives from here on wakes the next
                # wait.
                self._wake.clear()
                batch = await self._claim_batch(conn, sorted(self.leases.owned))
            if not batch.rows:
                return BatchOutcome()
            if not await self._prepare(batch):  # the schema registry did not answer
                return BatchOutcome(claimed=len(batch.rows), failed=len(batch.rows))
        self.stats.batches += 1
        size = self.settings.relay_batch_size
        failed = await self._publish(conn, batch)
        return BatchOutcome(claimed=len(batch.rows), full=len(batch.rows) == size, failed=failed)

    async def _prepare(
        self, batch: Batch, blocked: dict[Aggregate, tuple[int, str]] | None = None
    ) -> bool:
        """Encode the batch and sort out what is not sent: parked rows, rows held behind them,
        and rows behind those the batch before set aside (`blocked`: aggregate -> first seq
        set aside and how; not recorded yet). False when the schema registry did not answer."""
        rows = batch.rows
        if not await self.encoder.register_schemas(rows):
            return False
        if blocked:
            waiting = {a.seq for a in batch.set_aside}
            for row in rows:
                first, state = blocked.get(row.aggregate, (row.seq, ""))
                if row.seq > first and row.seq not in waiting:
                    batch.aside(row, "queued" if state == "queued" and not batch.queued else "held")
        waiting = {a.seq for a in batch.set_aside}
        plan = self.encoder.plan([row for row in rows if row.seq not in waiting])
        self._log_parked(plan.parked)
        parked = {p.seq: p for p in plan.parked}
        sent = {m.seq for m in plan.messages}
        for row in rows:
            if row.seq in waiting or row.seq in sent:
                continue
            p = parked.get(row.seq)
            batch.aside(row, "held" if p is None else "parked", p)
        batch.messages = plan.messages
        return True

    async def _claim_batch(
        self, conn: asyncpg.Connection, owned: list[int], after: Batch | None = None
    ) -> Batch:
        """Queued rows of the owned slots first; else the next rows of their cursors' rounds
        (a new round for the slots that have none). With `after`, the batch that follows it,
        claimed while it is still in flight: past its rows, and without ending any round."""
        size = self.settings.relay_batch_size
        past_queued = after.rows[-1].seq if after is not None and after.queued else 0
        past_round = after.rows[-1].seq if after is not None and not after.queued else 0
        records = await conn.fetch(self._claim, owned, size, past_queued, past_round, after is None)
        queued = bool(records) and records[0]["queued"]
        batch = Batch(rows=[], slots={}, queued=queued, owned=owned)
        for record in records:
            row = OutboxRow(*tuple(record)[:8])
            batch.rows.append(row)
            batch.slots[row.seq] = record["slot"]
            if record["behind"] is not None:
                batch.aside(row, record["behind"])
        return batch

    async def _claim_ahead(self, conn: asyncpg.Connection, batch: Batch) -> Batch | None:
        """The next batch, claimed and encoded while `batch` is in flight (one ahead at most):
        only after a full batch, and not when the slots are due for a rebalance."""
        size = self.settings.relay_batch_size
        now = asyncio.get_running_loop().time()
        if len(batch.rows) < size or now >= self._next_rebalance or self._stop.is_set():
            return None
        async with database_boundary(f"{self.name} worker"):
            ahead = await self._claim_batch(conn, batch.owned, after=batch)
        if not ahead.rows:
            return None
        # What `batch` sets aside is not recorded yet: later rows of those aggregates wait too.
        blocked: dict[Aggregate, tuple[int, str]] = {}
        for aside in sorted(batch.set_aside, key=lambda a: a.seq):
            key = (aside.aggregatetype, aside.aggregateid)
            first, state = blocked.get(key, (aside.seq, "queued"))
            blocked[key] = (first, "queued" if state == aside.state == "queued" else "held")
        if not await self._prepare(ahead, blocked):
            return None
        return ahead

    def _log_parked(self, parked: Sequence[Parked]) -> None:
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

    async def _send(self, messages: Sequence[Message]) -> Outcomes:
        if not messages:
            return []
        try:
            await self.sink.start()
            return await self.sink.publish(messages)
        except SinkError as exc:
            return [exc] * len(messages)

    async def _publish(self, conn: asyncpg.Connection, batch: Batch) -> int:
        """Send, then record what the sink acknowledged; return how many sends failed. While
        the batch is in flight the next one is claimed and encoded (`_claim_ahead`); it is
        dropped when this one failed (its rows are claimed again after the failed ones)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        messages = batch.messages
        sending = asyncio.create_task(self._send(messages), name=f"relay.send.{self.name}")
        try:
            ahead = await self._claim_ahead(conn, batch)
        finally:
            outcomes = await sending
        result = acknowledged(messages, outcomes)
        marked, held_back, errors = result.marked, result.held_back, result.errors
        first_failed = next(
            (m.seq for m, o in zip(messages, outcomes, strict=True) if isinstance(o, SinkError)),
            None,
        )
        async with database_boundary(f"{self.name} worker recording a batch"):
            await shielded(self._record(conn, batch, result, first_failed), "record")
        if marked:
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
        self._ahead = ahead
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
        batch: Batch,
        result: Acknowledged,
        first_failed: int | None,
    ) -> None:
        """Record the batch atomically: where the sink put each event (a published event always
        has its position: the verifier judges loss by it), the rows set aside, and the progress.

        A round's cursor moves up to the row before the first failure: the rows after it are
        claimed again (those the sink took anyway are published twice, bounded by the batch,
        and the order of each aggregate holds in what the consumers see first). A queued row
        leaves the queue when the sink took it before any failure of its aggregate.
        """
        placements = result.placements
        aside = batch.set_aside
        upto = batch.rows[-1].seq
        if not batch.queued and first_failed is not None:
            upto = first_failed - 1
            aside = [a for a in aside if a.seq <= upto]
        exhausted = len(batch.rows) < self.settings.relay_batch_size and first_failed is None
        await conn.execute(
            self._record_batch,
            [seq for seq, _ in placements],
            text_array([placed.destination for _, placed in placements]),
            [placed.partition for _, placed in placements],
            text_array([placed.position for _, placed in placements]),
            [a.seq for a in aside],
            [a.slot for a in aside],
            [a.aggregatetype for a in aside],
            [a.aggregateid for a in aside],
            [a.state for a in aside],
            [a.reason for a in aside],
            [a.error for a in aside],
            result.marked if batch.queued else [],
            batch.owned,
            upto,
            exhausted,
            batch.queued,
        )

    async def _idle(self) -> None:
        timeout = self.settings.relay_poll_interval_seconds
        if self.leases.owned != self.leases.target:
            # Short of its slots: look again for those another relay gave back.
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
