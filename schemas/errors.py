"""Errors of the shared contract; each carries the stable `reason` used as a metric label,
in receipts and in dead-letter entries."""

from __future__ import annotations

from flowproof.core.errors import ContractError

__all__ = ["ContractError"]  # the base of every error here, defined in the core


class SchemaFileError(ContractError):
    """An .avsc file that is not a valid Avro schema or breaks the naming rules."""

    reason = "invalid_schema"


class UnknownEventType(ContractError):
    """No schema exists for this event type."""

    reason = "unknown_type"

    def __init__(self, event_type: str) -> None:
        super().__init__(f"unknown event type {event_type!r}: no schema in the registry")
        self.event_type = event_type


class PayloadInvalid(ContractError):
    """A payload does not match its event type's schema; `field` names where."""

    reason = "payload_invalid"

    def __init__(self, event_type: str, field: str, problem: str) -> None:
        super().__init__(f"{event_type}: field {field!r} {problem}")
        self.event_type = event_type
        self.field = field
        self.problem = problem


class FrameError(ContractError):
    """Bytes that are not a valid Confluent-framed Avro message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# Reasons a consumer gives for an invalid message (docs/design.md `reason` label values).
BAD_MAGIC = "bad_magic"
UNKNOWN_SCHEMA = "unknown_schema"
CORRUPT_AVRO = "corrupt_avro"
ENVELOPE = "envelope"
OVERSIZED = "oversized"
TYPE_MISMATCH = "type_mismatch"  # the envelope's `type` is not the writer schema's event type
MISROUTED = "misrouted"  # not in the stream/topic its aggregatetype names, or wrong Kafka key
