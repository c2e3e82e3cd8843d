"""Reading the Kafka side: topics under the prefix, each expected group's offsets, the DLQs.

Per topic, partition and group: end offset minus committed offset (the admin client's offset
fetch and a group-less consumer's end offsets), and the time lag: now minus the timestamp of the
record at the committed offset, fetched for real (not interpolated from offsets and rates).
A group with no committed offset on a partition that holds messages is behind by all of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, NodeNotReadyError

from flowproof.core import metrics
from flowproof.core.config import Settings
from flowproof.core.connect import kafka_client_kwargs
from flowproof.core.errors import ComponentUnreachable
from flowproof.core.logging import get_logger
from flowproof.core.redact import scrub
from flowproof.core.retry import RetryPolicy
from flowproof.core.routing import is_dlq
from flowproof.core.sinks import KAFKA
from flowproof.verifier.lanes import DeadLetters, GroupLanes, Lane, SinkSnapshot
from flowproof.verifier.loss import Copy, PositionReader, State
from flowproof.verifier.sink_reader import GaugeSetter, SinkReader

T = TypeVar("T")
log = get_logger(__name__)

# A broker that just died stays in the cluster's metadata until the controller fences it
# (`broker.session.timeout.ms`, 9 s by default), and the admin client sends each request to a
# broker drawn at random from that metadata, or to the group's coordinator, which stays on the
# dead broker until its offsets partition has a new leader. So a request is asked again while the
# broker it reached is down, for as long as the evaluation's time limit allows: a leader moving is
# seconds of "node not ready", not a failed read. Past the limit the error itself is reported.
NODE_DOWN = (NodeNotReadyError, KafkaConnectionError)
ADMIN_RETRY = RetryPolicy(base=0.1, cap=1.0)


async def ask_again_if_node_down(
    call: Callable[[], Awaitable[T]], what: str, *, within: float
) -> T:
    """`call()`, asked again (ADMIN_RETRY) while the broker it reached is down, at most
    `within` seconds; then the last error is raised."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except NODE_DOWN as exc:
            delay = ADMIN_RETRY.delay(attempt)
            if delay is None or loop.time() + delay >= deadline:
                raise
            log.info("verify.kafka_node_down", request=what, attempt=attempt, error=str(exc))
            await asyncio.sleep(delay)


