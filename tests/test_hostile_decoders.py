"""Hostile bytes into the consumers: random and mutated framed values, broken envelopes (control
characters, NUL, invalid UTF-8, dates at the edge of the calendar), missing payloads.

The decoders never raise anything but FrameError with a reason; the per-message processing never
raises at all and gives one receipt per delivery, PostgreSQL-safe; and sent through a real Redis
stream and a real Kafka topic, each hostile message ends as an invalid receipt and a dead letter
with its reason, while the good message after them is receipted valid.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import uuid
from dataclasses import astuple, dataclass, field
from typing import Any

import fastavro
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from flowproof.consumers.app import Consumer
from flowproof.consumers.delivery import Delivery
from flowproof.consumers.options import ConsumerOptions
from flowproof.consumers.processing import BatchOutcome, Processor
from flowproof.consumers.receipts import Receipt
from flowproof.consumers.run import consume
from flowproof.core.config import Settings, Sink
from flowproof.schemas import framing
from flowproof.schemas.envelope import Envelope
from flowproof.schemas.errors import (
    BAD_MAGIC,
    CORRUPT_AVRO,
    ENVELOPE,
    MISROUTED,
    OVERSIZED,
    TYPE_MISMATCH,
    UNKNOWN_SCHEMA,
    FrameError,
)
from tests.test_consumer_support import create_topics, group_name, read_topic, receipts
from tests.test_hostile_support import (
    ENVELOPE_FIELDS,
    REGISTRY,
    bounded,
    envelope_for,
    framed,
    hostile_envelope,
    hostile_field_values,
    hostile_values,
    mutated_bytes,
    sample,
)

FRAME_REASONS = {BAD_MAGIC, UNKNOWN_SCHEMA, CORRUPT_AVRO}
INVALID_REASONS = FRAME_REASONS | {ENVELOPE, OVERSIZED, TYPE_MISMATCH, MISROUTED}
PREFIX = "h."


# --- the decoders, alone --------------------------------------------------------------------------


@bounded(250)
@given(hostile_values)
def test_framing_decode_gives_a_record_of_the_schema_or_a_frame_error(data: bytes) -> None:
    try:
        writer, datum = framing.decode(REGISTRY, data)
    except FrameError as exc:
        assert exc.reason in FRAME_REASONS, exc
        assert str(exc)
        return
    reader = REGISTRY.latest(writer.event_type)
    assert fastavro.validation.validate(datum, reader.parsed, raise_errors=False)


@bounded(60)
@given(framed())
def test_valid_frames_decode_to_what_was_written(pair: tuple[Any, bytes]) -> None:
    version, data = pair
    writer, datum = framing.decode(REGISTRY, data, reader=version)
    assert writer is version
    assert framing.encode(version, datum) == data


def _valid_wire_fields() -> dict[str, bytes]:
    return envelope_for(REGISTRY.latest("orders.OrderPlaced")).wire_fields()


@bounded(250)
@given(hostile_envelope(_valid_wire_fields()))
def test_envelope_from_wire_gives_an_envelope_or_an_envelope_error(
    fields: dict[str, bytes],
) -> None:
    try:
        envelope = Envelope.from_wire(fields)
    except FrameError as exc:
        assert exc.reason == ENVELOPE
        assert any(f"'{name}'" in str(exc) for name in ENVELOPE_FIELDS), exc
        return
    # What parsed must survive the trip back to the wire (the relay and the DLQ write it).
    assert Envelope.from_wire(envelope.wire_fields()) == envelope
    assert envelope.created_at.tzinfo is not None


_ANY_HEADER_NAME = st.one_of(
    st.sampled_from(ENVELOPE_FIELDS),
    st.sampled_from(ENVELOPE_FIELDS).map(str.encode),
    st.text(max_size=5),
    st.binary(max_size=5),  # Redis field names as redis-py returns them
)


@st.composite
def header_mappings(draw: st.DrawFn) -> dict[str | bytes, bytes | None]:
    """A valid envelope's fields, each named as str or bytes, with other headers put before,
    between or after them: other names, or the envelope's names again with hostile values (so
    some mappings parse and some do not)."""
    entries: list[tuple[str | bytes, bytes | None]] = [
        (name.encode() if draw(st.booleans()) else name, value)
        for name, value in _valid_wire_fields().items()
    ]
    extra = st.tuples(_ANY_HEADER_NAME, st.one_of(hostile_field_values, st.none()))
    for item in draw(st.lists(extra, max_size=6)):
        entries.insert(draw(st.integers(0, len(entries))), item)
    return dict(entries)


@bounded(120)
@given(header_mappings())
def test_envelope_from_wire_takes_any_header_mapping(
    fields: dict[str | bytes, bytes | None],
) -> None:
    # What the parser must have read: the first value of each envelope field, whichever type
    # its name had (Kafka headers are str, redis-py's field names bytes).
    first: dict[str, bytes | None] = {}
    for key, raw in fields.items():
        name = key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else key
        first.setdefault(name, raw)
    try:
        envelope = Envelope.from_wire(fields)  # type: ignore[arg-type]
    except FrameError as exc:
        assert exc.reason == ENVELOPE
        assert any(f"'{name}'" in str(exc) for name in ENVELOPE_FIELDS), exc
        return
    # Parsed: every text field is exactly the first header of its name, and the whole survives
    # the trip back to the wire.
    for name in ("type", "aggregatetype", "aggregateid"):
        raw = first.get(name)
        assert raw is not None and getattr(envelope, name) == raw.decode(), (name, first)
    raw_id = first.get("id")
    assert raw_id is not None and uuid.UUID(raw_id.decode()) == envelope.id
    assert Envelope.from_wire(envelope.wire_fields()) == envelope


# --- the per-message processing -------------------------------------------------------------------


@functools.cache
def _processor(sink: Sink, prefix: str = PREFIX) -> Processor:
    """A consumer's processing as `consume(..., max_message_bytes=4096)` runs it."""
    settings = Settings(stream_prefix=prefix, topic_prefix=prefix)
    options = ConsumerOptions.from_settings(
        settings, sink=sink, group="hostile", name="hostile-1", max_message_bytes=4096
    )
    return Processor(Consumer(REGISTRY), options)


