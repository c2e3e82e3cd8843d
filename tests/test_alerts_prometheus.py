"""flowproof's alert rules evaluated by a real Prometheus scraping real flowproof processes.

The relay, a Redis consumer and the verifier run as `flowproof` processes; Debian's `prometheus`
runs the shipped rules (every `for:` shortened, nothing else changed: checked below) with a
configuration derived from the shipped one (flowproof.local_prometheus). Mere lag (the consumer
stopped while events arrive, far longer than the verifier's lost grace, then restarted) never
makes FlowproofEventsLost pending or firing, while the late events show in the verifier's late
count; a staged loss does: events published to the stream and deleted from it (XDEL) before the
group read them, gone from the sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
import yaml

from flowproof.core.config import Settings
from flowproof.core.http import free_port
from flowproof.demo import Component
from flowproof.local_prometheus import (
    SHIPPED,
    LocalPrometheus,
    PrometheusError,
    derive_config,
    job_names,
    prometheus_binary,
    shorten_for,
)
from tests.readback import insert_canaries
from tests.test_deploy_promql import promtool

GROUP = "flowproof"
# The lag phase lasts far longer than the lost grace: late must never be taken for lost.
LOST_GRACE_SECONDS = 1
LAG_SECONDS = 8
FOR_SECONDS = 2
AGGREGATETYPE = "canary"


# --- the shortened rules and the derived configuration ---------------------------------------
def _rules_without_for(text: str) -> list[dict[str, Any]]:
    rules = []
    for group in yaml.safe_load(text)["groups"]:
        rules += [{k: v for k, v in rule.items() if k != "for"} for rule in group["rules"]]
    return rules


@pytest.mark.parametrize("path", sorted((SHIPPED / "rules").glob("*.yml")), ids=lambda p: p.name)
def test_the_shortened_rules_differ_from_the_shipped_ones_only_in_for(path: Path) -> None:
    shipped = path.read_text()
    shortened = shorten_for(shipped, FOR_SECONDS)
    assert _rules_without_for(shortened) == _rules_without_for(shipped)
    shipped_for = [r.get("for") for g in yaml.safe_load(shipped)["groups"] for r in g["rules"]]
    short_for = [r.get("for") for g in yaml.safe_load(shortened)["groups"] for r in g["rules"]]
    assert any(shipped_for), "no rule has a `for:` to shorten"
    assert short_for == [f"{FOR_SECONDS}s" if d else None for d in shipped_for]


def test_the_derived_configuration_keeps_the_shipped_job_names_and_passes_promtool(
    tmp_path: Path,
) -> None:
    shipped = (SHIPPED / "prometheus.yml").read_text()
    jobs = [job["job_name"] for job in yaml.safe_load(shipped)["scrape_configs"]]
    assert job_names(shipped) == jobs
    targets = {name: f"127.0.0.1:{9000 + i}" for i, name in enumerate(jobs)}
    rules = tmp_path / "rules"
    rules.mkdir()
    for source in (SHIPPED / "rules").glob("*.yml"):
        (rules / source.name).write_text(shorten_for(source.read_text(), FOR_SECONDS))
    config = derive_config(shipped, targets, rule_files=[str(rules / "*.yml")], interval_seconds=1)
    assert [job["job_name"] for job in config["scrape_configs"]] == jobs
    path = tmp_path / "prometheus.yml"
    path.write_text(json.dumps(config))
    result = subprocess.run(
        [promtool(), "check", "config", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


# --- the alerts, end to end -------------------------------------------------------------------
class Pipeline:
    """The running processes and Prometheus of one test."""

    def __init__(self, settings: Settings, prometheus: LocalPrometheus, env: dict[str, str]):
        self.settings = settings
        self.prometheus = prometheus
        self.env = env
        self.stream = f"{settings.stream_prefix}{AGGREGATETYPE}"
        self.emitted = 0

    async def query(self, expr: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.prometheus.query, expr)

    async def alerts(self, name: str) -> list[dict[str, Any]]:
        body = json.loads(await asyncio.to_thread(self.prometheus.get, "/api/v1/alerts"))
        return [a for a in body["data"]["alerts"] if a["labels"]["alertname"] == name]

    async def emit(self, count: int) -> None:
        conn = await asyncpg.connect(self.settings.database_url.get_secret_value())
        try:
            await insert_canaries(conn, [f"a{self.emitted}"], count, aggregatetype=AGGREGATETYPE)
        finally:
            await conn.close()
        self.emitted += count

    async def receipts(self) -> int:
        conn = await asyncpg.connect(self.settings.database_url.get_secret_value())
        try:
            return int(
                await conn.fetchval("SELECT count(DISTINCT event_id) FROM flowproof_receipts")
            )
        finally:
            await conn.close()


async def _until(what: str, probe: Any, within: float) -> Any:
    """Poll `probe()` until it returns something truthy; fail naming `what` after `within` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = await probe()
        if found:
            return found
        await asyncio.sleep(0.3)
    pytest.fail(f"timed out after {within:g}s waiting for {what}")


