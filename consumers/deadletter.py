"""Dead letters: a message the consumer will not handle, kept whole with the reason why.

A dead letter goes to `<stream or topic>.dlq` (flowproof.core.routing.dlq_name) and carries the
original fields/headers and bytes unchanged, plus these `dlq_*` fields: the reason (a stable
label: bad_magic, unknown_schema, corrupt_avro, envelope, oversized, type_mismatch, misrouted,
handler_error, max_deliveries), the error text, where it came from and who gave up on it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from flowproof.consumers.delivery import Delivery, Headers
from flowproof.consumers.receipts import clean_text
from flowproof.core.routing import dlq_name
from flowproof.schemas.envelope import format_timestamp

REASON = "dlq_reason"
ERROR = "dlq_error"
SOURCE = "dlq_source"
POSITION = "dlq_position"
GROUP = "dlq_group"
CONSUMER = "dlq_consumer"
DELIVERY_COUNT = "dlq_delivery_count"
DEAD_LETTERED_AT = "dlq_at"
VALUE_DROPPED = "dlq_value_dropped"  # set when the DLQ could not take the original bytes


@dataclass(frozen=True, slots=True)
class Unwritable:
    """A dead letter the sink will never take (refused for good, or too large even without the
    original bytes): its receipt says so, and the batch goes on."""

    letter: DeadLetter
    error: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A delivery given up on, with the reason and the error text."""

    delivery: Delivery
    reason: str
    error: str

    @property
    def destination(self) -> str:
        return dlq_name(self.delivery.source)

    def annotations(self, group: str, consumer: str) -> Headers:
        """The `dlq_*` fields added to the original ones."""
        delivery = self.delivery
        values = {
            REASON: self.reason,
            ERROR: clean_text(self.error) or "",
            SOURCE: delivery.source,
            POSITION: delivery.position,
            GROUP: group,
            CONSUMER: consumer,
            DELIVERY_COUNT: str(delivery.delivery_count),
            DEAD_LETTERED_AT: format_timestamp(dt.datetime.now(dt.UTC)),
        }
        return tuple((name, value.encode("utf-8", "replace")) for name, value in values.items())
