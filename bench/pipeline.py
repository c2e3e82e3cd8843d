"""flowproof's own figures: relay throughput, consumer throughput, end-to-end latency.

Every component runs as a real `flowproof` subprocess (relay, `consume --sink S`) against its
scratch database, stream and topic names, so the figures include process start-up costs only
where a user would pay them, and the peak RSS is the process's own (VmHWM).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from bench.payloads import FILL_REPEATED, Pool, Row
from bench.procs import Flowproof, service_cpu
from bench.scratch import OUTBOX, ROOT, Scratch, Services
from flowproof.core.http import free_port

AGGREGATE_TYPE = "order"
PARTITIONS = 3  # the devstack broker's num.partitions; what auto-creation would give

INSERT_RETURNING = """
INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[])
RETURNING id
"""


async def ensure_topic(bootstrap_servers: str, topic: str) -> None:
    """Make `topic` (PARTITIONS partitions) unless it exists, as a deployment would (not timed):
    replicated on every broker up to 3 (the cluster's min.insync.replicas is the brokers')."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            brokers = len((await admin.describe_cluster())["brokers"])
            await admin.create_topics([NewTopic(topic, PARTITIONS, min(brokers, 3))])
    finally:
        await admin.close()


async def create_topic(services: Services, prefix: str) -> None:
    """The benchmark's topic under `prefix`."""
    await ensure_topic(services.kafka, f"{prefix}{AGGREGATE_TYPE}")


