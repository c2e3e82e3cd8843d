"""`flowproof consume` as a process: a killed consumer's work is claimed; SIGTERM; /metrics."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient

from flowproof.consumers.run import consume
from flowproof.core.config import Settings
from tests.conftest import Services
from tests.readback import wait_until
from tests.test_consumer_support import (
    Message,
    create_topics,
    event,
    group_name,
    produce_all,
    receipts,
    xadd_all,
)

FLOWPROOF = [sys.executable, "-m", "flowproof"]


async def start(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *FLOWPROOF,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def wait_for_log(process: asyncio.subprocess.Process, name: str) -> dict[str, Any]:
    """Read the JSON log lines on stderr until the event `name`."""
    assert process.stderr is not None
    async with asyncio.timeout(30):
        while True:
            line = await process.stderr.readline()
            assert line, f"the process ended before logging {name}"
            try:
                entry: dict[str, Any] = json.loads(line)
            except ValueError:
                continue  # not a log line (e.g. a warning of the interpreter)
            if entry.get("event") == name:
                return entry


async def test_a_killed_consumers_pending_entries_are_claimed(
    settings: Settings,
    settings_env: dict[str, str],
    database_url: str,
    redis_client: aioredis.Redis,
    name_prefix: str,
) -> None:
    stream = f"{name_prefix}orders"
    messages = [event(i) for i in range(10)]
    await xadd_all(redis_client, stream, messages)
    group = group_name()
    # Hold the receipts table so the victim reads its batch but can never acknowledge it.
    blocker = await asyncpg.connect(database_url)
    transaction = blocker.transaction()
    await transaction.start()
    await blocker.execute("LOCK TABLE flowproof_receipts IN ACCESS EXCLUSIVE MODE")
    victim = await start(
        {**settings_env, "FLOWPROOF_CONSUMER_NAME": "victim"},
        "consume", "--sink", "redis", "--group", group,
    )  # fmt: skip
    try:
        await wait_until(lambda: _pending(redis_client, stream, group, 10), within=30)
        victim.kill()  # SIGKILL: no clean-up of any kind
        await victim.wait()
    finally:
        if victim.returncode is None:
            victim.kill()
            await victim.wait()
        await transaction.rollback()
        await blocker.close()
    pending = await redis_client.xpending_range(stream, group, "-", "+", 100)
    assert {p["consumer"] for p in pending} == {b"victim"} and len(pending) == 10
    assert await receipts(database_url) == []

    # Entries idle for less than the claim time are left alone (their consumer may be alive).
    patient = await consume(
        settings, sink="redis", group=group, drain=True, name="patient", claim_idle_ms=60_000
    )
    assert patient.received == 0

    async def idle_long_enough() -> bool:
        entries = await redis_client.xpending_range(stream, group, "-", "+", 100)
        return all(e["time_since_delivered"] >= 300 for e in entries)

    await wait_until(idle_long_enough, within=10)
    stats = await consume(
        settings, sink="redis", group=group, drain=True, name="rescuer", claim_idle_ms=300
    )

    rows = await receipts(database_url)
    assert {r["event_id"] for r in rows} == {m.id for m in messages}
    assert all(r["consumer"] == "rescuer" and r["delivery_count"] == 2 for r in rows)
    assert (await redis_client.xpending(stream, group))["pending"] == 0
    assert stats.received == 10


async def _pending(client: aioredis.Redis, stream: str, group: str, wanted: int) -> bool:
    groups = await client.xinfo_groups(stream)
    return any(g["name"].decode() == group and g["pending"] >= wanted for g in groups)


Publish = Callable[[list[Message]], Awaitable[None]]


@pytest.fixture(params=["redis", "kafka"])
async def sink_and_publish(
    request: pytest.FixtureRequest,
    settings: Settings,
    redis_client: aioredis.Redis,
    kafka_admin: AIOKafkaAdminClient,
    name_prefix: str,
) -> tuple[str, Publish]:
    """A sink, and a function publishing into its `orders` stream/topic (created here)."""
    sink: str = request.param
    name = f"{name_prefix}orders"

    async def publish(messages: list[Message]) -> None:
        if sink == "redis":
            await xadd_all(redis_client, name, messages)
        else:
            await produce_all(settings.kafka_bootstrap_servers, name, messages)

    if sink == "kafka":
        await create_topics(kafka_admin, name)
    return sink, publish


async def test_sigterm_finishes_and_exits_0_and_metrics_are_served(
    sink_and_publish: tuple[str, Publish], settings_env: dict[str, str], database_url: str
) -> None:
    sink, publish = sink_and_publish
    await publish([event(0)])
    group = group_name()
    process = await start(settings_env, "consume", "--sink", sink, "--group", group)
    try:
        url = (await wait_for_log(process, "metrics.serving"))["url"]
        await wait_for_log(process, "consumer.started")
        await publish([event(i) for i in range(1, 5)])
        wanted = f'flowproof_consumer_received_total{{group="{group}",sink="{sink}"}} 5.0'

        async def scraped() -> bool:
            return wanted in await asyncio.to_thread(_scrape, url)

        await wait_until(scraped, within=30)
        process.send_signal(signal.SIGTERM)
        stopped = await wait_for_log(process, "consumer.stopped")
        async with asyncio.timeout(30):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert stopped["received"] == 5 and stopped["abandoned_batches"] == 0
    assert len(await receipts(database_url)) == 5


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


async def test_drain_prints_the_totals(
    settings_env: dict[str, str], redis_client: aioredis.Redis, name_prefix: str
) -> None:
    await xadd_all(redis_client, f"{name_prefix}orders", [event(i) for i in range(3)])
    process = await start(settings_env, "consume", "--sink", "redis", "--drain")
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    assert "received=3" in stdout.decode() and "receipts=3" in stdout.decode()


async def test_configuration_errors_exit_2(
    settings_env: dict[str, str], services: Services
) -> None:
    bad_sink = await start(settings_env, "consume", "--sink", "nats")
    _, err = await bad_sink.communicate()
    assert bad_sink.returncode == 2 and "--sink: 'nats'" in err.decode()

    bad_group = await start(settings_env, "consume", "--sink", "redis", "--group", "a b")
    _, err = await bad_group.communicate()
    assert bad_group.returncode == 2 and "--group" in err.decode()

    unreachable = await start(
        {**settings_env, "FLOWPROOF_DATABASE_URL": "postgresql://u:hunter2@127.0.0.1:9/x"},
        "consume", "--sink", "redis",
    )  # fmt: skip
    _, err = await unreachable.communicate()
    assert unreachable.returncode == 2
    assert "postgresql is unreachable" in err.decode() and "hunter2" not in err.decode()

    name = f"fp_t_empty_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(services.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        unmigrated = await start(
            {**settings_env, "FLOWPROOF_DATABASE_URL": services.database(name)},
            "consume", "--sink", "kafka",
        )  # fmt: skip
        _, err = await unmigrated.communicate()
        assert unmigrated.returncode == 2
        assert "flowproof_receipts does not exist" in err.decode()
        assert "flowproof db migrate" in err.decode()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    assert os.environ.get("FLOWPROOF_DATABASE_URL") is None  # nothing leaked into this process
