"""Hostile payloads into the outbox: random JSON against each schema, control characters and
invalid text, very large events, and raw rows written by plain SQL.

`Outbox.check` / `emit` either accept an event, and then it encodes and decodes back equal under
its schema, or raise a ContractError naming the field, with nothing written and the caller's
transaction still usable. Raw rows go through the real relay: each is published (and decodes
valid, and the real consumers receipt it valid) or parked with a reason; none is published
invalid, none is dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import subprocess
import sys
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient
from hypothesis import given
from hypothesis import strategies as st

from flowproof.consumers.run import consume
from flowproof.core.config import Settings
from flowproof.core.routing import InvalidDestination
from flowproof.publisher.encoding import Encoder
from flowproof.publisher.errors import EnvelopeInvalid
from flowproof.publisher.outbox import Outbox
from flowproof.publisher.relay import Relay
from flowproof.publisher.rows import OutboxRow
from flowproof.schemas import framing
from flowproof.schemas.envelope import Envelope
from flowproof.schemas.errors import ContractError, PayloadInvalid, UnknownEventType
from flowproof.schemas.payload import collect_named
from flowproof.schemas.registry import SchemaVersion
from tests.readback import Delivered, read_stream, read_topic
from tests.test_consumer_support import group_name, receipts
from tests.test_hostile_support import (
    EVENT_TYPES,
    HOSTILE_NAMES,
    REGISTRY,
    as_json,
    bounded,
    candidate_fields,
    fitting_payload,
    mutated,
    nasty_text,
    random_json,
    same_under_schema,
    sample,
    storable_text,
)

LATEST = [REGISTRY.latest(t) for t in EVENT_TYPES]
PARK_REASONS = {"unknown_type", "payload_invalid", "envelope", "bad_destination", "oversized"}
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
OUTBOX = Outbox(REGISTRY)


def _round_trips(version: SchemaVersion, row: OutboxRow, payload: Any) -> None:
    """The accepted row encodes, and decodes back to the payload under its schema."""
    message = Encoder(REGISTRY, "flowproof.", 1_000_000).encode(row)
    writer, datum = framing.decode(REGISTRY, message.value, reader=version)
    assert writer is version
    assert same_under_schema(version.parsed, datum, payload, collect_named(version.parsed)), (
        datum,
        payload,
    )
    assert Envelope.from_wire(message.fields).id == row.id


def _storable(value: Any) -> bool:
    """Whether PostgreSQL takes this JSON value (jsonb refuses NUL; UTF-8 refuses surrogates)."""
    if isinstance(value, str):
        return "\x00" not in value and not any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, list):
        return all(_storable(v) for v in value)
    if isinstance(value, dict):
        return all(_storable(k) and _storable(v) for k, v in value.items())
    return True


# --- Outbox.check, alone --------------------------------------------------------------------------


@st.composite
def fitting_event(draw: st.DrawFn) -> tuple[SchemaVersion, dict[str, Any]]:
    version = draw(st.sampled_from(LATEST))
    return version, draw(fitting_payload(version))


@bounded(150)
@given(fitting_event())
def test_payloads_that_fit_are_accepted_and_decode_back_equal(
    event: tuple[SchemaVersion, dict[str, Any]],
) -> None:
    version, payload = event
    row = OUTBOX.check(
        type=version.event_type, aggregate_type="orders", aggregate_id="a-1", payload=payload
    )
    assert json.loads(row.payload) == payload
    _round_trips(version, row, payload)


@st.composite
def hostile_event(draw: st.DrawFn) -> tuple[SchemaVersion, Any]:
    version = draw(st.sampled_from(LATEST))
    payload = draw(
        st.one_of(
            mutated(fitting_payload(version)),
            mutated(mutated(fitting_payload(version))),
            random_json,
        )
    )
    return version, payload


def _check_verdict(version: SchemaVersion, payload: Any) -> OutboxRow | None:
    """Check `payload`; the row when accepted (and then it round-trips), None when refused with
    a PayloadInvalid that names a field of the payload or of the schema."""
    try:
        row = OUTBOX.check(
            type=version.event_type, aggregate_type="orders", aggregate_id="a-1", payload=payload
        )
    except PayloadInvalid as exc:
        assert exc.event_type == version.event_type
        assert exc.problem and repr(exc.field) in str(exc)
        if isinstance(payload, dict) and as_json(payload) is not None and "" not in payload:
            assert exc.field in candidate_fields(version.parsed, payload), exc
        elif not isinstance(payload, dict) or as_json(payload) is None:
            assert exc.field == "<payload>", exc
        return None
    assert _storable(json.loads(row.payload))
    _round_trips(version, row, payload)
    return row


@bounded(300)
@given(hostile_event())
def test_random_and_mutated_payloads_are_accepted_whole_or_refused_naming_the_field(
    event: tuple[SchemaVersion, Any],
) -> None:
    _check_verdict(*event)


@st.composite
def nasty_event(draw: st.DrawFn) -> tuple[SchemaVersion, Any]:
    """A fitting payload with control characters, NUL or lone surrogates in one of its strings."""
    version = draw(st.sampled_from(LATEST))
    payload = draw(fitting_payload(version))
    strings = [f["name"] for f in version.parsed["fields"] if f["type"] == "string"]
    if strings:
        payload[draw(st.sampled_from(strings))] = draw(nasty_text)
    return version, payload


@bounded(120)
@given(nasty_event())
def test_text_postgresql_cannot_store_is_refused_naming_the_field(
    event: tuple[SchemaVersion, Any],
) -> None:
    version, payload = event
    row = _check_verdict(version, payload)
    assert (row is not None) == _storable(payload)


@bounded(200)
@given(
    aggregate_type=st.one_of(st.sampled_from(["orders", *HOSTILE_NAMES]), nasty_text),
    aggregate_id=st.one_of(storable_text, nasty_text, st.sampled_from(HOSTILE_NAMES)),
    headers=st.one_of(
        st.none(),
        st.just({"traceparent": TRACEPARENT}),
        st.dictionaries(st.one_of(storable_text, nasty_text), st.one_of(random_json, nasty_text)),
        st.fixed_dictionaries({"traceparent": st.one_of(random_json, nasty_text)}),
    ),
)
def test_hostile_envelope_values_are_accepted_storable_or_refused_naming_the_field(
    aggregate_type: str, aggregate_id: str, headers: dict[str, Any] | None
) -> None:
    payload = {"run_id": "r", "sequence": 1, "total": 1}
    try:
        row = OUTBOX.check(
            type="flowproof.Canary",
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            payload=payload,
            headers=headers,
        )
    except EnvelopeInvalid as exc:
        assert exc.field in {"aggregatetype", "aggregateid", "traceparent", "headers"}, exc
        return
    except InvalidDestination as exc:
        assert repr(aggregate_type) in str(exc)
        return
    assert _storable(row.aggregateid) and _storable(row.aggregatetype)
    assert row.headers is None or _storable(json.loads(row.headers))
    _round_trips(REGISTRY.latest("flowproof.Canary"), row, payload)


def test_values_json_cannot_carry_are_refused_before_anything_else() -> None:
    deep: Any = {}
    for _ in range(5000):
        deep = {"x": deep}
    circular: dict[str, Any] = {}
    circular["self"] = circular
    for payload in [
        {"run_id": float("nan")},
        {"run_id": float("inf")},
        {"run_id": object()},
        {"run_id": b"bytes"},
        {"sequence": 10**5000},
        deep,
        circular,
    ]:
        with pytest.raises(PayloadInvalid) as caught:
            OUTBOX.check(
                type="flowproof.Canary", aggregate_type="a", aggregate_id="b", payload=payload
            )
        assert caught.value.field == "<payload>" and "is not JSON" in str(caught.value)
    with pytest.raises(EnvelopeInvalid) as refused:
        OUTBOX.check(
            type="flowproof.Canary",
            aggregate_type="a",
            aggregate_id="b",
            payload={"run_id": "r", "sequence": 1, "total": 1},
            headers=deep,
        )
    assert refused.value.field == "headers"


def test_unknown_types_are_refused_by_name() -> None:
    for event_type in ["nope.Missing", "", "orders.OrderPlaced\x00", "a b", "flowproof.canary"]:
        with pytest.raises(UnknownEventType) as caught:
            OUTBOX.check(type=event_type, aggregate_type="a", aggregate_id="b", payload={})
        assert caught.value.event_type == event_type


# --- emit, into a real PostgreSQL -----------------------------------------------------------------


async def _count(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM flowproof_outbox")
    return count


async def test_emit_refuses_what_postgresql_cannot_store_and_the_transaction_goes_on(
    conn: asyncpg.Connection,
) -> None:
    payload = {"run_id": "r", "sequence": 1, "total": 1}
    bad: list[tuple[str, dict[str, Any], type[ContractError], str]] = [
        ("a-1", {**payload, "note": "nul \x00 here"}, PayloadInvalid, "note"),
        ("a-1", {**payload, "run_id": "\x00"}, PayloadInvalid, "run_id"),
        ("a-1", {**payload, "note": "lone \ud800"}, PayloadInvalid, "note"),
        ("nul\x00id", payload, EnvelopeInvalid, "aggregateid"),
        ("surrogate\udcffid", payload, EnvelopeInvalid, "aggregateid"),
    ]
    for text in sample(nasty_text.filter(lambda s: not _storable(s)), 10):
        bad.append(("a-1", {**payload, "note": text}, PayloadInvalid, "note"))
        bad.append((text, payload, EnvelopeInvalid, "aggregateid"))
    async with conn.transaction():
        for aggregate_id, body, error, name in bad:
            with pytest.raises(error) as caught:
                await OUTBOX.emit(
                    conn,
                    type="flowproof.Canary",
                    aggregate_type="canary",
                    aggregate_id=aggregate_id,
                    payload=body,
                )
            assert caught.value.field == name  # type: ignore[attr-defined]
        for headers in [{"x": "\x00"}, {"\x00": "x"}, {"x": ["\ud800"]}]:
            with pytest.raises(EnvelopeInvalid) as caught_headers:
                await OUTBOX.emit(
                    conn,
                    type="flowproof.Canary",
                    aggregate_type="canary",
                    aggregate_id="a-1",
                    payload=payload,
                    headers=headers,
                )
            assert caught_headers.value.field == "headers"
        # Nothing was written, and the transaction is still usable.
        assert await _count(conn) == 0
        await OUTBOX.emit(
            conn,
            type="flowproof.Canary",
            aggregate_type="canary",
            aggregate_id="a-1",
            payload={**payload, "note": "tab\there, escape \x1b[31m, bell \x07, line\u2028sep"},
        )
    assert await _count(conn) == 1


async def test_emitted_fitting_and_hostile_payloads_flow_valid_or_are_refused(
    settings: Settings,
    conn: asyncpg.Connection,
    database_url: str,
    redis_client: aioredis.Redis,
    kafka_admin: AIOKafkaAdminClient,
) -> None:
    """A sample of fitting and hostile payloads through emit, the relay and both consumers: what
    emit accepted arrives valid everywhere, what it refused was never written."""
    events = sample(st.one_of(fitting_event(), hostile_event(), nasty_event()), 60)
    accepted: dict[uuid.UUID, tuple[SchemaVersion, Any]] = {}
    for i, (version, payload) in enumerate(events):
        async with conn.transaction():
            try:
                event_id = await OUTBOX.emit(
                    conn,
                    type=version.event_type,
                    aggregate_type="orders",
                    aggregate_id=f"a-{i}",
                    payload=payload,
                )
            except ContractError:
                continue
        accepted[event_id] = (version, payload)
    assert await _count(conn) == len(accepted)
    assert len(accepted) >= 10  # the sample holds fitting payloads too

    await Relay(settings, registry=REGISTRY).run_until_idle()

    for sink, messages in (await _published(settings, redis_client, "orders")).items():
        assert len(messages) == len(accepted), sink
        for message in messages:
            version, payload = accepted[uuid.UUID(message.event_id)]
            _, datum = framing.decode(REGISTRY, message.value, reader=version)
            assert same_under_schema(version.parsed, datum, payload, collect_named(version.parsed))
    await _consume_both(settings)
    rows = await receipts(database_url)
    assert len(rows) == 2 * len(accepted)
    assert all(r["valid"] for r in rows), [r["error"] for r in rows if not r["valid"]]


def test_emit_from_the_command_line_with_a_nul_exits_2_naming_the_field(
    settings_env: dict[str, str],
) -> None:
    payload = json.dumps({"run_id": "\u0000", "sequence": 1, "total": 1})
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flowproof",
            "emit",
            "--type",
            "flowproof.Canary",
            "--aggregate-type",
            "canary",
            "--aggregate-id",
            "a-1",
            "--payload",
            payload,
        ],
        env=settings_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "run_id" in done.stderr and "NUL" in done.stderr
    assert "Traceback" not in done.stderr


# --- raw rows by plain SQL, through the real relay ------------------------------------------------


@dataclass
class RawRow:
    aggregatetype: str
    aggregateid: str
    type: str
    payload: str  # JSON text
    headers: str | None = None
    created_at: str | None = None  # default: the database's clock
    fits: bool = False  # built to be publishable
    reason: str | None = None  # the park reason it must get (SPECIAL rows)


GOOD_CANARY = json.dumps({"run_id": "r", "sequence": 1, "total": 1})


@st.composite
def raw_row(draw: st.DrawFn) -> RawRow:
    """A row as an application might write it by SQL: fitting, or with some of its payload,
    type, aggregatetype and headers broken."""
    version = draw(st.sampled_from(LATEST))
    broken = (
        set()
        if draw(st.booleans())
        else draw(
            st.sets(st.sampled_from(["payload", "type", "aggregatetype", "headers"]), min_size=1)
        )
    )
    payload: Any = draw(
        hostile_event().map(lambda e: e[1]) if "payload" in broken else fitting_payload(version)
    )
    event_type = version.event_type
    if "type" in broken:
        event_type = draw(st.sampled_from(["nope.Missing", "orders", "", "orders.OrderPlaced "]))
    aggregatetype = "orders"
    if "aggregatetype" in broken:
        aggregatetype = draw(st.sampled_from(HOSTILE_NAMES))
    headers = draw(st.sampled_from([None, json.dumps({"traceparent": TRACEPARENT})]))
    if "headers" in broken:
        headers = draw(
            st.one_of(
                st.dictionaries(storable_text, random_json, min_size=1, max_size=3),
                st.fixed_dictionaries({"traceparent": random_json}),
            ).map(json.dumps)
        )
    return RawRow(aggregatetype, "", event_type, json.dumps(payload), headers, fits=not broken)


CANARY = "flowproof.Canary"
SHIPPED = "orders.OrderShipped"


def _shipped(at: object) -> str:
    return json.dumps({"order_id": "o", "carrier": "c", "tracking_number": "t", "shipped_at": at})


# Rows with the fate each must have (None: published); some once stopped the relay for good
# (1e5000, deep nesting, a created_at Python cannot hold) or were published unreadable.
SPECIAL = [
    RawRow(
        "orders",
        "",
        CANARY,
        '{"run_id": "r", "sequence": 1e5000, "total": 1}',
        reason="payload_invalid",
    ),
    RawRow("orders", "", CANARY, "[" * 2000 + "]" * 2000, reason="payload_invalid"),
    RawRow(
        "orders",
        "",
        CANARY,
        GOOD_CANARY,
        '{"a": ' + "[" * 2000 + "]" * 2000 + "}",
        reason="envelope",
    ),
    RawRow(
        "orders", "", CANARY, GOOD_CANARY, created_at="20000-01-01T00:00:00Z", reason="envelope"
    ),
    RawRow(
        "orders", "", CANARY, GOOD_CANARY, created_at="4713-01-01 00:00:00+00 BC", reason="envelope"
    ),
    RawRow("orders", "", CANARY, GOOD_CANARY, created_at="infinity", reason="envelope"),
    RawRow("orders", "", CANARY, GOOD_CANARY, created_at="0500-06-01T00:00:00Z", fits=True),
    RawRow("orders", "", CANARY, GOOD_CANARY, created_at="9999-12-31T23:59:59Z", fits=True),
    RawRow("orders", "", CANARY, '"just a string"', reason="payload_invalid"),
    RawRow("orders", "", CANARY, "null", reason="payload_invalid"),
    RawRow(
        "orders",
        "",
        CANARY,
        '{"run_id": "r", "sequence": 1.5, "total": 1}',
        reason="payload_invalid",
    ),
    RawRow(
        "orders",
        "",
        CANARY,
        '{"run_id": "r", "sequence": 9223372036854775808, "total": 1}',
        reason="payload_invalid",
    ),
    RawRow("orders", "", SHIPPED, _shipped(2**62), reason="payload_invalid"),
    RawRow("orders", "", SHIPPED, _shipped("0001-01-01T00:00:00+01:00"), reason="payload_invalid"),
    RawRow("orders", "", SHIPPED, _shipped("9999-12-31T23:59:59.999999Z"), fits=True),
    RawRow("orders", "x" * 2000, CANARY, GOOD_CANARY, reason="envelope"),
    RawRow("orders", "ctl \x01\x1b\x7f\u2028 ' \" ; --", CANARY, GOOD_CANARY, fits=True),
    RawRow("a b", "", CANARY, GOOD_CANARY, reason="bad_destination"),
    RawRow("orders.dlq", "", CANARY, GOOD_CANARY, reason="bad_destination"),
    RawRow("\u043erders", "", CANARY, GOOD_CANARY, reason="bad_destination"),  # a Cyrillic o
    RawRow("orders", "", "orders.OrderPlaced\n", GOOD_CANARY, reason="unknown_type"),
    RawRow("orders", "", CANARY, GOOD_CANARY, '{"traceparent": "00-zz"}', reason="envelope"),
    RawRow("orders", "", CANARY, GOOD_CANARY, '{"traceparent": 7}', reason="envelope"),
]


def _pg_takes(text: str) -> bool:
    try:
        return _storable(json.loads(text))
    except (ValueError, RecursionError):
        return True  # JSON only PostgreSQL reads back whole (1e5000, very deep): it takes it


async def _insert(conn: asyncpg.Connection, rows: list[RawRow]) -> dict[int, RawRow]:
    """Insert the rows PostgreSQL takes (each its own aggregate) by plain SQL; by seq."""
    by_seq = {}
    for i, original in enumerate(rows):
        if not _pg_takes(original.payload) or (
            original.headers is not None and not _pg_takes(original.headers)
        ):
            continue  # jsonb refuses NUL and lone surrogates: such a row cannot exist
        row = dataclasses.replace(original, aggregateid=f"r{i}-{original.aggregateid}")
        seq = await conn.fetchval(
            "INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload, headers, "
            "created_at) VALUES ($1, $2, $3, $4::text::jsonb, $5::text::jsonb, "
            "coalesce($6::text::timestamptz, clock_timestamp())) RETURNING seq",
            row.aggregatetype,
            row.aggregateid,
            row.type,
            row.payload,
            row.headers,
            row.created_at,
        )
        by_seq[seq] = row
    return by_seq


async def _published(
    settings: Settings, redis_client: aioredis.Redis, aggregatetype: str
) -> dict[str, list[Delivered]]:
    return {
        "redis": await read_stream(redis_client, f"{settings.stream_prefix}{aggregatetype}"),
        "kafka": await read_topic(settings, f"{settings.topic_prefix}{aggregatetype}"),
    }


async def _consume_both(settings: Settings, **overrides: Any) -> None:
    group = group_name()
    for sink in ("redis", "kafka"):
        await consume(settings, sink=sink, group=group, drain=True, **overrides)  # type: ignore[arg-type]


async def test_raw_rows_are_published_valid_or_parked_never_dropped(
    settings: Settings,
    conn: asyncpg.Connection,
    database_url: str,
    redis_client: aioredis.Redis,
    kafka_admin: AIOKafkaAdminClient,
) -> None:
    rows = [*SPECIAL, *sample(raw_row(), 60)]
    by_seq = await _insert(conn, rows)
    # Two rows behind a parked one in its aggregate: they wait, neither published nor parked.
    behind = by_seq[min(by_seq)]
    await conn.execute(
        "INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload) "
        "SELECT $1, $2, 'flowproof.Canary', $3::text::jsonb FROM generate_series(1, 2)",
        behind.aggregatetype,
        behind.aggregateid,
        GOOD_CANARY,
    )

    async with asyncio.timeout(90):
        await Relay(settings, registry=REGISTRY).run_until_idle()

    # created_at as Python can hold it (None for infinity, BC, after 9999), as the relay reads it.
    outbox = await conn.fetch(
        """SELECT *, CASE WHEN raw_created_at::timestamptz >= '0001-01-01Z'
                           AND raw_created_at::timestamptz < '10000-01-01Z'
                          THEN raw_created_at::timestamptz END AS created_at
           FROM (SELECT seq, id, aggregatetype, aggregateid, type, payload::text,
                        headers::text, created_at::text AS raw_created_at, redis_published_at,
                        kafka_published_at, redis_parked_reason, kafka_parked_reason,
                        redis_parked_error, kafka_parked_error
                 FROM flowproof_outbox_progress) AS o
           ORDER BY seq"""
    )
    assert len(outbox) == len(by_seq) + 2 and len(by_seq) >= len(rows) // 2
    published_ids: dict[str, set[str]] = {}
    for sink in ("redis", "kafka"):
        published = [r for r in outbox if r[f"{sink}_published_at"] is not None]
        parked = [r for r in outbox if r[f"{sink}_parked_reason"] is not None]
        waiting = [r for r in outbox if r["aggregateid"] == behind.aggregateid][1:]
        assert len(published) + len(parked) + len(waiting) == len(outbox), sink
        assert not {r["seq"] for r in published} & {r["seq"] for r in parked}
        for r in parked:
            assert r[f"{sink}_parked_reason"] in PARK_REASONS and r[f"{sink}_parked_error"]
        for r in waiting:
            assert r[f"{sink}_published_at"] is None and r[f"{sink}_parked_reason"] is None
        for r in outbox:
            row = by_seq.get(r["seq"])
            if row is not None and row.fits:
                assert r[f"{sink}_published_at"] is not None, (sink, row)
            if row is not None and row.reason is not None:
                assert r[f"{sink}_parked_reason"] == row.reason, (
                    sink,
                    row,
                    r[f"{sink}_parked_error"],
                )
        published_ids[sink] = {str(r["id"]) for r in published}
    assert published_ids["redis"] == published_ids["kafka"]
    reasons = Counter(r["redis_parked_reason"] for r in outbox)
    assert len(published_ids["redis"]) >= 15 and len(reasons) >= 5  # both fates, every reason
    assert [r["redis_parked_reason"] for r in outbox] == [r["kafka_parked_reason"] for r in outbox]

    by_id = {str(r["id"]): r for r in outbox}
    for sink, messages in (await _published(settings, redis_client, "orders")).items():
        assert {m.event_id for m in messages} == published_ids[sink]
        for message in messages:
            row = by_id[message.event_id]
            envelope = Envelope.from_wire({k: v.encode() for k, v in message.fields.items()})
            assert (envelope.aggregateid, envelope.type) == (row["aggregateid"], row["type"])
            assert envelope.created_at == row["created_at"]
            version = REGISTRY.latest(row["type"])
            _, datum = framing.decode(REGISTRY, message.value, reader=version)
            assert same_under_schema(
                version.parsed, datum, json.loads(row["payload"]), collect_named(version.parsed)
            )

    await _consume_both(settings)
    receipted = await receipts(database_url)
    assert len(receipted) == 2 * len(published_ids["redis"])
    assert all(r["valid"] for r in receipted), [r["error"] for r in receipted if not r["valid"]]


# --- very large events ----------------------------------------------------------------------------

LIMIT = 20_000  # FLOWPROOF_RELAY_MAX_MESSAGE_BYTES of these tests (the minimum is 1024)


def _row_of_size(size: int, aggregateid: str) -> str:
    """A Canary payload whose message is exactly `size` bytes, as the relay counts them."""
    encoder = Encoder(REGISTRY, "flowproof.", 10**9)

    def payload(note_length: int) -> str:
        return json.dumps({"run_id": "r", "sequence": 1, "total": 1, "note": "x" * note_length})

    def measure(note_length: int) -> int:
        row = OutboxRow(
            seq=0,
            id=uuid.uuid4(),
            aggregatetype="big",
            aggregateid=aggregateid,
            type="flowproof.Canary",
            payload=payload(note_length),
            headers=None,
            created_at=dt.datetime.now(dt.UTC),
        )
        return encoder.encode(row).size

    guess = max(size - measure(0), 0)
    for note_length in range(max(guess - 4, 0), guess + 5):  # the length's varint may grow
        if measure(note_length) == size:
            return payload(note_length)
    raise AssertionError(f"no Canary is exactly {size} bytes")


async def test_messages_over_the_relay_limit_are_parked_and_the_rest_flows(
    settings: Settings,
    conn: asyncpg.Connection,
    database_url: str,
    redis_client: aioredis.Redis,
    kafka_admin: AIOKafkaAdminClient,
) -> None:
    """Sizes around FLOWPROOF_RELAY_MAX_MESSAGE_BYTES: up to it published, above it parked as
    oversized. A consumer whose limit equals the relay's takes all that was published; one with
    a smaller limit dead-letters the larger ones as oversized, and the small ones still flow."""
    settings = settings.model_copy(update={"relay_max_message_bytes": LIMIT})
    offsets = sample(st.integers(-300, 300), 12)
    sizes = sorted({LIMIT - 1, LIMIT, LIMIT + 1, 3 * LIMIT, 200, *(LIMIT + o for o in offsets)})
    expected: dict[str, int] = {}
    for i, size in enumerate(sizes):
        aggregateid = f"big-{i:04d}"
        payload = _row_of_size(size, aggregateid)
        await conn.execute(
            "INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload) "
            "VALUES ('big', $1, 'flowproof.Canary', $2::text::jsonb)",
            aggregateid,
            payload,
        )
        expected[aggregateid] = size

    await Relay(settings, registry=REGISTRY).run_until_idle()

    outbox = await conn.fetch("SELECT * FROM flowproof_outbox_progress")
    for row in outbox:
        fits = expected[row["aggregateid"]] <= LIMIT
        for sink in ("redis", "kafka"):
            if fits:
                assert row[f"{sink}_published_at"] is not None, (sink, expected[row["aggregateid"]])
            else:
                assert row[f"{sink}_parked_reason"] == "oversized"
                assert str(LIMIT) in row[f"{sink}_parked_error"]
    published = sum(1 for size in sizes if size <= LIMIT)
    for sink, messages in (await _published(settings, redis_client, "big")).items():
        assert len(messages) == published, sink

    # The consumers' limit equal to the relay's: nothing the relay sent is too large for them.
    await _consume_both(settings, max_message_bytes=LIMIT)
    rows = await receipts(database_url)
    assert len(rows) == 2 * published and all(r["valid"] for r in rows)

    # A smaller consumer limit: the larger messages are dead-lettered as oversized.
    small = LIMIT // 2
    group = group_name()
    for sink in ("redis", "kafka"):
        await consume(settings, sink=sink, group=group, drain=True, max_message_bytes=small)  # type: ignore[arg-type]
    mine = [r for r in await receipts(database_url) if r["consumer_group"] == group]
    assert len(mine) == 2 * published
    for r in mine:
        size = expected[r["aggregateid"]]
        if size > small:
            assert (r["valid"], r["reason"]) == (False, "oversized"), size
        else:
            assert r["valid"], (size, r["error"])
    too_big = sum(1 for size in sizes if small < size <= LIMIT)
    assert len(await redis_client.xrange(f"{settings.stream_prefix}big.dlq")) == too_big
    kafka_dlq = await read_topic(settings, f"{settings.topic_prefix}big.dlq")
    assert len(kafka_dlq) == too_big
    assert all(dict(m.fields)["dlq_reason"] == "oversized" for m in kafka_dlq)


@pytest.mark.slow
async def test_the_default_limit_fits_a_default_broker(
    settings: Settings,
    conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    kafka_admin: AIOKafkaAdminClient,
) -> None:
    """With the defaults, a message of exactly FLOWPROOF_RELAY_MAX_MESSAGE_BYTES is taken by
    Redis and by Kafka with its default message.max.bytes; one byte more is parked."""
    limit = settings.relay_max_message_bytes
    for aggregateid, size in (("at", limit), ("over", limit + 1)):
        payload = _row_of_size(size, aggregateid)
        await conn.execute(
            "INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload) "
            "VALUES ('big', $1, 'flowproof.Canary', $2::text::jsonb)",
            aggregateid,
            payload,
        )

    async with asyncio.timeout(60):
        await Relay(settings, registry=REGISTRY).run_until_idle()

    rows = {
        r["aggregateid"]: r for r in await conn.fetch("SELECT * FROM flowproof_outbox_progress")
    }
    for sink in ("redis", "kafka"):
        assert rows["at"][f"{sink}_published_at"] is not None, sink
        assert rows["over"][f"{sink}_parked_reason"] == "oversized", sink
    for sink, messages in (await _published(settings, redis_client, "big")).items():
        assert [len(m.value) > limit - 1000 for m in messages] == [True], sink