def quantile(ordered: list[float], q: float) -> float:
    """The q-quantile of sorted values (nearest rank)."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def load() -> float:
    """The 1-minute load average: other work on the machine skews every figure."""
    return round(os.getloadavg()[0], 2)


# --- relay ------------------------------------------------------------------------------------


@dataclass
class RelayRun:
    mode: str
    events: int
    rate: float  # events/s delivered to every sink of the mode
    per_sink: dict[str, float]
    seconds: float
    peak_rss: int
    load: float
    cpu_seconds: float  # the relay processes', for the whole run (start-up included)
    processes: int = 1
    # Cores used on average from the relays' start until the outbox was drained: "relay" and each
    # devstack service (what else the machine spent its CPU on during the run).
    cores: dict[str, float] = field(default_factory=dict)
    # Outbox rows updated and deleted during the run (pg_stat_user_tables over the outbox's
    # partitions, in the run's own scratch database): the relay only reads it, so 0 and 0.
    outbox_updated: int = 0
    outbox_deleted: int = 0


# Row versions written to the outbox and its partitions in this database (the stats of the
# relays' backends are in once they exited).
OUTBOX_WRITES = """
SELECT coalesce(sum(n_tup_upd), 0)::bigint, coalesce(sum(n_tup_del), 0)::bigint
FROM pg_stat_user_tables
WHERE relid IN (SELECT relid FROM pg_partition_tree('flowproof_outbox'))
"""


async def _nothing_pending(conn: asyncpg.Connection, sink: str, rows: int) -> bool:
    # Every row has its delivery record (the bench's rows are all publishable).
    published = await conn.fetchval(
        "SELECT count(DISTINCT seq) FROM flowproof_outbox_deliveries WHERE sink = $1", sink
    )
    return bool(published >= rows)


async def published_counts(
    client: httpx.AsyncClient, ports: list[int], sinks: list[str]
) -> dict[str, float]:
    """flowproof_relay_published_total per sink, summed over the relays' /metrics (a relay
    whose server is not up yet counts 0)."""
    totals = dict.fromkeys(sinks, 0.0)
    for port in ports:
        try:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        except httpx.TransportError:
            continue
        for family in text_string_to_metric_families(text):
            if family.name != "flowproof_relay_published":
                continue
            for sample in family.samples:
                sink = sample.labels.get("sink", "")
                if sample.name.endswith("_total") and sink in totals:
                    totals[sink] += sample.value
    return totals


async def _wait_drained(
    conn: asyncpg.Connection,
    sinks: list[str],
    relays: list[Flowproof],
    ports: list[int],
    within: float,
) -> None:
    """Wait until every sink has a delivery record of every outbox row.

    While the relays run, their own counters say how far they are: counting the delivery
    records every half second cost PostgreSQL 0.13 to 0.20 s a time at a million rows, charged
    to the relay's PostgreSQL CPU and taken from its cores. The records are counted once the
    counters say everything was published (and again while they disagree: a row published
    twice counts twice).
    """
    rows = await conn.fetchval("SELECT count(*) FROM flowproof_outbox")
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=5.0) as client:
        while True:
            counts = await published_counts(client, ports, sinks)
            if all(counts[sink] >= rows for sink in sinks):
                pending = [s for s in sinks if not await _nothing_pending(conn, s, rows)]
                if not pending:
                    return
            for relay in relays:
                relay.check_alive()
            if time.monotonic() > deadline:
                got = ", ".join(f"{sink} {counts[sink]:,.0f}" for sink in sinks)
                raise TimeoutError(
                    f"relay ({','.join(sinks)}) did not drain the outbox of {rows:,} rows "
                    f"in {within} s (published: {got})"
                )
            await asyncio.sleep(0.5)


async def relay_throughput(
    scratch: Scratch,
    mode: str,
    *,
    within: float,
    extra_env: dict[str, str] | None = None,
    profile: Path | None = None,
    processes: int = 1,
    per_sink: bool = False,
) -> RelayRun:
    """Run `flowproof relay` (`processes` of them, sharing the slots) with FLOWPROOF_SINKS=`mode`
    over the pre-filled outbox until it is drained; with `per_sink`, one relay per sink of `mode`
    instead (FLOWPROOF_SINKS=<that sink>). The rate is
    events / (last published_at - first published_at) over the mode's sinks. CPU is the sum over
    the relays, peak RSS the largest one's."""
    sinks = mode.split(",")
    if "kafka" in sinks:
        await create_topic(scratch.services, scratch.prefix)
    modes = sinks if per_sink else [mode] * processes  # each relay's FLOWPROOF_SINKS
    ports = [free_port() for _ in modes]  # each relay's /metrics, read below

    def env(port: int, relayed: str) -> dict[str, str]:
        # The bench chooses the sinks and the port, whatever --set says.
        chosen = {"FLOWPROOF_SINKS": relayed, "FLOWPROOF_METRICS_PORT": str(port)}
        return scratch.env(**{**(extra_env or {}), **chosen})

    relays = [
        Flowproof(
            f"relay-{relayed}-{n}",
            ["relay"],
            env(port, relayed),
            profile=profile if n == 0 else None,
        )
        for n, (relayed, port) in enumerate(zip(modes, ports, strict=True))
    ]
    conn = await scratch.connect()
    load_before = load()
    services_before = service_cpu(ROOT / ".devstack")
    started = time.monotonic()
    try:
        for relay in relays:
            await relay.start(sample_every=1.0)
        await _wait_drained(conn, sinks, relays, ports, within)
        wall = time.monotonic() - started
        services_after = service_cpu(ROOT / ".devstack")
        for relay in relays:
            await relay.stop()
        cores = {"relay": sum(relay.cpu for relay in relays) / wall}
        for name, used in services_after.items():
            if name in services_before:
                cores[name] = (used - services_before[name]) / wall
        per_sink: dict[str, float] = {}
        first: list[dt.datetime] = []
        last: list[dt.datetime] = []
        events = 0
        for sink in sinks:
            count, low, high = await conn.fetchrow(
                "SELECT count(DISTINCT seq), min(published_at), max(published_at) "
                "FROM flowproof_outbox_deliveries WHERE sink = $1",
                sink,
            )
            events = count
            per_sink[sink] = count / max((high - low).total_seconds(), 1e-6)
            first.append(low)
            last.append(high)
        seconds = (max(last) - min(first)).total_seconds()
        updated, deleted = await conn.fetchrow(OUTBOX_WRITES)
        return RelayRun(
            mode=mode,
            events=events,
            rate=events / max(seconds, 1e-6),
            per_sink=per_sink,
            seconds=seconds,
            peak_rss=max(relay.peak_rss for relay in relays),
            load=max(load_before, load()),
            cpu_seconds=sum(relay.cpu for relay in relays),
            processes=len(relays),
            cores={name: round(value, 2) for name, value in cores.items()},
            outbox_updated=updated,
            outbox_deleted=deleted,
        )
    finally:
        for relay in relays:
            if relay.process is not None and relay.process.returncode is None:
                await relay.stop()
            relay.remove_log()
        await conn.close()


# --- consumers --------------------------------------------------------------------------------


@dataclass
class ConsumerRun:
    sink: str
    events: int
    rate: float
    seconds: float
    peak_rss: int
    load: float
    cpu_seconds: float  # the consumer process's, for the whole run (start-up included)