@dataclass
class Hostile:
    """One message as a test sends it: Redis fields or Kafka headers, value and key."""

    headers: list[tuple[str, bytes]]
    value: bytes | None
    key: bytes | None = None
    expected: str | None = "?"  # the reason it must get, None when valid, "?" when unknown
    note: str = ""
    raw_names: dict[str, bytes] = field(default_factory=dict)  # Redis field names as bytes
    position: str = ""  # where it landed: Redis entry id or "<partition>:<offset>"

    def redis_fields(self) -> dict[bytes, bytes]:
        fields = {self.raw_names.get(k, k.encode()): v for k, v in self.headers}
        if self.value is not None:
            fields[b"payload"] = self.value
        return fields

    def delivery(self, sink: str, source: str, position: str = "0-1") -> Delivery:
        headers = self.headers
        if sink == "redis":  # as the consumer reads them back: names with surrogateescape
            headers = [
                (name.decode("utf-8", "surrogateescape"), value)
                for name, value in self.redis_fields().items()
                if name != b"payload"
            ]
        return Delivery(
            source=source,
            position=position,
            headers=tuple(headers),
            value=self.value,
            received_at=dt.datetime.now(dt.UTC),
            key=self.key if sink == "kafka" else None,
        )


def _good(aggregatetype: str = "orders") -> Hostile:
    version = REGISTRY.latest("orders.OrderPlaced")
    envelope = envelope_for(version, aggregatetype)
    payload = {
        "order_id": "o-1",
        "customer_id": "c-1",
        "currency": "EUR",
        "total_cents": 100,
        "lines": [],
    }
    value = framing.encode(version, version.validate(payload))
    return Hostile(
        list(envelope.wire_fields().items()), value, envelope.aggregateid.encode(), expected=None
    )


