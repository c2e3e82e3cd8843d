"""`flowproof smoke` end to end: canaries through the real relay and both real consumers, each a
`flowproof` process; then a stopped Kafka consumer makes smoke exit 1 naming its group."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator

import pytest

from flowproof.verifier.model import LAG_KAFKA
from flowproof.verifier.smoke import SMOKE_CANARIES

FLOWPROOF = [sys.executable, "-m", "flowproof"]


@pytest.fixture
async def pipeline_env(settings_env: dict[str, str]) -> AsyncIterator[dict[str, str]]:
    """The environment of this test's pipeline, tuned so that new streams are found quickly."""
    yield {
        **settings_env,
        "FLOWPROOF_CONSUMER_DISCOVERY_INTERVAL_SECONDS": "0.5",
        "FLOWPROOF_RELAY_POLL_INTERVAL_SECONDS": "0.5",
        "FLOWPROOF_VERIFY_STATUS_WINDOW": "3",
    }


async def start(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *FLOWPROOF, *args, env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def stop(process: asyncio.subprocess.Process) -> int:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        return await process.wait()


async def smoke(env: dict[str, str], *args: str) -> tuple[int, dict[str, object], str]:
    process = await asyncio.create_subprocess_exec(
        *FLOWPROOF, "smoke", "--json", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(100):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, json.loads(out), err.decode()


def check(document: dict[str, object], name: str) -> dict[str, object]:
    checks = document["checks"]
    assert isinstance(checks, list)
    return next(c for c in checks if c["name"] == name)


async def test_smoke_passes_through_the_real_pipeline_and_names_a_stopped_group(
    pipeline_env: dict[str, str],
) -> None:
    env = pipeline_env
    relay = await start(env, "relay")
    redis_consumer = await start(env, "consume", "--sink", "redis")
    kafka_consumer = await start(env, "consume", "--sink", "kafka")
    try:
        code, document, progress = await smoke(env, "--events", "5", "--timeout", "60")
        assert code == 0, json.dumps(document, indent=1)
        assert "smoke:" in progress and "received" in progress
        sinks = document["smoke"]["sinks"]  # type: ignore[index]
        for sink in ("redis", "kafka"):
            assert sinks[sink]["flowproof"]["received"] == 5
            assert sinks[sink]["flowproof"]["round_trip_max_seconds"] > 0
        assert check(document, SMOKE_CANARIES)["passed"] is True

        assert await stop(kafka_consumer) == 0
        code, document, _ = await smoke(env, "--events", "3", "--timeout", "5")
        assert code == 1
        canaries = check(document, SMOKE_CANARIES)
        assert canaries["passed"] is False
        assert "FAIL kafka group flowproof: 0 of 3 received" in str(canaries["detail"])
        assert "group flowproof is not consuming kafka" in str(canaries["detail"])
        assert "redis group flowproof: 3 of 3 received" in str(canaries["detail"])
        lag = check(document, LAG_KAFKA)
        assert lag["passed"] is False
        assert "kafka group flowproof: status STOP" in str(lag["detail"])
    finally:
        for process in (kafka_consumer, redis_consumer, relay):
            await stop(process)
