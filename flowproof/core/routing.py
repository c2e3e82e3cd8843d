"""Where an event goes: stream and topic names from `aggregatetype` (docs/design.md, "Outbox
contract").

The Kafka topic and the Redis stream are `<prefix><aggregatetype>` (default prefix `flowproof.`);
the dead-letter stream or topic of a name is `<name>.dlq`. Relay, consumers and verifier all name
things through this module.
"""

from __future__ import annotations

import re

from flowproof.core.errors import ContractError

DLQ_SUFFIX = ".dlq"
# Kafka's legal topic characters and length; Redis accepts them too.
_NAME = re.compile(r"^[A-Za-z0-9._\-]{1,249}$")


class InvalidDestination(ContractError):
    """An aggregatetype that cannot name a Kafka topic or Redis stream."""

    reason = "bad_destination"


def destination(prefix: str, aggregatetype: str) -> str:
    """The stream or topic for events of `aggregatetype`, or InvalidDestination."""
    name = f"{prefix}{aggregatetype}"
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise InvalidDestination(
            f"aggregatetype {aggregatetype!r} gives {name!r}, which is not a valid topic/stream "
            "name (letters, digits, '.', '_', '-'; at most 249)"
        )
    if name.endswith(DLQ_SUFFIX):
        raise InvalidDestination(f"aggregatetype {aggregatetype!r} would publish into a DLQ")
    return name


def dlq_name(name: str) -> str:
    """The dead-letter stream/topic of a stream/topic."""
    return f"{name}{DLQ_SUFFIX}"


def is_dlq(name: str) -> bool:
    return name.endswith(DLQ_SUFFIX)
