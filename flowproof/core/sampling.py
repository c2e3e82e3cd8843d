"""Receipt sampling by event-id hash, the same in Python (consumers) and SQL (verifier).

At high volume consumers may record receipts for only a share of events. The choice must be the
same in every consumer and in the verifier, so it is a pure function of the event id: the first
32 bits of the UUID, read as an unsigned number, below `ratio * 2**32`. Random (version 4) UUIDs
make this a uniform sample; invalid messages are always receipted regardless.
"""

from __future__ import annotations

import uuid

_SPACE = 2**32


def threshold(ratio: float) -> int:
    """The exclusive upper bound of sampled hash values for `ratio` (0 < ratio <= 1)."""
    if not 0 < ratio <= 1:
        raise ValueError("sampling ratio must be in (0, 1]")
    return min(_SPACE, round(ratio * _SPACE))


def is_sampled(event_id: uuid.UUID, ratio: float) -> bool:
    """Whether receipts are recorded for `event_id` at this sampling ratio."""
    return ratio >= 1 or (event_id.int >> 96) < threshold(ratio)


def sql_predicate(column: str, param: str) -> str:
    """SQL that is true when the uuid `column` is sampled below the threshold given by `param`.

    `column` must be a trusted column name; `param` a placeholder such as `$2` bound to
    `threshold(ratio)`.
    """
    return f"(('x' || substr(replace({column}::text, '-', ''), 1, 8))::bit(32)::bigint < {param})"