@st.composite
def hostile_message(draw: st.DrawFn, *, kafka: bool) -> Hostile:
    """A message whose value, envelope, key (or all) may be broken."""
    version, value = draw(framed())
    envelope = envelope_for(version)
    fields = envelope.wire_fields()
    broken = draw(st.sampled_from(["value", "envelope", "both", "none_value"]))
    if broken in ("value", "both"):
        value = draw(st.one_of(hostile_values, mutated_bytes(st.just(value))))
    if broken in ("envelope", "both"):
        fields = draw(hostile_envelope(fields))
    headers: list[tuple[str, bytes]] = []
    raw_names: dict[str, bytes] = {}
    for name, raw in fields.items():
        headers.append((name, raw))
    if draw(st.booleans()):  # an extra field, its name maybe not UTF-8 (Redis) or odd (Kafka)
        raw_name = draw(st.one_of(st.binary(min_size=1, max_size=6), st.just(b"\xff\xfe")))
        name = raw_name.decode("utf-8", "replace") if kafka else f"x-{len(raw_names)}-{raw_name!r}"
        if not kafka:
            raw_names[name] = raw_name
        if name != "payload":
            headers.append((name, draw(hostile_field_values)))
    key = envelope.aggregateid.encode()
    if kafka and draw(st.booleans()):
        key = draw(st.one_of(st.none(), st.binary(max_size=8)))
    value_or_none = None if broken == "none_value" else value
    if kafka and value_or_none is None and key is None:
        key = b""  # aiokafka sends no message without both
    return Hostile(headers, value_or_none, key, raw_names=raw_names)


async def _verdict(sink: Sink, message: Hostile, source: str, prefix: str = PREFIX) -> Receipt:
    outcome = await _processor(sink, prefix).process([message.delivery(sink, source)])
    _check_outcome(outcome)
    return outcome.receipts[0]


def _judge(sink: Sink, message: Hostile, source: str) -> Receipt:
    return asyncio.run(_verdict(sink, message, source))


def _check_outcome(outcome: BatchOutcome) -> None:
    assert outcome.deliveries == len(outcome.receipts) == 1
    receipt = outcome.receipts[0]
    if receipt.valid:
        assert receipt.reason is None and not outcome.dead_letters
        assert receipt.event_id is not None and receipt.created_at is not None
    else:
        assert receipt.reason in INVALID_REASONS, receipt
        assert receipt.error and receipt.dead_letter_reason == receipt.reason
        [letter] = outcome.dead_letters
        assert letter.reason == receipt.reason and letter.error
        for name, value in letter.annotations("hostile", "hostile-1"):
            assert name.startswith("dlq_") and isinstance(value, bytes)
    # Every value of the receipt must go into PostgreSQL: text without NUL, valid UTF-8; times
    # with a zone that are instants in UTC (the driver converts them).
    for value in astuple(receipt):
        if isinstance(value, str):
            assert "\x00" not in value
            value.encode("utf-8")
        elif isinstance(value, dt.datetime):
            assert value.tzinfo is not None
            value.astimezone(dt.UTC)


@bounded(150)
@given(hostile_message(kafka=False))
def test_redis_processing_never_raises_and_receipts_every_message(message: Hostile) -> None:
    _judge("redis", message, f"{PREFIX}orders")


@bounded(150)
@given(hostile_message(kafka=True))
def test_kafka_processing_never_raises_and_receipts_every_message(message: Hostile) -> None:
    _judge("kafka", message, f"{PREFIX}orders")


# --- through the real services --------------------------------------------------------------------


