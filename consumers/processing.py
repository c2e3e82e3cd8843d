"""From deliveries to receipts and dead letters: decode, validate, hand to the handler.

Each delivery is checked in this order, the first failure naming the reason:
oversized, envelope, misrouted (stream/topic or Kafka key do not match the envelope), bad_magic,
type_mismatch (the schema id belongs to another event type), unknown_schema, corrupt_avro.
An invalid message is receipted as invalid and dead-lettered; a valid one goes to its handler
(retried per the RetryPolicy, then dead-lettered as handler_error) or, when Redis delivered it
more than the allowed number of times, straight to the DLQ (max_deliveries). Nothing here
raises for a bad message: the batch always completes, so a bad message never blocks the good
ones behind it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import math
import uuid
from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

from prometheus_client import Histogram

from flowproof.consumers.app import Consumer, Route
from flowproof.consumers.deadletter import DeadLetter
from flowproof.consumers.delivery import Delivery
from flowproof.consumers.errors import HANDLER_ERROR, MAX_DELIVERIES
from flowproof.consumers.event import Payload
from flowproof.consumers.options import ConsumerOptions
from flowproof.consumers.receipts import Receipt, clean_text
from flowproof.core import metrics
from flowproof.core.logging import get_logger
from flowproof.core.retry import RetryPolicy
from flowproof.core.routing import InvalidDestination, destination
from flowproof.core.sampling import is_sampled
from flowproof.schemas import framing
from flowproof.schemas.envelope import Envelope
from flowproof.schemas.errors import MISROUTED, OVERSIZED, TYPE_MISMATCH, FrameError
from flowproof.schemas.ids import SchemaIds
from flowproof.schemas.registry import SchemaVersion

log = get_logger(__name__)


@dataclass
class BatchOutcome:
    """What a batch produced: receipts to write, dead letters to send, counts for metrics."""

    deliveries: int = 0
    receipts: list[Receipt] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    invalid: Counter[str] = field(default_factory=Counter)
    handler_failures: int = 0
    latencies: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Decoded:
    envelope: Envelope
    writer: SchemaVersion
    schema_id: int  # the id on the wire (embedded, or the schema registry's)
    datum: Payload
    route: Route[Any] | None


class Processor:
    """Turns a batch of deliveries into a BatchOutcome (and calls the handlers)."""

    def __init__(
        self, app: Consumer, options: ConsumerOptions, ids: SchemaIds | None = None
    ) -> None:
        self._app = app
        # Embedded ids, or a schema registry's (looked up for a whole batch before decoding).
        self._ids = ids if ids is not None else SchemaIds(app.registry)
        self._options = options
        self._retry = RetryPolicy(base=0.05, cap=2.0, max_attempts=options.handler_attempts)
        # Few aggregate types, each checked once per message: remember their (valid) names.
        self._destination = lru_cache(maxsize=1024)(partial(destination, options.prefix))

    async def process(self, deliveries: Sequence[Delivery]) -> BatchOutcome:
        """Decode and handle every delivery, in order; never raises for a bad message.

        With a schema registry, ComponentUnreachable when it does not answer (nothing of the
        batch is receipted or acknowledged: it is delivered again).
        """
        if self._ids.remote:
            await self._ids.look_up(_schema_ids(deliveries))
        outcome = BatchOutcome(deliveries=len(deliveries))
        for delivery in deliveries:
            try:
                decoded = self._decode(delivery)
            except FrameError as exc:
                self._invalid(delivery, exc, outcome)
                continue
            await self._valid(delivery, decoded, outcome)
        return outcome

    def observe(self, outcome: BatchOutcome) -> None:
        """Update the consumer metrics, once per batch."""
        labels = self._options.labels
        metrics.CONSUMER_RECEIVED.labels(**labels).inc(outcome.deliveries)
        for reason, count in outcome.invalid.items():
            metrics.CONSUMER_INVALID.labels(**labels, reason=reason).inc(count)
        dead = Counter(letter.reason for letter in outcome.dead_letters)
        for reason, count in dead.items():
            metrics.CONSUMER_DEAD_LETTERED.labels(**labels, reason=reason).inc(count)
        if outcome.handler_failures:
            metrics.CONSUMER_HANDLER_FAILURES.labels(**labels).inc(outcome.handler_failures)
        observe_all(metrics.E2E_LATENCY.labels(**labels), outcome.latencies)

    # --- decoding -------------------------------------------------------------------------------

    def _decode(self, delivery: Delivery) -> _Decoded:
        if delivery.size > self._options.max_message_bytes:
            raise FrameError(
                OVERSIZED,
                f"message of {delivery.size} bytes is larger than "
                f"FLOWPROOF_CONSUMER_MAX_MESSAGE_BYTES={self._options.max_message_bytes}",
            )
        envelope = Envelope.from_wire(delivery.headers)
        self._check_route(delivery, envelope)
        data = delivery.value or b""
        schema_id = framing.read_header(data)
        writer = self._ids.by_id(schema_id)
        if writer is not None and writer.event_type != envelope.type:
            raise FrameError(
                TYPE_MISMATCH,
                f"envelope type {envelope.type!r} but schema id {schema_id} is "
                f"{writer.event_type} v{writer.version}",
            )
        route = self._app.route(envelope.type)
        writer, datum = framing.decode(self._ids, data, route.reader if route else None)
        return _Decoded(envelope, writer, schema_id, datum, route)

    def _check_route(self, delivery: Delivery, envelope: Envelope) -> None:
        try:
            expected = self._destination(envelope.aggregatetype)
        except InvalidDestination as exc:
            raise FrameError(MISROUTED, str(exc)) from None
        if expected != delivery.source:
            raise FrameError(
                MISROUTED,
                f"aggregatetype {envelope.aggregatetype!r} belongs in {expected!r}, "
                f"not {delivery.source!r}",
            )
        if self._options.spec.keyed and delivery.key != envelope.aggregateid.encode():
            raise FrameError(
                MISROUTED,
                f"{self._options.spec.title} key {delivery.key!r} is not the aggregateid "
                "(order is lost)",
            )

    # --- outcomes -------------------------------------------------------------------------------

    def _invalid(self, delivery: Delivery, exc: FrameError, outcome: BatchOutcome) -> None:
        outcome.invalid[exc.reason] += 1
        error = str(exc)
        log.warning(
            "consumer.invalid",
            reason=exc.reason,
            error=clean_text(error, 500),
            source=delivery.source,
            position=delivery.position,
        )
        outcome.dead_letters.append(DeadLetter(delivery, exc.reason, error))
        receipt = self._receipt(
            delivery,
            _loose_envelope(delivery),
            reason=exc.reason,
            error=error,
            dead_letter_reason=exc.reason,
        )
        outcome.receipts.append(receipt)

    async def _valid(self, delivery: Delivery, decoded: _Decoded, outcome: BatchOutcome) -> None:
        envelope = decoded.envelope
        received = (delivery.received_at - envelope.created_at).total_seconds()
        outcome.latencies.append(max(received, 0.0))
        dead: DeadLetter | None = None
        if delivery.delivery_count > self._options.max_deliveries:
            dead = DeadLetter(
                delivery,
                MAX_DELIVERIES,
                f"delivered {delivery.delivery_count} times, more than "
                f"FLOWPROOF_CONSUMER_MAX_DELIVERIES={self._options.max_deliveries}",
            )
        elif decoded.route is not None:
            dead = await self._handle(delivery, decoded, outcome)
        if dead is not None:
            log.warning(
                "consumer.dead_lettered",
                reason=dead.reason,
                event_id=str(envelope.id),
                source=delivery.source,
                position=delivery.position,
            )
            outcome.dead_letters.append(dead)
        if dead is not None or is_sampled(envelope.id, self._options.sample_ratio):
            fields = _envelope_fields(envelope)
            fields["schema_id"] = decoded.schema_id
            outcome.receipts.append(
                self._receipt(
                    delivery,
                    fields,
                    error=dead.error if dead else None,
                    dead_letter_reason=dead.reason if dead else None,
                )
            )

    async def _handle(
        self, delivery: Delivery, decoded: _Decoded, outcome: BatchOutcome
    ) -> DeadLetter | None:
        route = decoded.route
        assert route is not None  # only called for routed events
        attempt = 0
        while True:
            attempt += 1
            try:
                result = route.handler(
                    route.event(decoded.envelope, decoded.writer, decoded.datum, delivery)
                )
                if inspect.isawaitable(result):
                    await result
                return None
            except Exception as exc:  # a handler may raise anything; it is retried, then DLQ'd
                outcome.handler_failures += 1
                delay = self._retry.delay(attempt)
                log.warning(
                    "consumer.handler_failed",
                    event_type=route.event_type,
                    event_id=str(decoded.envelope.id),
                    attempt=attempt,
                    retry_in=delay,
                    error=f"{type(exc).__name__}: {exc}",
                )
                if delay is None:
                    return DeadLetter(
                        delivery,
                        HANDLER_ERROR,
                        f"handler failed {attempt} times; last: {type(exc).__name__}: {exc}",
                    )
                await asyncio.sleep(delay)

    def _receipt(
        self,
        delivery: Delivery,
        fields: dict[str, Any],
        *,
        reason: str | None = None,
        error: str | None = None,
        dead_letter_reason: str | None = None,
    ) -> Receipt:
        options = self._options
        return Receipt(
            event_id=fields.get("id"),
            sink=options.sink,
            consumer_group=options.group,
            consumer=options.name,
            source=delivery.source,
            position=delivery.position,
            # Even a valid envelope may hold a NUL, which PostgreSQL text refuses.
            event_type=clean_text(fields.get("type"), 1024),
            aggregatetype=clean_text(fields.get("aggregatetype"), 1024),
            aggregateid=clean_text(fields.get("aggregateid"), 1024),
            schema_id=fields.get("schema_id"),
            created_at=fields.get("created_at"),
            received_at=delivery.received_at,
            valid=reason is None,
            reason=reason,
            error=clean_text(error),
            delivery_count=delivery.delivery_count,
            dead_letter_reason=dead_letter_reason,
        )


def observe_all(histogram: Histogram, values: Sequence[float]) -> None:
    """`histogram.observe(v)` for every value, counted per bucket: one lock and increment per
    bucket and batch instead of per value (prometheus_client has no bulk observe; without the
    attributes this relies on, it observes one by one)."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(value)
        return
    if not values:
        return
    counts = Counter(bisect_left(bounds, value) for value in values)
    for index, count in counts.items():
        buckets[min(index, len(buckets) - 1)].inc(count)
    total.inc(math.fsum(values))


