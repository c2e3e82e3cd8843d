"""The shared contract: registry, schema ids, payload checks, framing and envelope."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from flowproof.schemas import framing
from flowproof.schemas.envelope import Envelope, format_timestamp, plain_wire_fields
from flowproof.schemas.errors import FrameError, PayloadInvalid, SchemaFileError, UnknownEventType
from flowproof.schemas.registry import CANARY_TYPE, SchemaRegistry

REGISTRY = SchemaRegistry.load()

ORDER = {
    "order_id": "o-1",
    "customer_id": "c-9",
    "currency": "EUR",
    "total_cents": 4599,
    "lines": [{"sku": "BOOK-1", "quantity": 1, "unit_price_cents": 4599}],
}


def test_sample_domain_and_canary_are_loaded() -> None:
    assert set(REGISTRY.types()) == {
        CANARY_TYPE,
        "orders.OrderPlaced",
        "orders.OrderPaid",
        "orders.OrderShipped",
        "orders.OrderCancelled",
    }
    assert [v.version for v in REGISTRY.versions("orders.OrderPlaced")] == [1, 2]


def test_schema_ids_never_change_meaning() -> None:
    # A published schema id must keep naming the same writer schema: editing a released .avsc
    # in place changes its id and fails here. Add a new version instead.
    ids = {f"{v.event_type}.v{v.version}": v.schema_id for v in REGISTRY}
    assert ids == PUBLISHED_IDS


PUBLISHED_IDS = {
    "flowproof.Canary.v1": 1767438268,
    "orders.OrderCancelled.v1": 2084762572,
    "orders.OrderPaid.v1": 810323329,
    "orders.OrderPlaced.v1": 1055138221,
    "orders.OrderPlaced.v2": 1163393547,
    "orders.OrderShipped.v1": 1482539948,
}


def test_encode_decode_round_trip_with_resolution() -> None:
    v1, v2 = REGISTRY.versions("orders.OrderPlaced")
    data = framing.encode(v1, v1.validate(ORDER))
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == v1.schema_id
    writer, datum = framing.decode(REGISTRY, data)
    assert writer is v1
    assert datum == {**ORDER, "channel": "web", "coupon_code": None}  # v2 defaults filled in
    _, as_v1 = framing.decode(REGISTRY, data, reader=v1)
    assert as_v1 == ORDER
    assert v2.schema_id != v1.schema_id


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({**ORDER, "total_cents": "45.99"}, "total_cents"),
        ({**ORDER, "currency": "JPY"}, "currency"),
        ({k: v for k, v in ORDER.items() if k != "customer_id"}, "customer_id"),
        (
            {**ORDER, "lines": [{"sku": "x", "quantity": 2**40, "unit_price_cents": 1}]},
            "lines[0].quantity",
        ),
        ({**ORDER, "discount": 5}, "discount"),
        ({**ORDER, "coupon_code": 7}, "coupon_code"),
    ],
)
def test_invalid_payload_names_the_field(payload: dict[str, object], field: str) -> None:
    with pytest.raises(PayloadInvalid) as info:
        REGISTRY.latest("orders.OrderPlaced").validate(payload)
    assert info.value.field == field
    assert repr(field) in str(info.value)


def test_timestamps_accept_rfc3339() -> None:
    schema = REGISTRY.latest("orders.OrderShipped")
    payload = {
        "order_id": "o",
        "carrier": "dhl",
        "tracking_number": "t",
        "shipped_at": "2026-11-21T10:00:00.123456Z",
    }
    _, datum = framing.decode(REGISTRY, framing.encode(schema, schema.validate(payload)))
    assert datum["shipped_at"] == dt.datetime(2026, 11, 21, 10, 0, 0, 123456, tzinfo=dt.UTC)
    with pytest.raises(PayloadInvalid, match="shipped_at"):
        schema.validate({**payload, "shipped_at": "2026-11-21T10:00:00"})


def test_unknown_event_type() -> None:
    with pytest.raises(UnknownEventType, match="orders.OrderRefunded"):
        REGISTRY.latest("orders.OrderRefunded")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "bad_magic"),
        (b"\x01\x00\x00\x00\x01abc", "bad_magic"),
        (b"\x00\x7f\xff\xff\xfe", "unknown_schema"),
    ],
)
def test_bad_frames(data: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as info:
        framing.decode(REGISTRY, data)
    assert info.value.reason == reason


def test_truncated_and_trailing_bytes_are_corrupt() -> None:
    schema = REGISTRY.latest("orders.OrderPlaced")
    data = framing.encode(schema, schema.validate(ORDER))
    for broken in (data[:-3], data + b"\x00\x01"):
        with pytest.raises(FrameError) as info:
            framing.decode(REGISTRY, broken)
        assert info.value.reason == "corrupt_avro"


def test_envelope_round_trip_and_errors() -> None:
    created = dt.datetime(2026, 11, 21, 4, 53, 26, 123456, tzinfo=dt.UTC)
    env = Envelope(
        id=uuid.uuid4(),
        type="orders.OrderPaid",
        aggregatetype="order",
        aggregateid="o-1",
        created_at=created,
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    fields = env.wire_fields()
    assert fields["created_at"] == b"2026-11-21T04:53:26.123456Z"
    assert Envelope.from_wire(env.kafka_headers()) == env
    assert format_timestamp(created) == "2026-11-21T04:53:26.123456Z"
    for broken, name in (
        ({k: v for k, v in fields.items() if k != "id"}, "id"),
        ({**fields, "created_at": b"yesterday"}, "created_at"),
        ({**fields, "created_at": b"2026-11-21T04:53:26"}, "created_at"),
        ({**fields, "traceparent": b"nope"}, "traceparent"),
    ):
        with pytest.raises(FrameError) as info:
            Envelope.from_wire(broken)
        assert info.value.reason == "envelope"
        assert repr(name) in str(info.value)


def test_schema_file_errors(tmp_path: Path) -> None:
    (tmp_path / "shop.Thing.v1.avsc").write_text(
        '{"type": "record", "name": "Other", "namespace": "shop", "fields": []}'
    )
    with pytest.raises(SchemaFileError, match="file name says 'shop.Thing'"):
        SchemaRegistry.load(tmp_path)
    (tmp_path / "shop.Thing.v1.avsc").write_text(
        '{"type": "record", "name": "Thing", "namespace": "shop", "fields": [{"name": "x"}]}'
    )
    with pytest.raises(SchemaFileError, match="not a valid Avro schema"):
        SchemaRegistry.load(tmp_path)


# --- the envelope's plain path agrees with the model ------------------------------------------
_NAMES = st.one_of(
    st.sampled_from(["orders.OrderPlaced", "order", "a", "_x.y_1", "a.", ".a", "a..b", "1a", ""]),
    st.sampled_from(["x" * 255, "x" * 256, "y" * 512, "y" * 513, "x" * 1024, "x" * 1025]),
    st.sampled_from(["\ud800", "a\udfff", "é", "a\n", "\x00"]),
    st.text(max_size=20),
)
_TIMES = st.one_of(
    st.datetimes(timezones=st.just(dt.UTC)),
    st.datetimes(timezones=st.sampled_from([dt.timezone(dt.timedelta(hours=2)), None])),
)
_TRACEPARENTS = st.one_of(
    st.none(),
    st.just("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    st.just("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\n"),
    st.text(max_size=60),
    st.integers(),
)


@given(
    event_id=st.one_of(st.uuids(), st.uuids().map(str)),
    event_type=_NAMES,
    aggregatetype=_NAMES,
    aggregateid=_NAMES,
    created_at=_TIMES,
    traceparent=_TRACEPARENTS,
)
def test_plain_wire_fields_are_the_models_whenever_given(
    *,
    event_id: object,
    event_type: str,
    aggregatetype: str,
    aggregateid: str,
    created_at: dt.datetime,
    traceparent: object,
) -> None:
    values = {
        "id": event_id,
        "type": event_type,
        "aggregatetype": aggregatetype,
        "aggregateid": aggregateid,
        "created_at": created_at,
        "traceparent": traceparent,
    }
    plain = plain_wire_fields(values)
    try:
        model: dict[str, bytes] | None = Envelope(**values).wire_fields()
    except ValidationError:
        model = None
    if plain is not None:
        assert plain == model
    # The plain path must not leave the usual rows to the model: rows as the relay reads them.
    if (
        model is not None
        and isinstance(event_id, uuid.UUID)
        and created_at.tzinfo is dt.UTC
        and (traceparent is None or isinstance(traceparent, str))
    ):
        assert plain == model


def test_plain_wire_fields_cover_a_row_as_the_relay_reads_it() -> None:
    event_id = uuid.uuid4()
    created = dt.datetime(2026, 12, 2, 23, 0, 0, 5, tzinfo=dt.UTC)
    fields = plain_wire_fields(
        {
            "id": event_id,
            "type": "orders.OrderPlaced",
            "aggregatetype": "order",
            "aggregateid": "o-1",
            "created_at": created,
        }
    )
    assert fields == {
        "id": str(event_id).encode(),
        "type": b"orders.OrderPlaced",
        "aggregatetype": b"order",
        "aggregateid": b"o-1",
        "created_at": b"2026-12-02T23:00:00.000005Z",
    }