def _explicit(kafka: bool) -> list[Hostile]:
    """Cases each with the reason it must get."""
    cases: list[Hostile] = []

    def variant(note: str, expected: str | None, **changes: bytes | None) -> None:
        good = _good()
        headers = [(k, v) for k, v in good.headers if k not in changes]
        headers += [(k, v) for k, v in changes.items() if v is not None]
        key = changes["aggregateid"] if kafka and changes.get("aggregateid") else good.key
        cases.append(Hostile(headers, good.value, key, expected=expected, note=note))

    variant("id not UTF-8", ENVELOPE, id=b"\xff\xfe")
    variant("type with a control", ENVELOPE, type=b"orders.Order\x1bPlaced")
    variant("created_at before year 1 in UTC", ENVELOPE, created_at=b"0001-01-01T00:00:00+14:00")
    variant("created_at after 9999 in UTC", ENVELOPE, created_at=b"9999-12-31T23:59:59-14:00")
    variant("created_at naive", ENVELOPE, created_at=b"2024-01-01T00:00:00")
    variant("aggregatetype with NUL", MISROUTED, aggregatetype=b"orders\x00")
    variant("aggregatetype not UTF-8", ENVELOPE, aggregatetype=b"ord\xffers")
    variant("traceparent not UTF-8", ENVELOPE, traceparent=b"\xc3")
    variant("aggregateid with NUL and controls", None, aggregateid=b"a\x00b\x01\x1b[31m")
    variant("aggregateid not UTF-8", ENVELOPE, aggregateid=b"\xed\xa0\x80")
    good = _good()
    cases.append(Hostile(good.headers, None, good.key, expected=BAD_MAGIC, note="no payload"))
    cases.append(Hostile(good.headers, b"", good.key, expected=BAD_MAGIC, note="empty payload"))
    cases.append(Hostile(good.headers, b"\x01" + (good.value or b"")[1:], good.key, BAD_MAGIC))
    assert good.value is not None
    cases.append(Hostile(good.headers, good.value[:-1], good.key, CORRUPT_AVRO, "cut short"))
    cases.append(
        Hostile(good.headers, b"\x00\x7f\xff\xff\xfe" + good.value[5:], good.key, UNKNOWN_SCHEMA)
    )
    paid = REGISTRY.latest("orders.OrderPaid")
    paid_value = framing.encode(
        paid,
        paid.validate({"order_id": "o", "payment_id": "p", "amount_cents": 1, "method": "CARD"}),
    )
    cases.append(Hostile(good.headers, paid_value, good.key, TYPE_MISMATCH, "OrderPaid bytes"))
    cases.append(Hostile(good.headers, good.value + b"\x00" * 5000, good.key, OVERSIZED))
    if not kafka:
        extra = _good()
        extra.headers.append(("odd", b"\xff"))
        extra.raw_names["odd"] = b"\xff\x00name"
        extra.note, extra.expected = "field name not UTF-8", None
        cases.append(extra)
    return cases


def _messages(kafka: bool, count: int) -> list[Hostile]:
    return [*_explicit(kafka), *sample(hostile_message(kafka=kafka), count)]


async def _check_run(
    sink: Sink,
    messages: list[Hostile],
    rows: dict[str, Any],
    letters: dict[str, Any],
    prefix: str,
) -> None:
    """Each message: one receipt with the verdict of the pure processing (and the explicit
    reason); invalid ones, and only they, have a dead letter with that reason."""
    invalid = 0
    source = f"{prefix}orders"
    for position, message in messages_by_position(messages).items():
        row = rows[position]
        expected = await _verdict(sink, message, source, prefix)
        assert (row["valid"], row["reason"]) == (expected.valid, expected.reason), (
            message.note,
            row["error"],
        )
        if message.expected != "?":
            assert row["reason"] == message.expected, (message.note, row["error"])
        if row["valid"]:
            assert position not in letters
            continue
        invalid += 1
        assert row["error"] and row["dead_letter_reason"] == row["reason"]
        assert letters[position]["reason"] == row["reason"], message.note
        assert letters[position]["error"]
        assert letters[position]["value"] == message.value
    assert len(letters) == invalid
    assert invalid >= len(messages) // 2  # most hostile messages are invalid
    reasons = {row["reason"] for row in rows.values()}
    assert reasons >= INVALID_REASONS, INVALID_REASONS - reasons  # every kind was met


def messages_by_position(messages: list[Hostile]) -> dict[str, Hostile]:
    return {m.position: m for m in messages}


async def test_hostile_redis_entries_end_as_dead_letters_and_good_ones_still_flow(
    settings: Settings, database_url: str, redis_client: aioredis.Redis, name_prefix: str
) -> None:
    stream = f"{name_prefix}orders"
    messages = _messages(kafka=False, count=40)
    before, after = _good(), _good()
    for message in [before, *messages, after]:
        entry = await redis_client.xadd(stream, message.redis_fields())  # type: ignore[arg-type]
        message.position = entry.decode()

    stats = await consume(
        settings, sink="redis", group=group_name(), drain=True, max_message_bytes=4096
    )

    rows = {r["position"]: r for r in await receipts(database_url)}
    assert len(rows) == len(messages) + 2
    assert rows[before.position]["valid"] and rows[after.position]["valid"]
    letters = {}
    for _, fields in await redis_client.xrange(f"{stream}.dlq"):
        letters[fields[b"dlq_position"].decode()] = {
            "reason": fields[b"dlq_reason"].decode(),
            "error": fields[b"dlq_error"],
            "value": fields.get(b"payload"),
        }
        original = messages_by_position(messages)[fields[b"dlq_position"].decode()]
        for name, value in original.redis_fields().items():
            assert fields[name] == value  # the original fields, byte for byte
    await _check_run("redis", messages, rows, letters, name_prefix)
    assert stats.received == len(messages) + 2