def _envelope_fields(envelope: Envelope) -> dict[str, Any]:
    return {
        "id": envelope.id,
        "type": envelope.type,
        "aggregatetype": envelope.aggregatetype,
        "aggregateid": envelope.aggregateid,
        "created_at": envelope.created_at,
    }


def _loose_envelope(delivery: Delivery) -> dict[str, Any]:
    """What can be told of a broken message's envelope, field by field, for its receipt."""
    fields: dict[str, Any] = {}
    for name in ("type", "aggregatetype", "aggregateid"):
        raw = delivery.header(name)
        if raw is not None:
            fields[name] = clean_text(raw.decode("utf-8", "replace"), 1024)
    raw_id = delivery.header("id")
    if raw_id is not None:
        try:
            fields["id"] = uuid.UUID(raw_id.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            fields["id"] = None  # not a UUID: the receipt cannot name the event
    raw_created = delivery.header("created_at")
    if raw_created is not None:
        created: dt.datetime | None
        try:
            parsed = dt.datetime.fromisoformat(raw_created.decode("ascii"))
            # In UTC, as PostgreSQL stores it: 0001-01-01T00:00+01:00 is no instant it can hold.
            created = parsed.astimezone(dt.UTC) if parsed.tzinfo is not None else None
        except (UnicodeDecodeError, ValueError, OverflowError):
            created = None  # unreadable: the error of the receipt says so
        if created is not None:
            fields["created_at"] = created
    value = delivery.value or b""
    if framing.is_framed(value):
        fields["schema_id"] = framing.read_header(value)
    return fields


def _schema_ids(deliveries: Sequence[Delivery]) -> set[int]:
    """The schema ids of the framed values of a batch (what is not framed fails later)."""
    values = (d.value for d in deliveries)
    return {framing.read_header(v) for v in values if v is not None and framing.is_framed(v)}
