"""`make bench` (`python -m bench`): flowproof's throughput, latency and memory beside the raw
limits of PostgreSQL, Redis and Kafka on this machine, in one run, with the same payloads.

    make stack-up && make bench                 # the full run (under 15 minutes)
    make bench ARGS=--quick                     # the same benchmarks, smaller (under 2 minutes)
    make bench ARGS="--only raw,relay --set FLOWPROOF_RELAY_BATCH_SIZE=1000 --profile /tmp/prof"

Writes the table to the terminal and bench/results/latest.json (--quick: latest-quick.json).
Every benchmark works in a database and under stream/topic prefixes of its own, dropped at the
end; the shared development data is never touched.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench import cluster, raw
from bench.payloads import Pool, fill_outbox
from bench.pipeline import (
    ConsumerRun,
    DrainRun,
    LatencyRun,
    Pipeline,
    RelayRun,
    as_dict,
    consumer_throughput,
    load,
    relay_throughput,
)
from bench.procs import MB
from bench.report import Figure, Results, machine, render, versions
from bench.scratch import ROOT, Scratch, Services
from bench.verifier import VerifierRun, verifier_evaluation
from flowproof.core.config import ENV_PREFIX, Settings
from flowproof.core.logging import configure_logging
from flowproof.schemas.registry import load_registry

SECTIONS = ("raw", "relay", "consumers", "latency", "verifier", "cluster")
# The sections with 3-broker Kafka cluster lines; --stop-kafka-cluster stops it after them.
KAFKA_CLUSTER_SECTIONS = ("raw", "relay")
CLUSTER = "3 brokers, RF 3, min ISR 2"
NO_CLUSTER = (
    "no Kafka cluster (DEVSTACK_KAFKA_CLUSTER_BOOTSTRAP_SERVERS): the 3-broker lines are not "
    "measured; `make bench` starts it (devstack/stack.sh up --kafka-cluster)"
)
RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Plan:
    """How big each benchmark is."""

    pool: int  # distinct generated events
    raw_seconds: float  # each PostgreSQL raw insert run
    raw_messages: int  # messages of the raw Redis and Kafka runs
    outbox_rows: int  # pre-filled outbox of the relay runs
    relay_timeout: float
    latency_seconds: float  # each steady-rate run
    drain_events: int  # the backlog that measures the whole pipeline's maximum
    verifier_events: int
    verifier_runs: int


FULL = Plan(50_000, 10.0, 300_000, 1_000_000, 400.0, 30.0, 200_000, 1_000_000, 2)
QUICK = Plan(20_000, 3.0, 60_000, 60_000, 60.0, 8.0, 40_000, 100_000, 1)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.plan = QUICK if args.quick else FULL
        self.only = set(args.only.split(",")) if args.only else set(SECTIONS)
        unknown = self.only - set(SECTIONS)
        if unknown:
            raise SystemExit(f"--only: unknown section(s) {sorted(unknown)}; know {SECTIONS}")
        self.overrides: dict[str, str] = dict(item.split("=", 1) for item in args.set or [])
        for name in self.overrides:
            if not name.startswith(ENV_PREFIX):
                raise SystemExit(f"--set {name}: only FLOWPROOF_* settings")
        self.profile: Path | None = args.profile
        self.relays: list[int] = args.relays
        self.stop_kafka_cluster: bool = args.stop_kafka_cluster
        self.rates: list[float] = args.rates
        self.services = Services.from_env()
        self.results = Results(mode="quick" if args.quick else "full")
        self.registry = load_registry(None)
        self.pool = Pool.generate(self.plan.pool)
        self.settings = self._settings()
        self.relay: dict[str, RelayRun] = {}
        self.consumers: dict[str, ConsumerRun] = {}
        self.raw_rates: dict[str, float] = {}
        self.scratches: list[Scratch] = []
        self.filled_streams: Scratch | None = None  # the relay's output, for the consumers

    def _settings(self) -> Settings:
        values = {k.removeprefix(ENV_PREFIX).lower(): v for k, v in self.overrides.items()}
        return Settings(**values)  # type: ignore[arg-type]

    def _profile(self, name: str) -> Path | None:
        if self.profile is None:
            return None
        self.profile.mkdir(parents=True, exist_ok=True)
        return self.profile / f"{name}.txt"

    async def scratch(
        self, label: str, template: str | None = None, services: Services | None = None
    ) -> Scratch:
        created = await Scratch(services or self.services, label).create(template)
        self.scratches.append(created)
        return created

    async def release(self, scratch: Scratch) -> None:
        await scratch.close()
        self.scratches.remove(scratch)

    def add(self, figure: Figure) -> None:
        self.results.add(figure)
        shown = render_one(figure)
        print(f"  {shown}", flush=True)

    async def run(self) -> None:
        started = time.monotonic()
        self.results.machine = machine()
        self.results.versions = await versions(self.services)
        self.results.settings = self.settings_record()
        self.results.details["payloads"] = self.pool.describe(self.registry)
        print(f"flowproof bench ({self.results.mode}), load {load():.2f}", flush=True)
        if self.services.kafka_cluster is None:
            # Said, and recorded: its lines are missing from this run, not zero.
            print(f"  {NO_CLUSTER}", flush=True)
            self.results.details["kafka_cluster"] = NO_CLUSTER
        try:
            sections = {
                "raw": self.raw_section,
                "relay": self.relay_section,
                "consumers": self.consumers_section,
                "latency": self.latency_section,
                "verifier": self.verifier_section,
                "cluster": self.cluster_section,
            }
            for name, section in sections.items():
                if name in self.only:
                    if name not in KAFKA_CLUSTER_SECTIONS:
                        await self.kafka_cluster_down(before=name)
                    print(f"{name} ...", flush=True)
                    await section()
        finally:
            for scratch in list(self.scratches):
                await self.release(scratch)
            self.results.seconds = time.monotonic() - started
            self.results.machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]

    async def kafka_cluster_down(self, before: str) -> None:
        """With --stop-kafka-cluster, stop the devstack's 3-broker Kafka cluster once the
        sections that measure it are done: its three JVMs, idle, take about a tenth of a core
        and wake every few milliseconds, on a machine the later sections keep busy."""
        if not self.stop_kafka_cluster or self.services.kafka_cluster is None:
            return
        print(f"stopping the 3-broker Kafka cluster (its lines are measured) before {before}")
        stack = await asyncio.create_subprocess_exec(
            str(ROOT / "devstack" / "stack.sh"), "down", "--kafka-cluster"
        )
        if await stack.wait() != 0:
            raise SystemExit("devstack/stack.sh down --kafka-cluster failed")
        self.services = replace(self.services, kafka_cluster=None)
        self.results.details["kafka_cluster_stopped_before"] = before

    def settings_record(self) -> dict[str, Any]:
        s = self.settings
        return {
            "relay_batch_size": s.relay_batch_size,
            "relay_kafka_linger_ms": s.relay_kafka_linger_ms,
            "consumer_batch_size": s.consumer_batch_size,
            "consumer_block_ms": s.consumer_block_ms,
            "consumer_fetch_max_wait_ms": s.consumer_fetch_max_wait_ms,
            "receipt_sample_ratio": s.receipt_sample_ratio,
            "overrides": self.overrides,
            "plan": as_dict(self.plan),
            "kafka_partitions": 3,
        }

    # --- sections ---------------------------------------------------------------------------

    async def raw_section(self) -> None:
        plan, pool = self.plan, self.pool
        scratch = await self.scratch("raw")
        settings = scratch.settings(**self._settings_values())
        try:
            connections = 4
            rate = await raw.postgres_single_rows(scratch, pool, connections, plan.raw_seconds)
            self.add(
                Figure(
                    "raw",
                    f"PostgreSQL insert, 1 row/tx, {connections} conns",
                    rate,
                    "rows/s",
                    load(),
                )
            )
            batch = settings.relay_batch_size
            rate = await raw.postgres_batched(scratch, pool, batch, plan.raw_seconds)
            self.raw_rates["postgres_batched"] = rate
            self.add(Figure("raw", f"PostgreSQL insert, {batch} rows/tx", rate, "rows/s", load()))
            messages = pool.messages(self.registry, scratch.prefix, plan.raw_messages)
            variants = {
                "redis": [
                    (f"Redis XADD, redis-py pipeline() of {batch}", raw.redis_pipeline),
                    (f"Redis XADD, hiredis-packed pipeline of {batch}", raw.redis_packed),
                ],
                "kafka": KAFKA_RAW,
            }
            for sink, runs in variants.items():
                for label, measure in runs:
                    rate = await measure(settings, messages)
                    self.raw_rates[sink] = max(self.raw_rates.get(sink, 0.0), rate)
                    self.add(Figure("raw", label, rate, "msg/s", load()))
            combined = 1 / (1 / self.raw_rates["redis"] + 1 / self.raw_rates["kafka"])
            self.raw_rates["both"] = combined
            self.add(
                Figure(
                    "raw",
                    "Redis + Kafka combined 1/(1/R+1/K), R and K the faster",
                    combined,
                    "msg/s",
                    load(),
                )
            )
        finally:
            await self.release(scratch)
        if self.services.kafka_cluster is not None:
            await self.raw_kafka_cluster()

    async def raw_kafka_cluster(self) -> None:
        """The raw Kafka limit on the cluster, measured as on the single broker."""
        scratch = await self.scratch("raw3", services=self.services.on_kafka_cluster())
        settings = scratch.settings(**self._settings_values())
        try:
            messages = self.pool.messages(self.registry, scratch.prefix, self.plan.raw_messages)
            for label, measure in KAFKA_RAW:
                rate = await measure(settings, messages)
                self.raw_rates["kafka3"] = max(self.raw_rates.get("kafka3", 0.0), rate)
                self.add(Figure("raw", f"{label}, {CLUSTER}", rate, "msg/s", load()))
        finally:
            await self.release(scratch)

    async def cluster_section(self) -> None:
        """Raw XADD and the relay against the devstack's 3-primary Redis Cluster (bench.cluster),
        the streams spread over the nodes."""
        services = replace(self.services, redis_url=cluster.cluster_url())
        raw_scratch = Scratch(services, "cluster-raw")
        self.scratches.append(await raw_scratch.create())
        try:
            settings = raw_scratch.settings(**self._settings_values())
            pool = cluster.spread_pool(self.pool, await cluster.spread_types(settings))
            messages = pool.messages(self.registry, raw_scratch.prefix, self.plan.raw_messages)
            batch = settings.relay_batch_size
            raw_rate = 0.0
            variants = (
                (f"Redis Cluster XADD, redis-py ClusterPipeline of {batch}", cluster.pipelined),
                (f"Redis Cluster XADD, hiredis-packed per node, {batch}", cluster.packed),
            )
            for label, measure in variants:
                rate = await measure(settings, messages)
                raw_rate = max(raw_rate, rate)
                self.add(Figure("raw", f"{label} (3 primaries)", rate, "msg/s", load()))
        finally:
            await self.release(raw_scratch)
        scratch = Scratch(services, "cluster-relay")
        self.scratches.append(await scratch.create())
        try:
            types = await cluster.spread_types(scratch.settings(**self._settings_values()))
            conn = await scratch.connect()
            try:
                spread = cluster.spread_pool(self.pool, types)
                await fill_outbox(conn, spread, self.plan.outbox_rows)
            finally:
                await conn.close()
            run = await relay_throughput(
                scratch,
                "redis",
                within=self.plan.relay_timeout,
                extra_env=self.overrides,
                profile=self._profile("relay-redis-cluster"),
            )
            self.results.details["relay_redis_cluster"] = as_dict(run)
            note = (
                f"{run.events:,} events in {run.seconds:.1f} s over {len(types)} streams; relay "
                f"CPU {run.cpu_seconds / run.events * 1e6:.0f} us/event"
            )
            self.add(
                Figure(
                    "relay",
                    "relay -> Redis Cluster (3 primaries)",
                    run.rate,
                    "ev/s",
                    run.load,
                    raw=raw_rate,
                    raw_name="raw Redis Cluster",
                    note=note,
                )
            )
        finally:
            await self.release(scratch)

    def _settings_values(self) -> dict[str, Any]:
        return {k.removeprefix(ENV_PREFIX).lower(): v for k, v in self.overrides.items()}

    async def relay_section(self) -> None:
        template = await self.scratch("fill")
        conn = await template.connect()
        try:
            seconds = await fill_outbox(conn, self.pool, self.plan.outbox_rows)
            rows = await conn.fetchval("SELECT count(*) FROM flowproof_outbox")
        finally:
            await conn.close()
        self.results.details["outbox_fill"] = {"rows": rows, "seconds": round(seconds, 1)}
        print(f"  outbox pre-filled with {rows:,} rows in {seconds:.1f} s", flush=True)
        # Then "both" with N relay processes sharing the slots (--relays; one Python process
        # uses one core: this shows what each more adds on this machine), and with one relay
        # process per sink (each encodes for itself: no encoding shared between the sinks).
        # (mode, label, relay processes, one per sink instead)
        runs = [
            ("redis", "Redis only", 1, False),
            ("kafka", "Kafka only", 1, False),
            ("redis,kafka", "both", 1, False),
        ]
        runs += [
            ("redis,kafka", f"both, {n} relay processes", n, False) for n in self.relays if n > 1
        ]
        runs += [("redis,kafka", "both, one relay process per sink", 2, True)]
        for mode, label, processes, per_sink in runs:
            key = mode if processes == 1 else f"{mode} x{processes}"
            key = f"{mode} per sink" if per_sink else key
            scratch = await self.scratch("relay", template=template.db_name)
            run = await relay_throughput(
                scratch,
                mode,
                within=self.plan.relay_timeout,
                extra_env=self.overrides,
                profile=self._profile(f"relay-{key.replace(',', '+').replace(' ', '')}"),
                processes=processes,
                per_sink=per_sink,
            )
            self.relay[key] = run
            raw_key = {"redis": "redis", "kafka": "kafka", "redis,kafka": "both"}[mode]
            target = ">= 20000; ratio >= 0.5" if key == "redis,kafka" else None
            note = relay_note(run, processes)
            self.add(
                Figure(
                    "relay",
                    f"relay -> {label}",
                    run.rate,
                    "ev/s",
                    run.load,
                    raw=self.raw_rates.get(raw_key),
                    raw_name=f"raw {raw_key}",
                    target=target,
                    note=note,
                )
            )
            self.results.details[f"relay_{key}"] = as_dict(run)
            one = self.relay.get("redis,kafka")
            if processes > 1 and not per_sink and one is not None and one.rate:
                self.add(
                    Figure(
                        "relay",
                        f"{processes} relay processes / one (both sinks)",
                        run.rate / one.rate,
                        "x",
                        run.load,
                        target=">= 1" if processes == 2 else None,
                        note=f"{run.rate:,.0f} / {one.rate:,.0f} ev/s",
                    )
                )
            if key == "redis,kafka" and "consumers" in self.only:
                self.filled_streams = scratch
            else:
                await self.release(scratch)
        if self.services.kafka_cluster is not None:
            await self.relay_kafka_cluster(template.db_name)
        self.add(
            Figure(
                "relay",
                "outbox rows updated or deleted by the relay runs",
                sum(r.outbox_updated + r.outbox_deleted for r in self.relay.values()),
                "rows",
                load(),
                target="<= 0",
                note="pg_stat_user_tables over the outbox's partitions, each run's database",
            )
        )
        self.add(
            Figure(
                "memory",
                "relay peak RSS",
                max(r.peak_rss for r in self.relay.values()) / MB,
                "MB",
                load(),
                target="<= 200",
            )
        )
        await self.release(template)

    async def relay_kafka_cluster(self, template: str) -> None:
        """The relay to the 3-broker cluster alone, over the same pre-filled outbox."""
        scratch = await self.scratch(
            "relay3", template=template, services=self.services.on_kafka_cluster()
        )
        try:
            run = await relay_throughput(
                scratch,
                "kafka",
                within=self.plan.relay_timeout,
                extra_env=self.overrides,
                profile=self._profile("relay-kafka-cluster"),
            )
        finally:
            await self.release(scratch)
        self.relay["kafka cluster"] = run
        self.results.details["relay_kafka_cluster"] = as_dict(run)
        self.add(
            Figure(
                "relay",
                f"relay -> Kafka only, {CLUSTER}",
                run.rate,
                "ev/s",
                run.load,
                raw=self.raw_rates.get("kafka3"),
                raw_name="raw kafka3",
                note=relay_note(run, 1),
            )
        )

    async def consumers_section(self) -> None:
        scratch = self.filled_streams
        if scratch is None:
            raise SystemExit("the consumers benchmark reads what the relay benchmark published")
        events = self.relay["redis,kafka"].events
        for sink in ("redis", "kafka"):
            run = await consumer_throughput(
                scratch,
                sink,
                events,
                within=self.plan.relay_timeout,
                extra_env=self.overrides,
                profile=self._profile(f"consume-{sink}"),
            )
            self.consumers[sink] = run
            self.results.details[f"consumer_{sink}"] = as_dict(run)
            self.add(
                Figure(
                    "consumers",
                    f"consumer {sink} incl. receipts",
                    run.rate,
                    "ev/s",
                    run.load,
                    note=f"{run.events:,} events in {run.seconds:.1f} s; consumer CPU "
                    f"{run.cpu_seconds / max(run.events, 1) * 1e6:.0f} us/event",
                )
            )
        for sink, run in self.consumers.items():
            self.add(
                Figure(
                    "memory",
                    f"consumer {sink} peak RSS",
                    run.peak_rss / MB,
                    "MB",
                    run.load,
                    target="<= 150",
                )
            )
        await self.release(scratch)

    def pipeline_max(self) -> float | None:
        rates = [r.rate for r in self.consumers.values()]
        if "redis,kafka" in self.relay:
            rates.append(self.relay["redis,kafka"].rate)
        return min(rates) if rates else None

    async def latency_section(self) -> None:
        scratch = await self.scratch("latency")
        if self.profile is not None:
            self.profile.mkdir(parents=True, exist_ok=True)
        pipeline = Pipeline(scratch, self.pool, self.overrides, profile=self.profile)
        try:
            await pipeline.start()
            drain = await pipeline.drain(self.pool, self.plan.drain_events, within=600.0)
            self.record_drain(drain)
            rates: list[tuple[str, float]] = [
                ("1000/s", 1000.0),
                (f"50% of max ({drain.rate / 2:,.0f}/s)", drain.rate / 2),
            ]
            stages = self.pipeline_max()
            if stages is not None:  # the definition of the runs before 2026-12-02 midday
                rates.append((f"50% of the slowest stage alone ({stages / 2:,.0f}/s)", stages / 2))
            rates += [(f"{rate:,.0f}/s", rate) for rate in self.rates if rate != 1000]
            for label, rate in rates:
                run = await pipeline.latency(rate, self.plan.latency_seconds)
                self.record_latency(label, run)
            peaks = pipeline.peak_rss()
            self.results.details["latency_peak_rss_mb"] = {
                k: round(v / MB, 1) for k, v in peaks.items()
            }
        finally:
            await pipeline.stop()
            await self.release(scratch)

    def record_drain(self, run: DrainRun) -> None:
        self.results.details["latency pipeline max"] = as_dict(run)
        rates = ", ".join(f"{sink} {rate:,.0f}" for sink, rate in sorted(run.per_sink.items()))
        self.add(
            Figure(
                "latency",
                "pipeline max, relay and consumers together",
                run.rate,
                "ev/s",
                run.load,
                note=f"a backlog of {run.events:,} committed at once, drained in "
                f"{run.seconds:.1f} s; per sink {rates} ev/s",
            )
        )

    def record_latency(self, label: str, run: LatencyRun) -> None:
        self.results.details[f"latency {label}"] = as_dict(run)
        for sink, stats in run.per_sink.items():
            target = None
            if label == "1000/s":
                target = "<= 10"
            elif label.startswith("50% of max"):
                target = "<= 100"
            note = (
                f"p50 {stats['p50'] * 1000:.1f} p95 {stats['p95'] * 1000:.1f} "
                f"max {stats['max'] * 1000:.1f} ms (relay's part p50 "
                f"{stats['relay_p50'] * 1000:.1f} p99 {stats['relay_p99'] * 1000:.1f}); "
                f"achieved {run.achieved:,.0f}/s"
            )
            if stats["missing"]:
                note += f"; {stats['missing']} not received"
            self.add(
                Figure(
                    "latency",
                    f"e2e p99 {sink} @ {label}",
                    stats["p99"] * 1000,
                    "ms",
                    run.load,
                    target=target,
                    note=note,
                )
            )

    async def verifier_section(self) -> None:
        scratch = await self.scratch("verifier")
        try:
            run: VerifierRun = await verifier_evaluation(
                scratch, self.plan.verifier_events, self.plan.verifier_runs
            )
        finally:
            await self.release(scratch)
        self.results.details["verifier"] = as_dict(run)
        best = min(run.evaluations)
        runs = ", ".join(f"{x:.2f}" for x in run.evaluations)
        target = "<= 2" if run.events >= 1_000_000 else None
        self.add(
            Figure(
                "verifier",
                f"evaluation over {run.events:,} rows",
                best,
                "s",
                run.load,
                target=target,
                note=f"{run.receipts:,} receipts; runs {runs} s",
            )
        )
        self.add(Figure("memory", "verifier peak RSS", run.peak_rss / MB, "MB", run.load))


KAFKA_RAW = [
    ("Kafka produce, send() per message", raw.kafka_send),
    ("Kafka produce, send_batch() per partition", raw.kafka_send_batch),
]


def relay_counts(text: str) -> list[int]:
    """`--relays 1,2,4`: the numbers of relay processes, each at least 1."""
    try:
        counts = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"relay processes must be at least 1: {text!r}")
    return counts


def latency_rates(text: str) -> list[float]:
    """`--rates 2000,4000`: more steady rates of the latency section, events/s, each above 0."""
    try:
        rates = sorted({float(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not rates or not all(0 < rate < math.inf for rate in rates):
        raise argparse.ArgumentTypeError(f"rates must be above 0 and finite: {text!r}")
    return rates


def relay_note(run: RelayRun, processes: int) -> str:
    """Events, time, CPU per event and the cores in use of a relay run."""
    note = f"{run.events:,} events in {run.seconds:.1f} s"
    if run.seconds < 30:
        note += " (under 30 s)"
    note += f"; relay CPU {run.cpu_seconds / run.events * 1e6:.0f} us/event"
    if processes > 1:
        note += f" (summed over the {processes} processes)"
    if run.cores:
        used = ", ".join(f"{name} {value:.2f}" for name, value in run.cores.items())
        note += f"; cores in use: {used} (of {os.cpu_count()})"
    note += f"; outbox rows updated {run.outbox_updated:,}, deleted {run.outbox_deleted:,}"
    return note


def render_one(figure: Figure) -> str:
    value = "n/a" if math.isnan(figure.value) else f"{figure.value:,.1f} {figure.unit}"
    extra = f" ratio {figure.ratio:.2f}" if figure.ratio is not None else ""
    met = "" if figure.met is None else (" [target met]" if figure.met else " [TARGET MISSED]")
    return f"{figure.name}: {value}{extra}{met} (load {figure.load:.2f}) {figure.note}"


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, under two minutes")
    parser.add_argument("--only", help=f"comma-separated sections of {','.join(SECTIONS)}")
    parser.add_argument(
        "--set",
        action="append",
        metavar="FLOWPROOF_X=V",
        help="setting for every flowproof process",
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy profiles of relay and consumers go here"
    )
    parser.add_argument(
        "--relays",
        type=relay_counts,
        default=[1, 2],
        metavar="N[,M...]",
        help="relay processes of the scale-out runs (both sinks); default 1,2",
    )
    parser.add_argument(
        "--rates",
        type=latency_rates,
        default=[],
        metavar="R[,R...]",
        help="more steady rates (events/s) for the latency section, besides 1000/s and half max",
    )
    parser.add_argument(
        "--output", type=Path, help="JSON results (default bench/results/latest.json)"
    )
    parser.add_argument(
        "--stop-kafka-cluster",
        action="store_true",
        help="stop the devstack's 3-broker Kafka cluster once its lines are measured (after the "
        "raw and relay sections), so that the later sections run without it (make bench does)",
    )
    args = parser.parse_args()
    configure_logging("warning", "console")
    bench = Bench(args)
    output = args.output or RESULTS / ("latest-quick.json" if args.quick else "latest.json")
    try:
        await bench.run()
    finally:
        print()
        print(render(bench.results))
        bench.results.write(output)
        print(f"\nwritten to {output} ({bench.results.seconds:.0f} s)")


def run() -> None:
    """Run the bench; SIGTERM and SIGINT stop it with every process stopped and cleaned up."""

    async def guarded() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        await main()

    try:
        asyncio.run(guarded())
    except asyncio.CancelledError:
        raise SystemExit("stopped; scratch databases, streams and topics were removed") from None


if __name__ == "__main__":
    run()