@contextlib.asynccontextmanager
async def _pipeline(
    settings: Settings, settings_env: dict[str, str], tmp_path: Path
) -> AsyncIterator[tuple[Pipeline, dict[str, Component]]]:
    env = {
        **settings_env,
        "FLOWPROOF_SINKS": "redis",
        "FLOWPROOF_VERIFY_INTERVAL_SECONDS": "0.5",
        "FLOWPROOF_FLOW_LOST_GRACE_SECONDS": str(LOST_GRACE_SECONDS),
        "FLOWPROOF_CONSUMER_DISCOVERY_INTERVAL_SECONDS": "0.5",
    }
    components = {
        name: Component(name, args, free_port(), tmp_path / f"{name}.log")
        for name, args in (
            ("flowproof-relay", ["relay"]),
            ("flowproof-consumer-redis", ["consume", "--sink", "redis"]),
            ("flowproof-verifier", ["verify"]),
        )
    }
    targets = {name: f"127.0.0.1:{c.port}" for name, c in components.items()}
    prometheus = LocalPrometheus(tmp_path / "prometheus", targets, for_seconds=FOR_SECONDS)
    try:
        for component in components.values():
            await component.start(env)
        async with prometheus:
            yield Pipeline(settings, prometheus, env), components
    finally:
        for component in components.values():
            await component.stop()


async def _lag_phase(pipeline: Pipeline, consumer: Component) -> float:
    """Stop the consumer, emit, hold while Prometheus sees the lag, restart it, wait until every
    event is received; return how long the phase took."""
    started = time.monotonic()
    await consumer.stop()
    await pipeline.emit(100)
    lag = f'flowproof_redis_group_lag_entries{{stream="{pipeline.stream}",group="{GROUP}"}} > 0'
    await _until("Prometheus to see the group lag", lambda: pipeline.query(lag), 15)
    late = f'flowproof_verify_late_events{{sink="redis",group="{GROUP}"}} > 0'
    await _until("Prometheus to see the late events", lambda: pipeline.query(late), 15)
    await asyncio.sleep(max(0.0, LAG_SECONDS - (time.monotonic() - started)))
    await consumer.start(pipeline.env)

    async def all_received() -> bool:
        return await pipeline.receipts() >= pipeline.emitted

    await _until("every event to be received after the restart", all_received, 15)
    return time.monotonic() - started


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_events_lost_fires_after_a_staged_loss_and_never_during_mere_lag(
    settings: Settings,
    settings_env: dict[str, str],
    redis_client: aioredis.Redis,
    tmp_path: Path,
) -> None:
    async with _pipeline(settings, settings_env, tmp_path) as (pipeline, components):
        consumer = components["flowproof-consumer-redis"]
        await pipeline.emit(10)
        lost = f'flowproof_verify_lost_events{{sink="redis",group="{GROUP}"}}'
        await _until(
            "Prometheus to scrape the verifier's lost count", lambda: pipeline.query(lost), 30
        )

        # Mere lag: the consumer is stopped for several times the lost grace, then restarted.
        phase_started = time.monotonic()
        took = await _lag_phase(pipeline, consumer)
        assert took > LAG_SECONDS > 4 * LOST_GRACE_SECONDS
        await asyncio.sleep(3)  # evaluations and scrapes after the catch-up
        span = f"{int(time.monotonic() - phase_started) + 1}s"
        seen_lag = await pipeline.query(
            f'max_over_time(flowproof_redis_group_lag_entries{{group="{GROUP}"}}[{span}])'
        )
        assert seen_lag and float(seen_lag[0]["value"][1]) > 0, "Prometheus never saw the lag"
        assert await pipeline.query(f"max_over_time({lost}[{span}])") != []
        assert await pipeline.query(f"max_over_time({lost}[{span}]) > 0") == []
        never = f'max_over_time(ALERTS{{alertname="FlowproofEventsLost"}}[{span}])'
        assert await pipeline.query(never) == [], "FlowproofEventsLost was pending or firing"

        # A real loss: entries gone from the stream before the group read them.
        await consumer.stop()
        length = await redis_client.xlen(pipeline.stream)
        await pipeline.emit(5)

        async def published() -> bool:
            return bool(await redis_client.xlen(pipeline.stream) >= length + 5)

        await _until("the relay to publish the events to be lost", published, 15)
        entries = await redis_client.xrevrange(pipeline.stream, count=5)
        assert await redis_client.xdel(pipeline.stream, *[e[0] for e in entries]) == 5
        await consumer.start(pipeline.env)

        async def firing() -> list[dict[str, Any]]:
            return [
                a for a in await pipeline.alerts("FlowproofEventsLost") if a["state"] == "firing"
            ]

        alerts = await _until("FlowproofEventsLost to fire", firing, LOST_GRACE_SECONDS + 40)
        assert alerts[0]["labels"]["sink"] == "redis"
        assert alerts[0]["labels"]["group"] == GROUP
        assert alerts[0]["labels"]["severity"] == "critical"
        assert float(alerts[0]["value"]) == 5


def test_a_missing_prometheus_is_an_error_naming_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(PrometheusError, match=r"apt-get install prometheus"):
        prometheus_binary()
