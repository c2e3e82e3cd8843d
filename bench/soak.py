"""`make soak` (`python -m bench.soak`): the whole pipeline for a long time at a steady rate,
reporting memory and latency over time. Not part of CI.

    make stack-up && make soak                        # 10 minutes at half the measured maximum
    make soak ARGS="--minutes 3 --rate 2000"

The rate defaults to half the pipeline's maximum from bench/results/latest.json (a backlog drained
by the relay and both consumers together, the latency section's first figure); without that file
a short measurement is made first. Relay, one
consumer per sink and the verifier run as `flowproof` processes on a scratch database and
stream/topic prefix; the relay drops time partitions of a minute once they are three minutes
old (the outbox, its delivery records and the receipts stay the size of a few minutes), so what
grows is only what the processes keep. The receipts are counted in a table of the soak's own,
filled by a statement trigger as they are written, since their partitions are dropped too.

Every interval one line: seconds, events emitted, outbox pending per sink, the RSS of every
process, and the e2e latency (created_at to receipt) p50/p99 per sink of the receipts of that
interval. At the end: events received per sink (all of them, or the run fails) and each
process's RSS growth after the warm-up, which must stay under 10 %. Written to
bench/results/soak.json; exit 1 when a criterion fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import statistics
import sys
import time
from typing import Any

import asyncpg

from bench.payloads import Pool
from bench.pipeline import Emitter, Pipeline, load
from bench.procs import MB, Flowproof
from bench.scratch import ROOT, Scratch, Services
from flowproof.core.logging import configure_logging
from flowproof.publisher.queries import query

RESULTS = ROOT / "bench" / "results"
GROWTH_LIMIT = 0.10
# Partitions of a minute, dropped after three: drops happen under load all along the run.
PARTITION_SECONDS = 60.0
RETENTION_SECONDS = 180.0
# What the consumers received, kept apart from the receipts (whose partitions are dropped).
COUNT_RECEIPTS = """
CREATE UNLOGGED TABLE soak_received (sink text NOT NULL, event_id uuid);
CREATE FUNCTION soak_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO soak_received SELECT sink, event_id FROM written;
    RETURN NULL;
END
$$;
CREATE TRIGGER soak_count AFTER INSERT ON flowproof_receipts
    REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION soak_count();
"""

LATENCY = """
SELECT r.sink,
       percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM r.received_at - o.created_at)) AS q,
       count(*) AS n