async def test_hostile_kafka_messages_end_as_dead_letters_and_good_ones_still_flow(
    settings: Settings, database_url: str, kafka_admin: AIOKafkaAdminClient, name_prefix: str
) -> None:
    topic = f"{name_prefix}orders"
    await create_topics(kafka_admin, topic, f"{topic}.dlq", partitions=1)
    messages = _messages(kafka=True, count=40)
    before, after = _good(), _good()
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        for offset, message in enumerate([before, *messages, after]):
            await producer.send_and_wait(
                topic, value=message.value, key=message.key, headers=message.headers
            )
            message.position = f"0:{offset}"
    finally:
        await producer.stop()
    group = group_name()

    stats = await consume(settings, sink="kafka", group=group, drain=True, max_message_bytes=4096)

    rows = {r["position"]: r for r in await receipts(database_url)}
    assert len(rows) == len(messages) + 2
    assert rows["0:0"]["valid"] and rows[f"0:{len(messages) + 1}"]["valid"]
    letters = {}
    for letter in await read_topic(settings.kafka_bootstrap_servers, f"{topic}.dlq"):
        headers = dict(letter.headers)
        position = headers["dlq_position"].decode()
        letters[position] = {
            "reason": headers["dlq_reason"].decode(),
            "error": headers["dlq_error"],
            "value": letter.value,
        }
        original = messages_by_position(messages)[position]
        assert letter.key == original.key
        assert [h for h in letter.headers if not h[0].startswith("dlq_")] == original.headers
    await _check_run("kafka", messages, rows, letters, name_prefix)
    offsets = await kafka_admin.list_consumer_group_offsets(group)
    assert offsets[TopicPartition(topic, 0)].offset == len(messages) + 2
    assert stats.received == len(messages) + 2


def test_uuid_of_receipts_is_none_for_broken_ids() -> None:
    good = _good()
    broken = Hostile(
        [(k, b"not-a-uuid" if k == "id" else v) for k, v in good.headers], good.value, good.key
    )
    receipt = _judge("redis", broken, f"{PREFIX}orders")
    assert receipt.event_id is None and receipt.reason == ENVELOPE
    ok = _judge("redis", good, f"{PREFIX}orders")
    assert isinstance(ok.event_id, uuid.UUID) and ok.valid


async def test_streams_under_the_prefix_that_no_relay_can_write_are_left_alone(
    settings: Settings, database_url: str, redis_client: aioredis.Redis, name_prefix: str
) -> None:
    """Redis keys are binary: a stream under the prefix may be called anything, even names no
    aggregatetype gives (invalid UTF-8, NUL, spaces). The consumer must neither crash on such a
    name nor write receipts PostgreSQL refuses; it leaves them alone, saying so once."""
    good = _good()
    await redis_client.xadd(f"{name_prefix}orders", good.redis_fields())  # type: ignore[arg-type]
    odd = [b"\xff\xfe", b"a\x00b", b"with space", b"\xed\xa0\x80"]
    for suffix in odd:
        await redis_client.xadd(name_prefix.encode() + suffix, good.redis_fields())  # type: ignore[arg-type]

    with capture_logs() as logs:
        async with asyncio.timeout(30):
            stats = await consume(settings, sink="redis", group=group_name(), drain=True)
            again = await consume(settings, sink="redis", group=group_name(), drain=True)

    rows = await receipts(database_url)
    assert [(r["source"], r["valid"]) for r in rows] == [(f"{name_prefix}orders", True)] * 2
    assert stats.received == again.received == 1
    ignored = [e for e in logs if e["event"] == "consumer.stream_ignored"]
    assert len(ignored) == 2 * len(odd)
