"""`flowproof verify` as a process: /healthz, /readyz only with fresh evidence from reachable
components, /metrics with the checks' verdicts, and a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient

from flowproof.core.config import Settings
from flowproof.verifier.model import ComponentState, Report
from flowproof.verifier.service import Readiness
from tests.test_verify_support import clean_pipeline, closed_port

FLOWPROOF = [sys.executable, "-m", "flowproof"]


class Verifier:
    """A running `flowproof verify` and the JSON log lines it wrote so far."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.logs: list[dict[str, object]] = []
        self.url = ""
        self._reader = asyncio.create_task(self._read(), name="verify-logs")

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            with contextlib.suppress(ValueError):  # aiokafka's own plain-text log lines
                self.logs.append(json.loads(raw))

    async def wait_for_log(self, event: str) -> dict[str, object]:
        async with asyncio.timeout(30):
            while True:
                for line in self.logs:
                    if line.get("event") == event:
                        return line
                await asyncio.sleep(0.05)

    async def get(self, path: str) -> tuple[int, str]:
        def fetch() -> tuple[int, str]:
            try:
                with urllib.request.urlopen(self.url + path, timeout=5) as response:
                    return response.status, response.read().decode()
            except urllib.error.HTTPError as error:
                with error:
                    return error.code, error.read().decode()

        return await asyncio.to_thread(fetch)

    async def wait_until(self, path: str, status: int) -> str:
        async with asyncio.timeout(30):
            while True:
                code, body = await self.get(path)
                if code == status:
                    return body
                await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def verifier(env: dict[str, str]) -> AsyncIterator[Verifier]:
    process = await asyncio.create_subprocess_exec(
        *FLOWPROOF,
        "verify",
        env={**env, "FLOWPROOF_VERIFY_INTERVAL_SECONDS": "0.3"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    running = Verifier(process)
    try:
        serving = await running.wait_for_log("metrics.serving")
        running.url = str(serving["url"]).removesuffix("/metrics")
        yield running
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await running._reader


async def test_ready_only_after_an_evaluation_with_every_component_reachable_then_sigterm(
    settings: Settings,
    settings_env: dict[str, str],
    redis_client: aioredis.Redis,
    kafka_admin: AIOKafkaAdminClient,
) -> None:
    await clean_pipeline(settings, redis_client, kafka_admin)
    async with verifier(settings_env) as running:
        assert await running.get("/healthz") == (200, "alive\n")
        body = await running.wait_until("/readyz", 200)
        assert body.startswith("ready: ")
        assert "9 of 9 checks passed" in body
        _, metrics = await running.get("/metrics")
        assert 'flowproof_verify_check_passed{check="flow.lost"} 1.0' in metrics
        assert 'flowproof_component_up{component="kafka"} 1.0' in metrics
        assert 'flowproof_verify_lost_events{group="flowproof",sink="redis"} 0.0' in metrics
        assert "flowproof_verify_ready 1.0" in metrics
        running.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            assert await running.process.wait() == 0
        await running._reader
        assert [line for line in running.logs if line.get("event") == "verify.stopped"]


async def test_not_ready_while_kafka_is_unreachable(settings_env: dict[str, str]) -> None:
    env = {**settings_env, "FLOWPROOF_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_port()}"}
    async with verifier(env) as running:
        await running.wait_for_log("verify.evaluated")
        code, body = await running.get("/readyz")
        assert code == 503
        assert "kafka is unreachable" in body
        _, metrics = await running.get("/metrics")
        assert 'flowproof_component_up{component="kafka"} 0.0' in metrics
        assert 'flowproof_verify_check_passed{check="components.up"} 0.0' in metrics
        assert "flowproof_verify_ready 0.0" in metrics
        assert await running.get("/healthz") == (200, "alive\n")
        running.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            assert await running.process.wait() == 0


def _report(*components: ComponentState) -> Report:
    return Report((), components, dt.datetime.now(dt.UTC), 0.1, 3600.0)


def test_readiness_needs_a_recent_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    readiness = Readiness(max_age=10.0)
    assert readiness.answer()[0] == 503  # nothing evaluated yet
    readiness.record(_report(ComponentState("postgresql", True)))
    assert readiness.answer()[0] == 200
    readiness.record(_report(ComponentState("redis", False, "connection refused")))
    assert readiness.answer() == (503, "not ready: redis is unreachable: connection refused\n")
    readiness.record(_report(ComponentState("postgresql", True)))
    real = readiness._finished
    monkeypatch.setattr(readiness, "_finished", real - 11)
    status, body = readiness.answer()
    assert status == 503
    assert "the last evaluation finished 11s ago" in body