FROM flowproof_receipts AS r JOIN flowproof_outbox AS o ON o.id = r.event_id
WHERE r.received_at >= $1 AND r.received_at < $2
GROUP BY r.sink
"""
# Outbox pending per sink, as the relay's gauges count it (its cursors, rows set aside).
PENDING = {sink: query("sink_stats", "flowproof_outbox", sink) for sink in ("redis", "kafka")}


def measured_maximum() -> float | None:
    """Half of this is the soak rate: the pipeline's maximum from the last full bench (the
    latency section's backlog drained by relay and consumers together; in results from before
    that measurement, the slowest of relay-to-both and the consumers, each measured alone)."""
    path = RESULTS / "latest.json"
    if not path.is_file():
        return None
    details = json.loads(path.read_text()).get("details", {})
    if "latency pipeline max" in details:
        return float(details["latency pipeline max"]["rate"])
    rates = [
        details[key]["rate"]
        for key in ("relay_redis,kafka", "consumer_redis", "consumer_kafka")
        if key in details
    ]
    return min(rates) if rates else None


async def measure_maximum() -> float:
    """No bench results: the quick latency section's backlog, drained by relay and consumers
    together, run now."""
    from bench.__main__ import Bench  # noqa: PLC0415 - only when there are no results

    args = argparse.Namespace(
        quick=True,
        only="latency",
        set=None,
        profile=None,
        relays=[1],
        rates=[],
        stop_kafka_cluster=False,
    )
    bench = Bench(args)
    await bench.run()
    drained = bench.results.details.get("latency pipeline max")
    if drained is None:
        raise SystemExit("could not measure the pipeline's maximum rate")
    return float(drained["rate"])


class Soak:
    def __init__(self, args: argparse.Namespace, rate: float) -> None:
        self.rate = rate
        self.seconds = args.minutes * 60
        self.interval = args.interval
        self.warmup = min(args.warmup, self.seconds / 2)
        self.rows: list[dict[str, Any]] = []
        self.services = Services.from_env()
        self.scratch = Scratch(self.services, "soak", partition_seconds=PARTITION_SECONDS)
        self.emitted = 0
        self.expected = 0

    def env(self) -> dict[str, str]:
        return {
            "FLOWPROOF_RELAY_RETENTION_SECONDS": str(RETENTION_SECONDS),
            "FLOWPROOF_RELAY_PARTITION_SECONDS": str(PARTITION_SECONDS),
            "FLOWPROOF_RELAY_PRUNE_INTERVAL_SECONDS": "10",
            "FLOWPROOF_VERIFY_INTERVAL_SECONDS": "30",
            "FLOWPROOF_VERIFY_WINDOW_SECONDS": "120",
            "FLOWPROOF_VERIFY_TIMEOUT_SECONDS": "60",
        }

    async def run(self) -> bool:
        await self.scratch.create()
        counting = await self.scratch.connect()
        try:
            await counting.execute(COUNT_RECEIPTS)
        finally:
            await counting.close()
        pipeline = Pipeline(self.scratch, Pool.generate(50_000, prefix="s"), self.env())
        verifier = Flowproof("verify", ["verify"], self.scratch.env(**self.env()))
        emitting: asyncio.Task[int] | None = None
        feeder: asyncpg.Connection | None = None
        try:
            await pipeline.start()
            await verifier.start(sample_every=1.0)
            processes = [*pipeline.processes, verifier]
            assert pipeline.conn is not None
            feeder = await self.scratch.connect()
            emitter = Emitter(feeder, pipeline.rows, remember=False)
            emitting = asyncio.create_task(emitter.run(self.rate, self.seconds), name="emit")
            started = time.monotonic()
            header_printed = False
            while not emitting.done():
                await asyncio.wait([emitting], timeout=self.interval)
                for process in processes:
                    process.check_alive()
                row = await self.sample(pipeline.conn, processes, time.monotonic() - started)
                row["emitted"] = emitter.emitted
                self.rows.append(row)
                if not header_printed:
                    print(self.header(processes), flush=True)
                    header_printed = True
                print(self.line(row, processes), flush=True)
            self.emitted = emitting.result()
            received = await self.wait_for_all(pipeline.conn, pipeline)
            kept = await self.oldest(pipeline.conn)
            return self.summary(processes, received, kept)
        finally:
            # Stopped (Ctrl-C) or failed mid-run: the emitter stops before its connection closes.
            if emitting is not None and not emitting.done():
                emitting.cancel()
                await asyncio.wait([emitting])
            if feeder is not None:
                feeder.terminate()
            await verifier.stop()
            verifier.remove_log()
            await pipeline.stop()
            await self.scratch.close()

    async def sample(
        self, conn: asyncpg.Connection, processes: list[Flowproof], elapsed: float
    ) -> dict[str, Any]:
        now = await conn.fetchval("SELECT clock_timestamp()")
        since = now - _seconds(self.interval)
        latency: dict[str, dict[str, float]] = {}
        for record in await conn.fetch(LATENCY, since, now):
            p50, p99 = record["q"]
            latency[record["sink"]] = {"p50": p50, "p99": p99, "n": record["n"]}
        pending = {sink: (await conn.fetchrow(sql))["pending"] for sink, sql in PENDING.items()}
        return {
            "seconds": round(elapsed, 1),
            "rss_mb": {p.name: round(p.read_memory() / MB, 1) for p in processes},
            "latency": latency,
            "pending": pending,
            "load": load(),
        }

    def header(self, processes: list[Flowproof]) -> str:
        names = "  ".join(f"{p.name:>14}" for p in processes)
        return (
            f"{'s':>6} {'emitted':>9} {'pending r/k':>13}  RSS MB: {names}"
            f"   e2e p50/p99 ms: redis        kafka    load"
        )

    def line(self, row: dict[str, Any], processes: list[Flowproof]) -> str:
        rss = "  ".join(f"{row['rss_mb'][p.name]:>14.1f}" for p in processes)
        quantiles = [row["latency"].get(sink, {}) for sink in ("redis", "kafka")]
        latency = "  ".join(f"{_ms(q.get('p50'))}/{_ms(q.get('p99'))}" for q in quantiles)
        pending = f"{row['pending']['redis']}/{row['pending']['kafka']}"
        return (
            f"{row['seconds']:>6.0f} {row['emitted']:>9} {pending:>13}          {rss}"
            f"                   {latency}  {row['load']:.2f}"
        )

    async def wait_for_all(self, conn: asyncpg.Connection, pipeline: Pipeline) -> dict[str, int]:
        """Events received per sink once the pipeline is drained (or 120 s passed)."""
        deadline = time.monotonic() + 120
        expected = self.expected = self.emitted + pipeline.warmup_events
        while True:
            found = {
                r["sink"]: r["n"]
                for r in await conn.fetch(
                    "SELECT sink, count(DISTINCT event_id) AS n FROM soak_received GROUP BY sink"
                )
            }
            if all(found.get(s, 0) >= expected for s in ("redis", "kafka")):
                return found
            if time.monotonic() > deadline:
                return found
            pipeline.check_alive()
            await asyncio.sleep(2)

    async def oldest(self, conn: asyncpg.Connection) -> dict[str, float]:
        """Age in seconds of the oldest row left in each partitioned table (0: empty)."""
        ages = {}
        for table, column in (
            ("flowproof_outbox", "created_at"),
            ("flowproof_outbox_deliveries", "published_at"),
            ("flowproof_receipts", "received_at"),
        ):
            ages[table] = float(
                await conn.fetchval(
                    f"SELECT coalesce(extract(epoch FROM now() - min({column})), 0) FROM {table}"
                )
            )
        return ages

    def summary(
        self, processes: list[Flowproof], received: dict[str, int], kept: dict[str, float]
    ) -> bool:
        expected = self.expected
        ok = True
        growth: dict[str, float] = {}
        for process in processes:
            after = [rss for t, rss in process.samples if t >= self.warmup]
            if len(after) < 4:
                continue
            window = max(1, round(self.interval))
            base = statistics.median(after[:window])
            end = statistics.median(after[-window:])
            growth[process.name] = end / base - 1
        print()
        print(
            f"rate {self.rate:,.0f} events/s for {self.seconds / 60:g} min: {self.emitted:,} events"
        )
        for sink in ("redis", "kafka"):
            got = received.get(sink, 0)
            status = "ok" if got >= expected else "MISSING"
            ok &= got >= expected
            print(f"  {sink}: {got:,} distinct events received ({status})")
        # A partition goes once its end is past the retention, at the next drop (every 10 s).
        limit = RETENTION_SECONDS + PARTITION_SECONDS + 10 + self.interval
        for table, age in kept.items():
            dropping = age <= limit or self.seconds < limit
            ok &= dropping
            print(
                f"  {table}: oldest row {age:.0f} s old (partitions of {PARTITION_SECONDS:.0f} s "
                f"dropped after {RETENTION_SECONDS:.0f} s; limit {limit:.0f} s) "
                f"{'ok' if dropping else 'NOT DROPPED'}"
            )
        for name, value in growth.items():
            status = "ok" if value < GROWTH_LIMIT else "TOO MUCH"
            ok &= value < GROWTH_LIMIT
            peak = max(p.peak_rss for p in processes if p.name == name) / MB
            print(
                f"  {name}: RSS growth after {self.warmup:.0f} s warm-up {value * 100:+.1f} % "
                f"(limit +{GROWTH_LIMIT * 100:.0f} %; peak {peak:.0f} MB) {status}"
            )
        result = {
            "rate": self.rate,
            "minutes": self.seconds / 60,
            "emitted": self.emitted,
            "received": received,
            "oldest_row_seconds": {k: round(v, 1) for k, v in kept.items()},
            "rss_growth_after_warmup": {k: round(v, 4) for k, v in growth.items()},
            "peak_rss_mb": {p.name: round(p.peak_rss / MB, 1) for p in processes},
            "passed": ok,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "intervals": self.rows,
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "soak.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"written to {RESULTS / 'soak.json'}; {'passed' if ok else 'FAILED'}")
        return ok


def _seconds(value: float) -> Any:
    import datetime as dt  # noqa: PLC0415

    return dt.timedelta(seconds=value)


def _ms(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value * 1000:.0f}"


async def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, help="events/s (default: half the measured maximum)")
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between two lines")
    parser.add_argument("--warmup", type=float, default=120.0, help="seconds before RSS counts")
    args = parser.parse_args()
    configure_logging("warning", "console")
    rate = args.rate
    if rate is None:
        maximum = measured_maximum() or await measure_maximum()
        rate = maximum / 2
        print(f"half the measured maximum of {maximum:,.0f} events/s: {rate:,.0f} events/s")
    soak = Soak(args, rate)
    return 0 if await soak.run() else 1


def run() -> None:
    async def guarded() -> int:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        return await main()

    try:
        sys.exit(asyncio.run(guarded()))
    except asyncio.CancelledError:
        raise SystemExit("stopped; the scratch database, streams and topics were removed") from None


if __name__ == "__main__":
    run()
