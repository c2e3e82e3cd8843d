"""The pieces the performance work (issue 6) added to the relay and the consumers, one by one.

The relay and consumer suites (test_relay_*, test_consumer_*) prove the pipeline still delivers
everything in order through them; these prove each piece keeps its own promise: one encoding
serves every sink and is never stale, pacing never holds a sink back for long, the bulk histogram
observation counts exactly what per-value observations would, the Kafka partition is the one the
Java client and aiokafka's default partitioner choose, the packed XADD is the command
redis-py would send, the relay's side work (gauges, partitions) takes at most a tenth of the
time, and a long-running process's garbage collector leaves its start-up heap alone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import uuid
import weakref

import pytest
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import CollectorRegistry, Histogram
from redis.asyncio.connection import Connection
from structlog.testing import capture_logs

from flowproof.consumers.processing import observe_all
from flowproof.core import heap
from flowproof.publisher.encode_cache import EncodeCache
from flowproof.publisher.encoding import Encoder
from flowproof.publisher.kafka_sink import key_hash
from flowproof.publisher.pacing import Pacing
from flowproof.publisher.redis_sink import xadd_command
from flowproof.publisher.relay import SIDE_WORK_SHARE, side_work_wait
from flowproof.publisher.rows import OutboxRow
from flowproof.schemas.envelope import PAYLOAD_FIELD
from flowproof.schemas.registry import load_registry

REGISTRY = load_registry(None)


def row(seq: int, sequence: int = 1, aggregateid: str = "a-1") -> OutboxRow:
    return OutboxRow(
        seq=seq,
        id=uuid.UUID(int=seq),
        aggregatetype="canary",
        aggregateid=aggregateid,
        type="flowproof.Canary",
        payload=f'{{"run_id": "r", "sequence": {sequence}, "total": 9}}',
        headers=None,
        created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )


def encoders(shared: EncodeCache) -> tuple[Encoder, Encoder]:
    redis = Encoder(REGISTRY, "streams.", 1_000_000, cache=shared, sink="redis")
    kafka = Encoder(REGISTRY, "topics.", 1_000_000, cache=shared, sink="kafka")
    return redis, kafka


def test_one_encoding_serves_both_sinks_with_their_own_destinations() -> None:
    shared = EncodeCache(("redis", "kafka"), capacity=100)
    redis, kafka = encoders(shared)
    first = redis.encode(row(1))
    assert len(shared) == 1
    second = kafka.encode(row(1))
    assert len(shared) == 0  # taken by the only other sink
    assert second.value is first.value and second.fields is first.fields
    assert (first.destination, second.destination) == ("streams.canary", "topics.canary")
    alone = Encoder(REGISTRY, "topics.", 1_000_000).encode(row(1))
    assert (alone.value, alone.fields, alone.key) == (second.value, second.fields, second.key)


def test_a_row_changed_since_it_was_encoded_is_encoded_again() -> None:
    shared = EncodeCache(("redis", "kafka"), capacity=100)
    redis, kafka = encoders(shared)
    before = redis.encode(row(7, sequence=1))
    fixed = kafka.encode(row(7, sequence=2))  # same seq, payload edited (a fixed parked row)
    assert fixed.value != before.value
    assert fixed.value == Encoder(REGISTRY, "x.", 1_000_000).encode(row(7, sequence=2)).value


def test_rows_the_other_sink_has_passed_are_not_kept_and_the_oldest_go_first() -> None:
    shared = EncodeCache(("redis", "kafka"), capacity=3)
    redis, kafka = encoders(shared)
    kafka.encode(row(10))  # kafka claimed up to seq 10 (and keeps it for redis)
    redis.encode(row(5))  # kafka is past it: nothing to keep
    assert len(shared) == 1
    for seq in (11, 12, 13, 14):
        redis.encode(row(seq))
    assert len(shared) == 3  # 10 and 11 went: the capacity holds the newest
    assert shared.get("kafka", row(11)) is None
    assert shared.get("kafka", row(12)) is not None


async def test_pacing_waits_for_a_sink_that_catches_up_and_not_for_one_that_does_not() -> None:
    shared = EncodeCache(("redis", "kafka"), capacity=4)
    pacing = Pacing(shared, stall=0.3)
    redis, kafka = encoders(shared)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def kafka_catches_up() -> None:
        await asyncio.sleep(0.05)
        kafka.encode(row(1))

    with capture_logs() as logs:
        for seq in (1, 2):  # redis is half the capacity ahead of kafka...
            redis.encode(row(seq))
        catching_up = asyncio.create_task(kafka_catches_up())
        started = loop.time()
        await pacing.pace("redis", stop)  # ...so it waits for kafka, which takes one: on it goes
        await catching_up
        assert 0.04 <= loop.time() - started < 0.3

        for seq in (3, 4):
            redis.encode(row(seq))
        started = loop.time()
        await pacing.pace("redis", stop)  # kafka does not move: waited for once, `stall` long...
        assert loop.time() - started >= 0.3
        started = loop.time()
        await pacing.pace("redis", stop)  # ...then left behind: not waited for again
        assert loop.time() - started < 0.05
        assert kafka.encode(row(2)).value  # it takes a shared row: paced with again
        for seq in (5, 6):
            redis.encode(row(seq))
        started = loop.time()
        await pacing.pace("redis", stop)  # waited for again (it does not catch up: `stall`)
        assert loop.time() - started >= 0.3
    events = [entry["event"] for entry in logs]
    assert events == [
        "relay.encoding_unshared",
        "relay.encoding_shared_again",
        "relay.encoding_unshared",
    ]


@pytest.mark.parametrize(
    "values",
    [[], [0.0], [0.001, 0.004, 0.02, 0.3, 7.0, 1e9], [0.005] * 10 + [0.0051, 2.5, 2.5]],
)
def test_bulk_histogram_observation_counts_what_single_observations_count(
    values: list[float],
) -> None:
    buckets = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0)
    one, many = CollectorRegistry(), CollectorRegistry()
    single = Histogram("x_seconds", "x", registry=one, buckets=buckets)
    bulk = Histogram("x_seconds", "x", registry=many, buckets=buckets)
    for value in values:
        single.observe(value)
    observe_all(bulk, values)
    samples = {(s.name, tuple(s.labels.items())): s.value for m in one.collect() for s in m.samples}
    bulk_samples = {
        (s.name, tuple(s.labels.items())): s.value for m in many.collect() for s in m.samples
    }
    created = {key for key in samples if key[0].endswith("_created")}
    assert {k: v for k, v in samples.items() if k not in created} == pytest.approx(
        {k: v for k, v in bulk_samples.items() if k not in created}
    )


@pytest.mark.parametrize("partitions", [1, 3, 12])
def test_the_kafka_partition_is_the_default_partitioners(partitions: int) -> None:
    ordered = list(range(partitions))
    partitioner = DefaultPartitioner()
    for n in range(2000):
        key = f"o-{n:08d}.{n % 7}".encode()
        assert ordered[key_hash(key) % partitions] == partitioner(key, ordered, ordered)


@pytest.mark.parametrize("maxlen", [None, 1000])
def test_the_packed_xadd_is_the_command_redis_py_sends(maxlen: int | None) -> None:
    message = Encoder(REGISTRY, "flowproof.", 1_000_000).encode(row(3))
    args: list[str | bytes] = ["XADD", message.destination]
    if maxlen is not None:
        args += ["MAXLEN", "~", str(maxlen)]
    args.append("*")
    for name, value in message.fields.items():
        args += [name, value]
    args += [PAYLOAD_FIELD, message.value]
    assert xadd_command(message, maxlen) == b"".join(Connection().pack_command(*args))


@pytest.mark.parametrize(
    ("interval", "took", "wait"),
    [(5.0, 0.01, 5.0), (5.0, 0.5, 5.0), (5.0, 1.0, 9.0), (5.0, 2.0, 18.0), (60.0, 3.0, 60.0)],
)
def test_side_work_takes_at_most_a_tenth_of_the_time(
    interval: float, took: float, wait: float
) -> None:
    assert side_work_wait(interval, took) == pytest.approx(wait)
    assert took / (took + side_work_wait(interval, took)) <= SIDE_WORK_SHARE + 1e-9


class _Node:
    me: _Node | None = None


def test_settle_freezes_the_start_up_heap_and_still_collects_cycles() -> None:
    before = gc.get_threshold()
    try:
        heap.settle()
        assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 10_000  # the modules imported so far, never walked again
        node = _Node()
        node.me = node  # a reference cycle made afterwards: only the collector frees it
        gone = weakref.ref(node)
        del node
        assert gone() is not None
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
