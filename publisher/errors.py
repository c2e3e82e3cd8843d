"""The publisher's errors. Sink drivers' exceptions become `SinkError` in the sink modules, and
PostgreSQL's in `db.py`; rows that can never be published raise a `ContractError` whose
`reason` is the park reason."""

from __future__ import annotations

from flowproof.core.errors import ConfigError, FlowproofError
from flowproof.schemas.errors import ENVELOPE, OVERSIZED, ContractError


class EnvelopeInvalid(ContractError):
    """The event's metadata (aggregate id, type name, traceparent...) breaks the envelope rules."""

    reason = ENVELOPE

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"envelope field {field!r}: {problem}")
        self.field = field
        self.problem = problem


class Oversized(ContractError):
    """The encoded message is larger than the sinks accept (FLOWPROOF_RELAY_MAX_MESSAGE_BYTES)."""

    reason = OVERSIZED

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes is larger than the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class OutboxMissing(ConfigError):
    """The outbox table does not exist: `flowproof db migrate` was not run on this database."""

    def __init__(self, table: str) -> None:
        super().__init__(f"table {table} does not exist; run `flowproof db migrate` first")
        self.table = table


class SinkError(FlowproofError):
    """A sink refused or failed a publish; the events are retried."""

    def __init__(self, sink: str, detail: str) -> None:
        super().__init__(f"{sink}: {detail}")
        self.sink = sink
        self.detail = detail


class DatabaseLost(FlowproofError):
    """The relay's connection to PostgreSQL failed; its slot locks are gone with it."""


class RelayCrashed(FlowproofError):
    """A relay task died of an unexpected error; the relay stopped instead of limping on."""
