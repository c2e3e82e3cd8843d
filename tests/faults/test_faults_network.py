"""Fault scenarios on the network: a fault-injecting TCP proxy (tests/faults/proxy.py) between
flowproof's processes and one service at a time drops every connection, slows them down, then
leaves them half-open (accepted, never forwarded; caught connections stay dead for good, so the
clients must notice by their own timeouts). The workload and the accounting reach the services
directly. Kafka clients connect to the advertised listener after bootstrap, so the Kafka
scenario runs a private broker whose advertised port is the proxy's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.faults.conftest import RunFactory
from tests.faults.driver import WorkloadDriver
from tests.faults.processes import FlowproofProcess, stray_processes
from tests.faults.proxy import ProxyProcess
from tests.faults.scenario import Endpoints, Faults, Plan, Run
from tests.private_services import PrivateKafka, free_port

RELAY_BATCH = 500
CONSUMER_BATCH = 256
DROP_SECONDS = 3.0
DELAY = 0.25  # seconds added to every chunk, both ways
DELAY_SECONDS = 6.0
HALF_OPEN_SECONDS = 6.0


def _via(url: str, port: int) -> str:
    """`url` with its port replaced (the proxy's)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{netloc}:{port}"))


def _target(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


@pytest.fixture
async def proxy_factory(
    tmp_path: Path, base_env: dict[str, str]
) -> AsyncIterator[Callable[[str, str, int, int | None], Awaitable[ProxyProcess]]]:
    started: list[ProxyProcess] = []

    async def start(name: str, host: str, port: int, listen: int | None = None) -> ProxyProcess:
        proxy = ProxyProcess(
            {name: (listen or free_port(), host, port)}, tmp_path / f"proxy-{name}.log"
        )
        started.append(proxy)
        return await proxy.start(base_env)

    yield start
    for proxy in started:
        await proxy.stop()


# What each fault must have done to the traffic, by the proxy's own counters.
FAULT_COUNTERS = {"drop": "reset", "delay": "delayed_chunks", "half-open": "caught_half_open"}


def network_faults(proxy: ProxyProcess, route: str, done: dict[str, int]) -> Faults:
    """Drop, then delay, then half-open, at random moments; each waited for to recover. `done`
    gets, per fault, how much of it the proxy's counters saw (see `assert_faults_happened`)."""

    async def counted(mode: str, seconds: float, delay: float | None = None) -> None:
        counter = FAULT_COUNTERS[mode]
        before = await proxy.command(route, "stats")
        await proxy.mode(route, mode, delay)
        await asyncio.sleep(seconds)  # the outage is the fault: it lasts what it lasts
        after = await proxy.mode(route, "pass")
        done[mode] = int(str(after[counter])) - int(str(before[counter]))

    async def faults(run: Run) -> None:
        await run.at_fraction(0.05, 0.15)
        async with run.fault(f"{route}: drop every connection {DROP_SECONDS:.0f} s"):
            await counted("drop", DROP_SECONDS)
        await run.recovered()

        await run.at_fraction(0.35, 0.45)
        async with run.fault(f"{route}: +{DELAY * 1000:.0f} ms per chunk {DELAY_SECONDS:.0f} s"):
            await counted("delay", DELAY_SECONDS, DELAY)
        await run.recovered()

        await run.at_fraction(0.6, 0.7)
        async with run.fault(f"{route}: half-open {HALF_OPEN_SECONDS:.0f} s"):
            await counted("half-open", HALF_OPEN_SECONDS)
        run.mark(f"the proxy's counts of each fault: {done}")
        await run.recovered()
        run.mark(f"proxy after the faults: {await proxy.command(route, 'stats')}")

    return faults


def assert_faults_happened(done: dict[str, int]) -> None:
    """Each fault touched flowproof's traffic: connections reset by the drop, chunks held by the
    delay, connections caught by the half-open (a scenario whose processes bypassed the proxy
    would pass everything else)."""
    missed = [f"{mode}: {FAULT_COUNTERS[mode]} {done.get(mode)}" for mode in FAULT_COUNTERS
              if not done.get(mode, 0) > 0]  # fmt: skip
    assert not missed, f"faults that hit no traffic: {missed}"


@pytest.mark.timeout(360)
async def test_redis_connections_cut_slowed_and_half_open(
    make_run: RunFactory,
    shared_endpoints: Endpoints,
    proxy_factory: Callable[[str, str, int, int | None], Awaitable[ProxyProcess]],
) -> None:
    """Between flowproof and Redis: the relay's pipelined XADDs and the consumers' reads and
    acks are cut, slowed and left hanging; nothing is lost or reordered, and every process
    notices a dead connection and makes a new one."""
    proxy = await proxy_factory("redis", *_target(shared_endpoints.redis_url), None)
    endpoints = replace(
        shared_endpoints, process_redis_url=_via(shared_endpoints.redis_url, proxy.port("redis"))
    )
    plan = Plan(
        "proxy Redis: drop, delay, half-open",
        rate=1000.0,
        max_duplicates={"redis": 3 * (RELAY_BATCH + CONSUMER_BATCH), "kafka": 0},
        seed=71,
    )
    done: dict[str, int] = {}
    result = await make_run(plan, endpoints).execute(network_faults(proxy, "redis", done))
    assert result.passed, result.explain()
    assert_faults_happened(done)


@pytest.mark.faults_full
@pytest.mark.timeout(480)
async def test_postgres_connections_cut_slowed_and_half_open(
    make_run: RunFactory,
    shared_endpoints: Endpoints,
    proxy_factory: Callable[[str, str, int, int | None], Awaitable[ProxyProcess]],
) -> None:
    """Between flowproof and PostgreSQL: the relays' claim/mark connections (which carry their
    slot locks), the NOTIFY listener and the consumers' receipt writes are cut, slowed and left
    hanging."""
    proxy = await proxy_factory("postgres", *_target(shared_endpoints.database_url), None)
    endpoints = replace(
        shared_endpoints,
        process_database_url=_via(shared_endpoints.database_url, proxy.port("postgres")),
    )
    bound = 3 * (RELAY_BATCH + CONSUMER_BATCH)
    plan = Plan(
        "proxy PostgreSQL: drop, delay, half-open",
        rate=250.0,
        max_duplicates={"redis": bound, "kafka": bound},
        seed=73,
        # The relay's statement timeout (60 s) and the consumers' receipt write timeout (30 s)
        # are what notice a dead connection here.
        recover_timeout=150.0,
    )
    done: dict[str, int] = {}
    result = await make_run(plan, endpoints).execute(network_faults(proxy, "postgres", done))
    assert result.passed, result.explain()
    assert_faults_happened(done)


@pytest.fixture
def kafka_behind_proxy(tmp_path: Path) -> Iterator[tuple[PrivateKafka, int]]:
    """A private broker advertising a port a proxy will listen on (the broker and the port)."""
    advertised = free_port()
    with PrivateKafka(tmp_path / "kafka", advertised_port=advertised) as server:
        yield server, advertised


@pytest.mark.faults_full
@pytest.mark.timeout(480)
async def test_kafka_connections_cut_slowed_and_half_open(
    make_run: RunFactory,
    shared_endpoints: Endpoints,
    kafka_behind_proxy: tuple[PrivateKafka, int],
    proxy_factory: Callable[[str, str, int, int | None], Awaitable[ProxyProcess]],
) -> None:
    """Between flowproof and the Kafka broker (bootstrap and advertised listener both behind
    the proxy): the relay's producer and the consumers' fetches, heartbeats and commits are
    cut, slowed and left hanging."""
    server, advertised = kafka_behind_proxy
    proxy = await proxy_factory("kafka", "127.0.0.1", server.port, advertised)
    endpoints = replace(shared_endpoints, kafka_bootstrap=f"127.0.0.1:{advertised}")
    bound = 3 * (RELAY_BATCH + 2 * CONSUMER_BATCH)
    plan = Plan(
        "proxy Kafka: drop, delay, half-open",
        rate=250.0,
        kafka_consumers=2,
        max_duplicates={"redis": 0, "kafka": bound},
        seed=79,
        recover_timeout=120.0,
    )
    done: dict[str, int] = {}
    result = await make_run(plan, endpoints).execute(network_faults(proxy, "kafka", done))
    assert result.passed, result.explain()
    assert_faults_happened(done)


@pytest.mark.timeout(240)
async def test_every_process_stops_on_sigterm_while_postgres_is_half_open(
    make_run: RunFactory,
    shared_endpoints: Endpoints,
    proxy_factory: Callable[[str, str, int, int | None], Awaitable[ProxyProcess]],
) -> None:
    """SIGTERM while every PostgreSQL connection of the relay and the consumers hangs (half-open,
    with events waiting to be claimed and receipted): each process still stops, exit 0, within
    its shutdown timeout plus the few seconds it takes to drop dead connections, not after its
    statement timeouts (a minute) or never. Not a row of the fault table: no 20,000 events."""
    proxy = await proxy_factory("postgres", *_target(shared_endpoints.database_url), None)
    endpoints = replace(
        shared_endpoints,
        process_database_url=_via(shared_endpoints.database_url, proxy.port("postgres")),
    )
    plan = Plan(
        "SIGTERM while PostgreSQL is half-open",
        events=2000,
        rate=2000.0,
        env={"FLOWPROOF_RELAY_METRICS_INTERVAL_SECONDS": "1"},  # gauges hit the dead connection
        seed=83,
    )
    run = make_run(plan, endpoints)
    try:
        await run.processes.start_all()
        await run.driver.run()
        await run.wait_until(lambda: run.all_received(plan.events), 60, "the first events")
        await proxy.mode("postgres", "half-open")
        more = WorkloadDriver(
            endpoints.database_url, run.driver.outbox, total=2000, rate=1000.0, seed=89
        )
        await more.run()  # written directly: the relay cannot claim them any more
        await run.pause(2.0, 3.0)  # claims, gauges and receipts now wait on dead connections
        took: dict[str, float] = {}

        async def stop(process: FlowproofProcess) -> int | None:
            started = time.monotonic()
            code = await process.stop(grace=45.0)
            took[process.name] = round(time.monotonic() - started, 1)
            return code

        codes = await asyncio.gather(*(stop(p) for p in run.processes.by_name.values()))
        run.mark(f"stopped after SIGTERM: {took}, exit codes {codes}")
        assert codes == [0] * len(codes), f"exit codes {codes}; seconds {took}\n{run.timeline}"
        # FLOWPROOF_*_SHUTDOWN_TIMEOUT_SECONDS (10) plus the 5 s a dead connection gets to close
        assert max(took.values()) < 20, f"too slow to stop: {took}"
        assert stray_processes(run.run_id) == []
    finally:
        await run.processes.kill_all()
