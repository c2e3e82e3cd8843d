"""The contract every registered sink keeps, run for each one in `flowproof.core.sinks.SINKS`
against its real server: registered on every side; published with a recorded position per
event; consumed into receipts at those positions, in each aggregate's order; its lag seen by the
verifier before consumption and gone after; each copy late before and passed after; and a sink
that cannot be reached reported as such by the relay, the consumers and the verifier.

A new sink runs this suite by being registered; it adds only its entry to UNREACHABLE below.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr

from flowproof.consumers.readers import READERS as CONSUMER_READERS
from flowproof.consumers.run import consume
from flowproof.core.config import Settings
from flowproof.core.errors import ComponentUnreachable
from flowproof.core.sinks import SINKS, SinkSpec
from flowproof.publisher.errors import SinkError
from flowproof.publisher.outbox import Outbox
from flowproof.publisher.queries import deliveries_table
from flowproof.publisher.relay import Relay
from flowproof.publisher.sinks import PUBLISHERS, make_sink
from flowproof.verifier.checks import registered
from flowproof.verifier.loss import Copy, State
from flowproof.verifier.sink_reader import SinkReader
from flowproof.verifier.sinks import READERS as VERIFIER_READERS
from flowproof.verifier.sinks import reader_class

# Settings that point a sink at a port where nothing listens.
UNREACHABLE: dict[str, dict[str, Any]] = {
    "redis": {"redis_url": SecretStr("redis://127.0.0.1:9/0")},
    "kafka": {"kafka_bootstrap_servers": "127.0.0.1:9"},
}
AGGREGATES = ("a-1", "a-2", "a-3")
PER_AGGREGATE = 10
EVENTS = len(AGGREGATES) * PER_AGGREGATE


@pytest.fixture(params=sorted(SINKS))
def spec(request: pytest.FixtureRequest) -> SinkSpec:
    return SINKS[request.param]


@pytest.fixture
def one_sink(
    spec: SinkSpec,
    settings: Settings,
    redis_client: aioredis.Redis,  # deletes this test's streams afterwards
    kafka_admin: AIOKafkaAdminClient,  # deletes this test's topics afterwards
) -> Settings:
    return settings.model_copy(update={"sinks": (spec.name,), "relay_batch_size": 7})


def test_the_sink_is_registered_on_every_side(spec: SinkSpec) -> None:
    assert spec.name in PUBLISHERS and PUBLISHERS[spec.name](Settings()).name == spec.name
    assert spec.name in CONSUMER_READERS
    assert VERIFIER_READERS[spec.name].spec is spec
    assert spec.name in UNREACHABLE, f"add {spec.name!r} to UNREACHABLE in this module"
    fields = Settings.model_fields
    for name in (
        spec.prefix_setting,
        spec.lag_threshold_setting,
        spec.lag_grace_setting,
        *spec.settings,
    ):
        assert name in fields, f"{spec.name}: no setting {name!r}"
    assert spec.lag_check in [check.name for check in registered()]


async def _emit(conn: asyncpg.Connection, settings: Settings) -> dict[uuid.UUID, tuple[str, int]]:
    """Canaries through the application's API; each event's aggregate and sequence."""
    outbox = Outbox.from_settings(settings)
    emitted: dict[uuid.UUID, tuple[str, int]] = {}
    async with conn.transaction():
        for sequence in range(1, PER_AGGREGATE + 1):
            for aggregate in AGGREGATES:
                event_id = await outbox.emit(
                    conn,
                    type="flowproof.Canary",
                    aggregate_type="canary",
                    aggregate_id=aggregate,
                    payload={"run_id": "contract", "sequence": sequence, "total": PER_AGGREGATE},
                )
                emitted[event_id] = (aggregate, sequence)
    return emitted


async def _copies(conn: asyncpg.Connection, settings: Settings, sink: str) -> list[Copy]:
    rows = await conn.fetch(
        f"""SELECT o.id, d.destination, d.partition, d.position
            FROM {deliveries_table(settings.outbox_table)} d
            JOIN {settings.outbox_table} o USING (seq)
            WHERE d.sink = $1 ORDER BY d.seq""",
        sink,
    )
    return [Copy(r["id"], r["destination"], r["partition"], r["position"], 0.0) for r in rows]


@contextlib.asynccontextmanager
async def verifier_reader(settings: Settings, spec: SinkSpec) -> AsyncIterator[SinkReader]:
    reader = reader_class(spec.name)(settings, 10.0)
    try:
        await reader.connect()
        yield reader
    finally:
        await reader.close()


async def _behind(settings: Settings, spec: SinkSpec, group: str) -> int:
    async with verifier_reader(settings, spec) as reader:
        snapshot = await reader.snapshot([group], alive_within=60, window_start=0, now=9e9)
    assert snapshot.sink == spec.name
    [lanes] = [g for g in snapshot.groups if g.group == group]
    return sum(lane.behind for lane in lanes.lanes)


async def _states(
    settings: Settings, spec: SinkSpec, group: str, copies: list[Copy]
) -> list[State]:
    async with verifier_reader(settings, spec) as reader:
        return await reader.positions().classify(group, copies)


async def test_published_consumed_and_measured_at_the_same_positions(
    spec: SinkSpec, one_sink: Settings, conn: asyncpg.Connection
) -> None:
    settings, group = one_sink, f"contract-{uuid.uuid4().hex[:6]}"
    emitted = await _emit(conn, settings)
    relay = Relay(settings)
    await relay.run_until_idle()
    assert relay.stats[spec.name].published == EVENTS

    # publish: one recorded position per event, in the destination the descriptor names
    copies = await _copies(conn, settings, spec.name)
    assert sorted(c.event_id for c in copies) == sorted(emitted)
    assert {c.destination for c in copies} == {spec.destination(settings, "canary")}
    assert all(c.position for c in copies)

    # lag and position before consumption: all behind, every copy late (not lost)
    behind = await _behind(settings, spec, group)
    assert behind == EVENTS
    assert set(await _states(settings, spec, group, copies)) <= {State.AHEAD, State.PENDING}

    # consume: a valid receipt per event, at the relay's position, in each aggregate's order
    stats = await consume(settings, sink=spec.name, group=group, drain=True)
    assert stats.receipts >= EVENTS
    receipts = await conn.fetch(
        """SELECT event_id, source, position, valid FROM flowproof_receipts
           WHERE sink = $1 AND consumer_group = $2 ORDER BY received_at, receipt_id""",
        spec.name,
        group,
    )
    assert all(r["valid"] for r in receipts) and len(receipts) == EVENTS
    position = {c.event_id: (c.destination, c.position) for c in copies}
    assert {r["event_id"]: (r["source"], r["position"]) for r in receipts} == position
    seen: dict[str, int] = {}
    for receipt in receipts:
        aggregate, sequence = emitted[receipt["event_id"]]
        assert sequence > seen.get(aggregate, 0), f"{aggregate} out of order"
        seen[aggregate] = sequence

    # lag and position after: nothing behind, every copy passed
    behind = await _behind(settings, spec, group)
    assert behind == 0
    assert set(await _states(settings, spec, group, copies)) == {State.PASSED}


async def test_an_unreachable_sink_is_reported_on_every_side(
    spec: SinkSpec, settings: Settings
) -> None:
    broken = settings.model_copy(
        update={"sinks": (spec.name,), "verify_timeout_seconds": 5.0, **UNREACHABLE[spec.name]}
    )
    sink = make_sink(broken, spec.name)
    try:
        with pytest.raises(SinkError) as published:
            await sink.start()
        assert published.value.sink == spec.name
    finally:
        await sink.close()

    reader = reader_class(spec.name)(broken, 5.0)
    try:
        with pytest.raises(ComponentUnreachable) as verified:
            await reader.connect()
        assert verified.value.component == spec.component
    finally:
        await reader.close()

    with pytest.raises(ComponentUnreachable) as consumed:
        await consume(broken, sink=spec.name, group="contract", drain=True)
    assert consumed.value.component == spec.component