async def consumer_throughput(
    scratch: Scratch,
    sink: str,
    events: int,
    *,
    within: float,
    extra_env: dict[str, str] | None = None,
    profile: Path | None = None,
) -> ConsumerRun:
    """`flowproof consume --sink S` over a stream/topic already holding `events` messages, until
    each has its receipt; rate = receipts / (last - first received_at)."""
    conn = await scratch.connect()
    before = await conn.fetchval("SELECT coalesce(max(receipt_id), 0) FROM flowproof_receipts")
    consumer = Flowproof(
        f"consume-{sink}",
        ["consume", "--sink", sink, "--group", f"bench-{sink}"],
        scratch.env(**(extra_env or {})),
        profile=profile,
    )
    load_before = load()
    try:
        await consumer.start(sample_every=1.0)
        deadline = time.monotonic() + within
        while True:
            done = await conn.fetchval(
                "SELECT coalesce(max(receipt_id), 0) FROM flowproof_receipts"
            )
            if done - before >= events:
                break
            consumer.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"consumer {sink}: {done - before} of {events} receipts")
            await asyncio.sleep(0.5)
        await consumer.stop()
        count, low, high = await conn.fetchrow(
            "SELECT count(*), min(received_at), max(received_at) FROM flowproof_receipts "
            "WHERE sink = $1",
            sink,
        )
        seconds = (high - low).total_seconds()
        return ConsumerRun(
            sink=sink,
            events=count,
            rate=count / max(seconds, 1e-6),
            seconds=seconds,
            peak_rss=consumer.peak_rss,
            load=max(load_before, load()),
            cpu_seconds=consumer.cpu,
        )
    finally:
        if consumer.process is not None and consumer.process.returncode is None:
            await consumer.stop()
        consumer.remove_log()
        await conn.close()


# --- end-to-end latency -----------------------------------------------------------------------


@dataclass
class LatencyRun:
    rate: float  # asked for
    achieved: float  # events/s actually committed
    seconds: float
    events: int
    per_sink: dict[str, dict[str, float]]  # sink -> p50, p95, p99, max (seconds), missing
    load: float


@dataclass
class DrainRun:
    """The whole pipeline's maximum: a backlog committed at once, relay and consumers running."""

    events: int
    seconds: float  # commit to the last receipt of the slower sink
    per_sink: dict[str, float]  # sink -> events/s, commit to its last receipt
    rate: float  # the slower sink's
    load: float


# Receipts per sink since the backlog's commit (the received_at index), and the last one.
_RECEIVED_SINCE = """
SELECT sink, count(*) AS receipts, extract(epoch FROM max(received_at))::float8 AS last
FROM flowproof_receipts WHERE received_at >= to_timestamp($1) GROUP BY sink
"""


@dataclass
class Emitter:
    """Inserts the pool's events at a steady rate by plain SQL, remembering each commit time."""

    conn: asyncpg.Connection
    rows: Iterator[Row]
    remember: bool = True  # keep each event's commit time (the soak only counts)
    committed: dict[uuid.UUID, float] = field(default_factory=dict)
    emitted: int = 0  # by the run in progress

    async def run(self, rate: float, seconds: float, tick: float = 0.005) -> int:
        emitted = self.emitted = 0
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate) - emitted
            if due > 0:
                chunk = [next(self.rows) for _ in range(due)]
                ids = await self.conn.fetch(
                    INSERT_RETURNING,
                    [r.aggregatetype for r in chunk],
                    [r.aggregateid for r in chunk],
                    [r.type for r in chunk],
                    [r.payload for r in chunk],
                )
                now = time.time()  # the statement committed (autocommit) when it returned
                if self.remember:
                    for record in ids:
                        self.committed[record["id"]] = now
                emitted += due
                self.emitted = emitted
            await asyncio.sleep(tick)
        return emitted