class KafkaReader:
    """An admin client and a group-less consumer, opened together and closed together."""

    def __init__(self, settings: Settings, timeout: float) -> None:
        kwargs = kafka_client_kwargs(settings)
        request_ms = int(timeout * 1000)
        self.timeout = timeout
        self.admin = AIOKafkaAdminClient(**kwargs, request_timeout_ms=request_ms)
        self.consumer = AIOKafkaConsumer(
            **kwargs,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=request_ms,
            max_partition_fetch_bytes=64 * 1024,
            client_id="flowproof-verify",
        )

    async def _ask(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """`call()`, asked again while its broker is down, within this reader's time limit."""
        return await ask_again_if_node_down(call, what, within=self.timeout)

    async def open(self) -> None:
        """Connect both clients, or raise ComponentUnreachable('kafka') (closing what opened)."""
        try:
            await self.admin.start()
            await self.consumer.start()
        except Exception as exc:  # aiokafka raises many unrelated types on connect
            await self.close()
            raise ComponentUnreachable("kafka", scrub(str(exc)) or type(exc).__name__) from None
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def partitions(self, prefix: str) -> tuple[list[TopicPartition], list[TopicPartition]]:
        """The partitions of the topics under `prefix`: (event topics', dead-letter topics')."""
        topics = await self._ask(self.admin.list_topics, "list_topics")
        names = sorted(t for t in topics if t.startswith(prefix))
        if not names:
            return [], []
        events: list[TopicPartition] = []
        dlqs: list[TopicPartition] = []
        described = await self._ask(lambda: self.admin.describe_topics(names), "describe_topics")
        for topic in described:
            tps = [TopicPartition(topic["topic"], p["partition"]) for p in topic["partitions"]]
            (dlqs if is_dlq(topic["topic"]) else events).extend(sorted(tps))
        return events, dlqs

    async def offsets(
        self, tps: Sequence[TopicPartition]
    ) -> tuple[set[TopicPartition], dict[TopicPartition, int], dict[TopicPartition, int]]:
        """Which of `tps` exist, and their log start and end offsets (verifier.loss)."""
        # Only topics that exist are described: describing one that does not may create it.
        known = set(await self._ask(self.admin.list_topics, "list_topics"))
        topics = sorted({tp.topic for tp in tps} & known)
        existing: set[TopicPartition] = set()
        described = (
            await self._ask(lambda: self.admin.describe_topics(topics), "describe_topics")
            if topics
            else []
        )
        for topic in described:
            if topic.get("error_code", 0) == 0:
                name = topic["topic"]
                existing.update(TopicPartition(name, p["partition"]) for p in topic["partitions"])
        wanted = [tp for tp in tps if tp in existing]
        if not wanted:
            return set(), {}, {}
        begin = await self.consumer.beginning_offsets(wanted)
        end = await self.consumer.end_offsets(wanted)
        return set(wanted), begin, end

    async def committed(self, group: str) -> dict[TopicPartition, int]:
        offsets = await self._ask(
            lambda: self.admin.list_consumer_group_offsets(group), "list_consumer_group_offsets"
        )
        return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

    async def members(self, group: str) -> tuple[int, str]:
        """How many members the group has, and its state (Stable, Empty, Dead...)."""
        responses = await self._ask(
            lambda: self.admin.describe_consumer_groups([group]), "describe_consumer_groups"
        )
        for response in responses:
            for described in response.groups:
                if described[1] == group:
                    return len(described[5]), str(described[2])
        return 0, "Dead"

    async def timestamps_at(
        self, wanted: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        """The timestamp (ms) of the first record at or after each offset, where one exists."""
        found: dict[TopicPartition, int] = {}
        if not wanted:
            return found
        self.consumer.assign(list(wanted))
        for tp, offset in wanted.items():
            self.consumer.seek(tp, offset)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while len(found) < len(wanted) and loop.time() < deadline:
            batch = await self.consumer.getmany(timeout_ms=200, max_records=len(wanted) * 10)
            for tp, records in batch.items():
                if tp not in found and records:
                    found[tp] = records[0].timestamp
                    self.consumer.pause(tp)
        self.consumer.assign([])
        return found


class LazyKafkaOffsets:
    """A KafkaReader opened on first use (only when Kafka events need their positions judged),
    shared by the flow reads of one evaluation, closed by the owner."""

    def __init__(self, settings: Settings, timeout: float) -> None:
        self._settings = settings
        self._timeout = timeout
        self._reader: KafkaReader | None = None
        self._lock = asyncio.Lock()

    async def _open(self) -> KafkaReader:
        async with self._lock:
            if self._reader is None:
                reader = KafkaReader(self._settings, self._timeout)
                await reader.open()
                self._reader = reader
            return self._reader

    async def offsets(
        self, tps: Sequence[TopicPartition]
    ) -> tuple[set[TopicPartition], dict[TopicPartition, int], dict[TopicPartition, int]]:
        reader = await self._open()
        async with self._lock:  # one client, one request at a time
            return await reader.offsets(tps)

    async def committed(self, group: str) -> dict[TopicPartition, int]:
        reader = await self._open()
        async with self._lock:
            return await reader.committed(group)

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.close()


def _lanes_of_group(
    tps: Iterable[TopicPartition],
    *,
    committed: Mapping[TopicPartition, int],
    begin: Mapping[TopicPartition, int],
    end: Mapping[TopicPartition, int],
    stamps: Mapping[TopicPartition, int],
    now: float,
) -> list[Lane]:
    lanes = []
    for tp in tps:
        length = max(0, end[tp] - begin[tp])
        offset = committed.get(tp)
        if offset is None and length == 0:
            continue  # nothing was ever there to consume
        start = offset if offset is not None else begin[tp]
        behind = max(0, end[tp] - max(start, begin[tp]))
        stamp = stamps.get(tp)
        time_lag = max(0.0, now - stamp / 1000) if behind and stamp is not None else 0.0
        lanes.append(
            Lane(
                source=tp.topic,
                partition=tp.partition,
                has_position=offset is not None,
                position=(offset if offset is not None else -1,),
                behind=behind,
                behind_exact=True,
                time_lag=time_lag,
                length=length,
            )
        )
    return lanes


async def kafka_snapshot(
    reader: KafkaReader,
    *,
    prefix: str,
    expected_groups: Sequence[str],
    window_start: float,
    now: float,
) -> SinkSnapshot:
    """Everything the lag and conformance checks need from Kafka, read once."""
    snapshot = SinkSnapshot(sink=KAFKA.name, taken_at=now)
    events, dlqs = await reader.partitions(prefix)
    everything = events + dlqs
    begin: dict[TopicPartition, int] = {}
    end: dict[TopicPartition, int] = {}
    if everything:
        begin = await reader.consumer.beginning_offsets(everything)
        end = await reader.consumer.end_offsets(everything)
    for group in expected_groups:
        committed = await reader.committed(group)
        members, state = await reader.members(group)
        wanted = {
            tp: max(committed.get(tp, begin[tp]), begin[tp])
            for tp in events
            if end[tp] > max(committed.get(tp, begin[tp]), begin[tp])
        }
        stamps = await reader.timestamps_at(wanted)
        entry = GroupLanes(
            sink=KAFKA.name,
            group=group,
            expected=True,
            alive=members > 0,
            liveness=f"group {state} with {members} member{'s' if members != 1 else ''}",
            lanes=_lanes_of_group(
                events, committed=committed, begin=begin, end=end, stamps=stamps, now=now
            ),
        )
        snapshot.groups.append(entry)
    if dlqs:
        since = await reader.consumer.offsets_for_times(
            {tp: int(window_start * 1000) for tp in dlqs}
        )
        by_topic: dict[str, list[int]] = {}
        for tp in dlqs:
            first_in_window: Any = since.get(tp)
            start = first_in_window.offset if first_in_window is not None else end[tp]
            depth, recent = end[tp] - begin[tp], end[tp] - start
            totals = by_topic.setdefault(tp.topic, [0, 0])
            totals[0] += depth
            totals[1] += recent
        for topic, (depth, recent) in sorted(by_topic.items()):
            snapshot.dead_letters.append(DeadLetters(KAFKA.name, topic, depth, recent))
    return snapshot


# --- positions: lost or late (flowproof.verifier.loss) ------------------------------------


class KafkaOffsets(Protocol):
    async def committed(self, group: str) -> dict[TopicPartition, int]: ...

    async def offsets(
        self, tps: Sequence[TopicPartition]
    ) -> tuple[set[TopicPartition], dict[TopicPartition, int], dict[TopicPartition, int]]:
        """The partitions that exist, and their log start and end offsets."""
        ...


class KafkaPositions:
    """Reads a group's committed offsets and the partitions' log start and end offsets."""

    def __init__(self, reader: KafkaOffsets) -> None:
        self._reader = reader

    async def classify(self, group: str, copies: Sequence[Copy]) -> list[State]:
        tps = sorted({TopicPartition(c.destination, c.partition or 0) for c in copies})
        existing, begin, end = await self._reader.offsets(tps)
        committed = await self._reader.committed(group)
        states = []
        for copy in copies:
            tp = TopicPartition(copy.destination, copy.partition or 0)
            offset = int(copy.position.rpartition(":")[2])
            if tp not in existing or offset < begin[tp] or offset >= end[tp]:
                states.append(State.GONE)
            elif tp in committed and offset < committed[tp]:
                states.append(State.PASSED)
            else:
                states.append(State.AHEAD)
        return states


# --- the verifier's reader of Kafka (flowproof.verifier.sinks) ----------------------------


class KafkaSinkReader(SinkReader):
    """Kafka for the verifier: clients opened per evaluation, which doubles as the probe."""

    spec = KAFKA

    def __init__(self, settings: Settings, timeout: float) -> None:
        super().__init__(settings, timeout)
        self._reader: KafkaReader | None = None
        self._offsets: list[LazyKafkaOffsets] = []

    async def connect(self) -> None:
        reader = KafkaReader(self.settings, self.timeout)
        self._reader = reader
        await reader.open()

    async def snapshot(
        self, groups: Sequence[str], *, alive_within: float, window_start: float, now: float
    ) -> SinkSnapshot:
        assert self._reader is not None, "connect() first"
        return await kafka_snapshot(
            self._reader,
            prefix=self.spec.prefix(self.settings),
            expected_groups=groups,
            window_start=window_start,
            now=now,
        )

    def positions(self) -> PositionReader:
        offsets = LazyKafkaOffsets(self.settings, self.timeout)
        self._offsets.append(offsets)
        return KafkaPositions(offsets)

    async def release(self) -> None:
        reader, self._reader = self._reader, None
        offsets, self._offsets = self._offsets, []
        if reader is not None:
            await reader.close()
        for each in offsets:
            await each.close()

    async def close(self) -> None:
        await self.release()

    @staticmethod
    def export(snapshot: SinkSnapshot, gauge: GaugeSetter) -> None:
        for group in snapshot.groups:
            for lane in group.lanes:
                labels = (lane.source, str(lane.partition), group.group)
                gauge(metrics.KAFKA_CONSUMER_LAG, labels, lane.behind)
                gauge(metrics.KAFKA_CONSUMER_LAG_SECONDS, labels, lane.time_lag)
