"""`flowproof demo`: the whole pipeline on local services, a workload, a defect, the verdict.

It migrates, starts the relay, both consumers and the verifier as real `flowproof` processes,
drives a workload of the sample domain with a live progress line, freezes the Kafka consumer for
a while (SIGSTOP) so that a check visibly fails and then recovers, and ends with the verdict
table of `flowproof check` and where the metrics were served. With `prometheus`, a local Prometheus
(flowproof.local_prometheus) scrapes the four processes with the shipped alert rules, so the
alerts can be watched at its /alerts page while the defect is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from flowproof.core.config import Settings, env_name
from flowproof.core.connect import connect_postgres, create_postgres_pool
from flowproof.core.errors import EXIT_CHECK_FAILED, EXIT_OK, FlowproofError
from flowproof.core.http import free_port
from flowproof.core.logging import get_logger
from flowproof.core.migrations import migrate
from flowproof.local_prometheus import LocalPrometheus, PrometheusError
from flowproof.publisher.outbox import Outbox
from flowproof.publisher.queries import query
from flowproof.verifier.commands import check_once
from flowproof.verifier.report import render_table
from flowproof.workload import OrderWorkload, emit_at_rate

log = get_logger(__name__)

DRAIN_TIMEOUT = 90.0
FROZEN_SINK = "kafka"  # the sink whose consumer the demo's defect freezes


@dataclass(frozen=True, slots=True)
class Timeline:
    """When the demo does what, in seconds from the start of the workload.

    The Kafka consumer is frozen from 20% to 47% of the run. The verdict at the end is about the
    recovered pipeline: its window (40% of the run, at least 10 s) starts after the freeze, and
    short graces let it judge every event of that window but the last 5 s. The freeze itself
    shows in the progress lines as lag, never as loss (latency.e2e and lag.kafka failing, then
    passing; flow.lost passing all along).
    """

    seconds: float = 75.0
    rate: float = 200.0

    @property
    def freeze_at(self) -> float:
        return 0.2 * self.seconds

    @property
    def freeze_seconds(self) -> float:
        return 0.27 * self.seconds

    def settings(self) -> dict[str, float]:
        """The verifier settings of the demo (its processes and its final verdict)."""
        return {
            "verify_interval_seconds": 2.0,
            "verify_window_seconds": round(max(10.0, 0.4 * self.seconds)),
            "flow_lost_grace_seconds": 5.0,
            "flow_duplicates_grace_seconds": 5.0,
            "flow_order_grace_seconds": 5.0,
            "lag_kafka_grace_seconds": 5.0,
            "lag_redis_grace_seconds": 5.0,
        }


class DemoError(FlowproofError):
    """A demo component did not start or died."""


@dataclass
class Component:
    """One `flowproof` process of the demo."""

    name: str
    args: list[str]
    port: int
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    frozen: bool = False
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    async def start(self, env: dict[str, str]) -> None:
        self._log = self.log_path.open("ab")  # a restarted component keeps its earlier log
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "flowproof",
            *self.args,
            env={**env, env_name("metrics_port"): str(self.port)},
            stdout=self._log,
            stderr=self._log,
            stdin=asyncio.subprocess.DEVNULL,
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(sig)

    async def stop(self) -> None:
        if self.process is None:
            return
        if self.frozen:
            self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 20)
        except TimeoutError:
            self.signal(signal.SIGKILL)
            await self.process.wait()
        if self._log is not None:
            self._log.close()


def _scrape(url: str) -> dict[str, float]:
    """`name{labels}` -> value of one /metrics page (flowproof_verify_check_passed only)."""
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own loopback URL
        text = response.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        if family.name == "flowproof_verify_check_passed":
            for sample in family.samples:
                values[sample.labels["check"]] = sample.value
    return values


def _child_env(settings: Settings, timeline: Timeline) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FLOWPROOF_")}
    env.update(
        {
            env_name("database_url"): settings.database_url.get_secret_value(),
            env_name("redis_url"): settings.redis_url.get_secret_value(),
            env_name("kafka_bootstrap_servers"): settings.kafka_bootstrap_servers,
            env_name("stream_prefix"): settings.stream_prefix,
            env_name("topic_prefix"): settings.topic_prefix,
            env_name("consumer_group"): settings.consumer_group,
            env_name("outbox_table"): settings.outbox_table,
        }
    )
    env.update({env_name(key): str(value) for key, value in timeline.settings().items()})
    env[env_name("log_format")] = "json"
    return env


class Progress:
    """The live progress line: counts from the database, check states from the verifier."""

    def __init__(self, out: IO[str], started: float) -> None:
        self._out = out
        self._tty = out.isatty()
        self._started = started
        self._last_print = 0.0
        self.failing_seen: set[str] = set()

    def show(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if self._tty:
            self._out.write("\r\033[K" + text)
        elif force or now - self._last_print >= 5:
            self._out.write(text + "\n")
            self._last_print = now
        self._out.flush()

    def note(self, text: str) -> None:
        if self._tty:
            self._out.write("\r\033[K")
        self._out.write(f"[{time.monotonic() - self._started:5.1f}s] {text}\n")
        self._out.flush()


async def _counts(conn: asyncpg.Connection, settings: Settings, since: float) -> dict[str, int]:
    published = await conn.fetch(query("published_since", settings.outbox_table), since)
    received = await conn.fetch(
        """SELECT sink, count(DISTINCT event_id) AS n FROM flowproof_receipts
           WHERE received_at >= to_timestamp($1) AND valid GROUP BY sink""",
        since,
    )
    counts = {f"{r['sink']}_pub": r["n"] for r in published}
    counts.update({f"{r['sink']}_rcv": r["n"] for r in received})
    return counts


@contextlib.asynccontextmanager
async def _components(
    settings: Settings, timeline: Timeline, workdir: Path
) -> AsyncIterator[dict[str, Component]]:
    components = {
        name: Component(name, args, free_port(), workdir / f"{name}.log")
        for name, args in (
            ("relay", ["relay"]),
            *((f"consumer-{sink}", ["consume", "--sink", sink]) for sink in settings.sinks),
            ("verifier", ["verify"]),
        )
    }
    env = _child_env(settings, timeline)
    try:
        for component in components.values():
            await component.start(env)
        yield components
    finally:
        for component in components.values():
            await component.stop()


SERVE_TIMEOUT = 30.0


async def _wait_serving(component: Component) -> None:
    deadline = time.monotonic() + SERVE_TIMEOUT
    while time.monotonic() < deadline:
        if not component.alive():
            raise DemoError(f"{component.name} exited; see {component.log_path}")
        try:
            await asyncio.to_thread(_scrape, component.metrics_url)
            return
        except OSError:
            await asyncio.sleep(0.3)
    raise DemoError(f"{component.name} did not serve /metrics within {SERVE_TIMEOUT:g}s")


# The shipped rules' `for:` durations (1 to 10 minutes) are longer than the whole demo; 10 s is
# shorter than its defect and longer than Prometheus takes to discover its targets at start-up
# (about 5 s), so FlowproofVerifierDown's absent() does not fire before the first scrape.
DEMO_ALERT_FOR_SECONDS = 10


async def run_demo(
    settings: Settings,
    timeline: Timeline | None = None,
    out: IO[str] = sys.stderr,
    *,
    prometheus: bool = False,
) -> int:
    """Run the demo; return 0 when the final verdict passed, 1 when not."""

    timeline = timeline or Timeline()
    if FROZEN_SINK not in settings.sinks:
        raise DemoError(
            f"the demo freezes the {FROZEN_SINK} consumer: FLOWPROOF_SINKS must include it"
        )
    workdir = Path(tempfile.mkdtemp(prefix="flowproof-demo-"))
    conn = await connect_postgres(settings)
    try:
        await migrate(conn, settings.outbox_table)
        out.write(f"flowproof demo: logs in {workdir}\n")
        async with _components(settings, timeline, workdir) as components:
            for component in components.values():
                await _wait_serving(component)
                out.write(f"  {component.name:15} {component.metrics_url}\n")
            out.write(f"  status page     http://127.0.0.1:{components['verifier'].port}/\n")
            async with _prometheus(prometheus, components, workdir, out):
                await _drive(settings, timeline, conn, components, out)
                # Judged while everything still runs, as `flowproof check` would be in production.
                report = await check_once(settings.model_copy(update=timeline.settings()))
    finally:
        await conn.close()
    out.flush()
    sys.stdout.write("\n" + render_table(report))
    sys.stdout.write(
        "\nThe metrics above were served by each process while it ran. To keep a pipeline up "
        "with Prometheus and Grafana, see 'Running with Docker' in docs/operations.md.\n"
    )
    return EXIT_OK if report.passed else EXIT_CHECK_FAILED


@contextlib.asynccontextmanager
async def _prometheus(
    wanted: bool, components: dict[str, Component], workdir: Path, out: IO[str]
) -> AsyncIterator[None]:
    if not wanted:
        yield
        return
    targets = {f"flowproof-{c.name}": f"127.0.0.1:{c.port}" for c in components.values()}
    local = LocalPrometheus(workdir / "prometheus", targets, for_seconds=DEMO_ALERT_FOR_SECONDS)
    try:
        await local.start()
    except PrometheusError as exc:
        await local.stop()
        raise DemoError(str(exc)) from None
    out.write(
        f"  prometheus      {await asyncio.to_thread(local.alerts_page)} (flowproof's alert "
        f"rules, every `for:` shortened to {DEMO_ALERT_FOR_SECONDS}s)\n"
    )
    started = time.monotonic()
    try:
        yield
        out.write(await asyncio.to_thread(_alert_summary, local, time.monotonic() - started))
    finally:
        await local.stop()


def _alert_summary(local: LocalPrometheus, seconds: float) -> str:
    """Which targets Prometheus scrapes now, and which alerts fired during the demo."""
    up = local.query("up")
    fired = local.query(f'max_over_time(ALERTS{{alertstate="firing"}}[{int(seconds) + 1}s])')
    names = sorted({_alert_name(result["metric"]) for result in fired})
    scraped = sum(1 for result in up if result["value"][1] == "1")
    return (
        f"prometheus: {scraped} of {len(up)} targets up; alerts that fired during the demo: "
        f"{', '.join(names) or 'none'}\n"
    )


def _alert_name(labels: dict[str, str]) -> str:
    detail = next((f"{key}={labels[key]}" for key in ("check", "sink", "job") if key in labels), "")
    return f"{labels['alertname']}{{{detail}}}" if detail else labels["alertname"]


async def _drive(
    settings: Settings,
    timeline: Timeline,
    conn: asyncpg.Connection,
    components: dict[str, Component],
    out: IO[str],
) -> None:
    started_wall = time.time()
    started = time.monotonic()
    progress = Progress(out, started)
    stop = asyncio.Event()
    emitted = [0]
    pool = await create_postgres_pool(settings, max_size=4)
    workload_task = asyncio.create_task(
        emit_at_rate(
            pool,
            Outbox.from_settings(settings),
            OrderWorkload(seed=int(started_wall)),
            rate=timeline.rate,
            stop=stop,
            on_emitted=lambda n: emitted.__setitem__(0, n),
        ),
        name="demo-workload",
    )
    progress.note(f"workload: order events at {timeline.rate:g}/s for {timeline.seconds:g}s")
    kafka_consumer = components[f"consumer-{FROZEN_SINK}"]
    try:
        while True:
            elapsed = time.monotonic() - started
            _freeze_schedule(kafka_consumer, timeline, elapsed, progress)
            if elapsed >= timeline.seconds and not stop.is_set():
                stop.set()
                progress.note(f"workload done: {emitted[0]} events; waiting for the pipeline")
            for component in components.values():
                if not component.alive():
                    raise DemoError(f"{component.name} died; see {component.log_path}")
            counts = await _counts(conn, settings, started_wall)
            checks = await _checks(components["verifier"])
            failing = sorted(name for name, value in checks.items() if value == 0)
            _report_check_changes(progress, failing)
            line = _line(
                elapsed, emitted[0], counts, checks, settings=settings, frozen=kafka_consumer.frozen
            )
            progress.show(line)
            if stop.is_set() and _drained(counts, emitted[0], settings) and checks and not failing:
                progress.note("every event reached both sinks and every check passes")
                return
            if elapsed > timeline.seconds + DRAIN_TIMEOUT:
                progress.note("the pipeline did not drain in time; the verdict will say why")
                return
            await asyncio.sleep(1)
    finally:
        stop.set()
        await workload_task
        await pool.close()


def _freeze_schedule(
    consumer: Component, timeline: Timeline, elapsed: float, progress: Progress
) -> None:
    thaw_at = timeline.freeze_at + timeline.freeze_seconds
    if timeline.freeze_at <= elapsed < thaw_at and not consumer.frozen:
        consumer.signal(signal.SIGSTOP)
        consumer.frozen = True
        progress.note(f"defect: Kafka consumer frozen (SIGSTOP) for {timeline.freeze_seconds:g}s")
    elif elapsed >= thaw_at and consumer.frozen:
        consumer.signal(signal.SIGCONT)
        consumer.frozen = False
        progress.note("defect removed: Kafka consumer resumed (SIGCONT)")


async def _checks(verifier: Component) -> dict[str, float]:
    try:
        return await asyncio.to_thread(_scrape, verifier.metrics_url)
    except OSError as exc:
        log.warning("demo.verifier_scrape_failed", error=str(exc))
        return {}


def _report_check_changes(progress: Progress, failing: list[str]) -> None:
    now_failing = set(failing)
    for name in sorted(now_failing - progress.failing_seen):
        progress.note(f"verifier: {name} FAILS")
    for name in sorted(progress.failing_seen - now_failing):
        progress.note(f"verifier: {name} passes again")
    progress.failing_seen = now_failing


def _drained(counts: dict[str, int], emitted: int, settings: Settings) -> bool:
    return all(
        counts.get(f"{sink}_pub", 0) >= emitted and counts.get(f"{sink}_rcv", 0) >= emitted
        for sink in settings.sinks
    )


def _line(
    elapsed: float,
    emitted: int,
    counts: dict[str, int],
    checks: dict[str, float],
    *,
    settings: Settings,
    frozen: bool,
) -> str:
    sinks = " ".join(
        f"{sink} pub {counts.get(f'{sink}_pub', 0)} rcv {counts.get(f'{sink}_rcv', 0)} |"
        for sink in settings.sinks
    )
    failing = sorted(name for name, value in checks.items() if value == 0)
    if not checks:
        state = "checks: first evaluation pending"
    elif failing:
        state = "checks: " + ", ".join(f"{name} FAIL" for name in failing)
    else:
        state = f"checks: all {len(checks)} pass"
    flag = " [kafka consumer frozen]" if frozen else ""
    return f"[{elapsed:5.1f}s] emitted {emitted} | {sinks} {state}{flag}"
