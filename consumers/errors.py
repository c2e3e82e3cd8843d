"""The consumers' own errors and the dead-letter reasons they add to the contract's.

The reasons of invalid messages (bad_magic, unknown_schema, corrupt_avro, envelope, oversized,
type_mismatch, misrouted) live in `schemas.errors`; a valid message is dead-lettered for one of
the two reasons here.
"""

from __future__ import annotations

from flowproof.core.errors import FlowproofError

HANDLER_ERROR = "handler_error"  # the handler raised on every attempt
MAX_DELIVERIES = "max_deliveries"  # Redis delivered the entry more often than allowed


class ConsumerError(FlowproofError):
    """A consumer could not finish its own work on a batch (it is retried, never dropped)."""


class ReceiptWriteFailed(ConsumerError):
    """PostgreSQL did not take a batch of receipts."""


class DeadLetterFailed(ConsumerError):
    """The dead-letter stream or topic did not take a message."""


class AckFailed(ConsumerError):
    """Redis did not take an XACK, or Kafka an offset commit."""