class Pipeline:
    """Relay and one consumer per sink, running on one scratch place."""

    def __init__(
        self,
        scratch: Scratch,
        pool: Pool,
        extra_env: dict[str, str] | None = None,
        profile: Path | None = None,
    ) -> None:
        """`profile`: a directory for py-spy profiles of the relay and consumers (latency-*.txt)."""
        self.scratch = scratch
        env = scratch.env(**(extra_env or {}))

        def where(name: str) -> Path | None:
            return profile / f"latency-{name}.txt" if profile is not None else None

        self.relay = Flowproof("relay", ["relay"], env, profile=where("relay"))
        self.consumers = {
            sink: Flowproof(
                f"consume-{sink}",
                ["consume", "--sink", sink],
                env,
                profile=where(f"consume-{sink}"),
            )
            for sink in ("redis", "kafka")
        }
        self.rows = pool.cycle()
        self.conn: asyncpg.Connection | None = None
        self.warmup_events = 0

    @property
    def processes(self) -> list[Flowproof]:
        return [self.relay, *self.consumers.values()]

    async def start(self, sample_every: float = 1.0) -> None:
        await create_topic(self.scratch.services, self.scratch.prefix)
        self.conn = await self.scratch.connect()
        for process in self.processes:
            await process.start(sample_every=sample_every)
        # Warm-up (not measured): topics and groups exist, every process has done its first batch.
        emitter = Emitter(self.conn, self.rows)
        self.warmup_events = await emitter.run(rate=200, seconds=0.5)
        await self.wait_for_receipts(emitter.committed, within=60)

    async def stop(self) -> None:
        for process in self.processes:
            if process.process is not None:
                await process.stop()
            process.remove_log()
        if self.conn is not None:
            await self.conn.close()

    def check_alive(self) -> None:
        for process in self.processes:
            process.check_alive()

    async def wait_for_receipts(self, committed: dict[uuid.UUID, float], within: float) -> None:
        assert self.conn is not None
        deadline = time.monotonic() + within
        ids = list(committed)
        while True:
            found = await self.conn.fetchval(
                "SELECT count(DISTINCT (event_id, sink)) FROM flowproof_receipts "
                "WHERE event_id = ANY($1::uuid[])",
                ids,
            )
            if found >= 2 * len(ids):
                return
            self.check_alive()
            if time.monotonic() > deadline:
                return  # the missing ones are reported as missing
            await asyncio.sleep(0.5)

    async def drain(self, pool: Pool, events: int, within: float) -> DrainRun:
        """Commit a backlog of about `events` rows in one statement while the relay and both
        consumers run, and time it from the commit to its last receipt in each sink: the rate
        of the pipeline as a whole, every process sharing the machine (each stage measured
        alone has the machine to itself, and the slowest of those overstates the whole)."""
        assert self.conn is not None
        load_before = load()
        repetitions = max(1, round(events / len(pool.rows)))
        events = repetitions * len(pool.rows)
        await self.conn.execute(FILL_REPEATED, *pool.columns(), repetitions)
        committed = time.time()  # autocommit: the statement committed when it returned
        deadline = time.monotonic() + within
        while True:
            await asyncio.sleep(1.0)
            rows = {r["sink"]: r for r in await self.conn.fetch(_RECEIVED_SINCE, committed)}
            if all(s in rows and rows[s]["receipts"] >= events for s in ("redis", "kafka")):
                break
            self.check_alive()
            if time.monotonic() > deadline:
                got = {s: rows[s]["receipts"] if s in rows else 0 for s in ("redis", "kafka")}
                raise RuntimeError(f"backlog of {events:,} not received in {within:.0f} s: {got}")
        per_sink = {s: events / max(rows[s]["last"] - committed, 1e-6) for s in rows}
        slower = min(per_sink.values())
        return DrainRun(
            events=events,
            seconds=events / slower,
            per_sink=per_sink,
            rate=slower,
            load=max(load_before, load()),
        )

    async def latency(self, rate: float, seconds: float) -> LatencyRun:
        """Emit at `rate` for `seconds`; commit-to-receipt latency per sink."""
        assert self.conn is not None
        load_before = load()
        emitter = Emitter(self.conn, self.rows)
        started = time.monotonic()
        emitted = await emitter.run(rate=rate, seconds=seconds)
        elapsed = time.monotonic() - started
        await self.wait_for_receipts(emitter.committed, within=max(30.0, seconds))
        records = await self.conn.fetch(
            "SELECT event_id, sink, extract(epoch FROM min(received_at))::float8 AS at "
            "FROM flowproof_receipts WHERE event_id = ANY($1::uuid[]) GROUP BY 1, 2",
            list(emitter.committed),
        )
        # The relay's part: commit to the transaction that recorded the sink's acknowledgement.
        recorded = await self.conn.fetch(
            f"SELECT o.id AS event_id, d.sink, "
            f"extract(epoch FROM min(d.published_at))::float8 AS at "
            f"FROM {OUTBOX} AS o "
            f"JOIN {OUTBOX}_deliveries AS d ON d.seq = o.seq "
            f"WHERE o.id = ANY($1::uuid[]) GROUP BY 1, 2",
            list(emitter.committed),
        )
        per_sink: dict[str, dict[str, float]] = {}
        for sink in ("redis", "kafka"):
            values = sorted(
                r["at"] - emitter.committed[r["event_id"]] for r in records if r["sink"] == sink
            )
            relayed = sorted(
                r["at"] - emitter.committed[r["event_id"]] for r in recorded if r["sink"] == sink
            )
            per_sink[sink] = {
                "p50": quantile(values, 0.50),
                "p95": quantile(values, 0.95),
                "p99": quantile(values, 0.99),
                "max": values[-1] if values else math.nan,
                "relay_p50": quantile(relayed, 0.50),
                "relay_p99": quantile(relayed, 0.99),
                "received": len(values),
                "missing": emitted - len(values),
            }
        return LatencyRun(
            rate=rate,
            achieved=emitted / elapsed,
            seconds=elapsed,
            events=emitted,
            per_sink=per_sink,
            load=max(load_before, load()),
        )

    def peak_rss(self) -> dict[str, int]:
        for process in self.processes:
            process.read_memory()
        return {p.name: p.peak_rss for p in self.processes}


def as_dict(run: Any) -> dict[str, Any]:
    return dict(vars(run))
