"""A first measurement of the relay: throughput to both sinks, and commit-to-ack latency at low
load. Runs `flowproof relay` as a separate process against the local services.

    set -a; . .devstack/env; set +a
    .venv/bin/python bench/relay_quick.py [--events 50000] [--latency-events 200] [--rate 50]

Throughput: N canary rows are written into a fresh outbox first (one INSERT), then a relay
process publishes them; events/s per sink = N / (last published_at - first published_at), so
process start-up does not count. Modes: both sinks at once, then each sink alone.

Latency: with a relay running and idle, events are written one per transaction at a low rate
through `publisher.outbox.emit`; for each, commit (the client's clock when COMMIT returned) to
`<sink>_published_at` (set right after the sink acknowledged it), and commit to the moment a
Redis XREAD BLOCK reader saw the entry. Same host, same clock. p50/p99/max are printed.

It creates its own database (dropped at the end) and its own stream/topic names (deleted).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flowproof.config import Settings  # noqa: E402
from flowproof.migrations import migrate  # noqa: E402
from publisher.outbox import Outbox  # noqa: E402
from publisher.testing import insert_canaries, unpublished, wait_until  # noqa: E402


def service_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith("FLOWPROOF_")}
    stack = ROOT / ".devstack" / "env"
    if not env and stack.is_file():
        for line in stack.read_text().splitlines():
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


class Bench:
    def __init__(self, env: dict[str, str], batch_size: int) -> None:
        self.base_env = env
        self.db_name = f"fp_bench_{uuid.uuid4().hex[:8]}"
        base, _, _ = env["FLOWPROOF_DATABASE_URL"].rpartition("/")
        self.database_url = f"{base}/{self.db_name}"
        self.prefix = f"bench{uuid.uuid4().hex[:6]}."
        self.batch_size = batch_size

    def env(self, **more: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWPROOF_")}
        env.update(self.base_env)
        env.update(
            FLOWPROOF_DATABASE_URL=self.database_url,
            FLOWPROOF_STREAM_PREFIX=self.prefix,
            FLOWPROOF_TOPIC_PREFIX=self.prefix,
            FLOWPROOF_METRICS_PORT="0",
            FLOWPROOF_LOG_LEVEL="warning",
            FLOWPROOF_RELAY_BATCH_SIZE=str(self.batch_size),
            FLOWPROOF_RELAY_PRUNE_INTERVAL_SECONDS="0",
            **more,
        )
        return env

    def settings(self) -> Settings:
        return Settings(
            database_url=self.database_url,  # type: ignore[arg-type]
            redis_url=self.base_env["FLOWPROOF_REDIS_URL"],  # type: ignore[arg-type]
            kafka_bootstrap_servers=self.base_env["FLOWPROOF_KAFKA_BOOTSTRAP_SERVERS"],
            stream_prefix=self.prefix,
            topic_prefix=self.prefix,
        )

    async def relay(self, sinks: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "flowproof", "relay", env=self.env(FLOWPROOF_SINKS=sinks)
        )

    async def stop(self, process: asyncio.subprocess.Process) -> None:
        process.terminate()
        code = await process.wait()
        if code != 0:
            raise RuntimeError(f"relay exited {code}")

    async def throughput(
        self, conn: asyncpg.Connection, events: int, sinks: str
    ) -> dict[str, float]:
        await conn.execute("TRUNCATE flowproof_outbox")
        aggregates = [f"agg-{i}" for i in range(100)]
        await insert_canaries(conn, aggregates, events // len(aggregates), run_id="throughput")
        total = len(aggregates) * (events // len(aggregates))
        process = await self.relay(sinks)
        try:
            for sink in sinks.split(","):
                await wait_until(lambda sink=sink: nothing_left(conn, sink), 600, every=0.1)
        finally:
            await self.stop(process)
        rates = {}
        for sink in sinks.split(","):
            first, last = await conn.fetchrow(
                f"SELECT min({sink}_published_at), max({sink}_published_at) FROM flowproof_outbox"
            )
            rates[sink] = total / max((last - first).total_seconds(), 1e-6)
        return rates

    async def latency(
        self, conn: asyncpg.Connection, events: int, rate: float
    ) -> dict[str, list[float]]:
        await conn.execute("TRUNCATE flowproof_outbox")
        outbox = Outbox.from_settings(self.settings())
        redis = aioredis.Redis.from_url(self.base_env["FLOWPROOF_REDIS_URL"])
        stream = f"{self.prefix}latency"
        seen: dict[str, float] = {}
        process = await self.relay("redis,kafka")

        async def read_redis() -> None:
            last = "$"
            while True:
                reply = await redis.xread({stream: last}, block=1000, count=100)
                now = time.time()
                for _, entries in reply:
                    for entry_id, fields in entries:
                        seen[fields[b"id"].decode()] = now
                        last = entry_id

        reader = asyncio.create_task(read_redis())
        committed: dict[str, float] = {}
        try:
            await asyncio.sleep(2)  # relay start-up: topics, producer, slots
            for n in range(events + 1):  # the first one warms up (topic creation): not counted
                async with conn.transaction():
                    event_id = await outbox.emit(
                        conn,
                        type="flowproof.Canary",
                        aggregate_type="latency",
                        aggregate_id=f"agg-{n % 10}",
                        payload={"run_id": "latency", "sequence": n, "total": events},
                    )
                committed[str(event_id)] = time.time()
                if n == 0:
                    await wait_until(lambda: nothing_left(conn, "redis", "kafka"), 30)
                    committed.clear()
                    seen.clear()
                await asyncio.sleep(1 / rate)
            await wait_until(lambda: nothing_left(conn, "redis", "kafka"), 60)
            await wait_until(lambda: all_seen(committed, seen), 10)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await redis.delete(stream)
            await redis.aclose()
            await self.stop(process)
        rows = await conn.fetch(
            "SELECT id::text, extract(epoch FROM redis_published_at) AS redis, "
            "extract(epoch FROM kafka_published_at) AS kafka FROM flowproof_outbox"
        )
        result: dict[str, list[float]] = {"redis ack": [], "kafka ack": [], "redis XREAD": []}
        for row in rows:
            start = committed.get(row["id"])
            if start is None:
                continue
            result["redis ack"].append(float(row["redis"]) - start)
            result["kafka ack"].append(float(row["kafka"]) - start)
            result["redis XREAD"].append(seen[row["id"]] - start)
        return result


async def nothing_left(conn: asyncpg.Connection, *sinks: str) -> bool:
    return not any([await unpublished(conn, sink) for sink in sinks])


async def all_seen(committed: dict[str, float], seen: dict[str, float]) -> bool:
    return set(committed) <= set(seen)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--latency-events", type=int, default=200)
    parser.add_argument("--rate", type=float, default=50.0, help="events/s in the latency run")
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    env = service_env()
    bench = Bench(env, args.batch_size)
    admin = await asyncpg.connect(env["FLOWPROOF_DATABASE_URL"])
    await admin.execute(f'CREATE DATABASE "{bench.db_name}"')
    conn = await asyncpg.connect(bench.database_url)
    try:
        await migrate(conn, "flowproof_outbox")
        print(f"relay throughput, {args.events} pre-filled events, batch {args.batch_size}:")
        for sinks in ("redis,kafka", "redis", "kafka"):
            rates = await bench.throughput(conn, args.events, sinks)
            shown = ", ".join(f"{sink} {rate:,.0f} events/s" for sink, rate in rates.items())
            print(f"  FLOWPROOF_SINKS={sinks:<12} {shown}")
        print(f"commit-to-ack latency, {args.latency_events} events at {args.rate:g}/s:")
        for name, values in (await bench.latency(conn, args.latency_events, args.rate)).items():
            print(
                f"  {name:<12} p50 {percentile(values, 0.5) * 1000:7.1f} ms"
                f"  p99 {percentile(values, 0.99) * 1000:7.1f} ms"
                f"  max {max(values) * 1000:7.1f} ms"
                f"  mean {statistics.fmean(values) * 1000:6.1f} ms"
                f"  (n={len(values)})"
            )
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{bench.db_name}" WITH (FORCE)')
        await admin.close()
        kafka = AIOKafkaAdminClient(bootstrap_servers=env["FLOWPROOF_KAFKA_BOOTSTRAP_SERVERS"])
        await kafka.start()
        try:
            topics = [t for t in await kafka.list_topics() if t.startswith(bench.prefix)]
            if topics:
                await kafka.delete_topics(topics)
        finally:
            await kafka.close()
        redis = aioredis.Redis.from_url(env["FLOWPROOF_REDIS_URL"])
        keys = [key async for key in redis.scan_iter(match=f"{bench.prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
