"""The relay's SQL, loaded by name from `sql/queries.sql` and rendered for a table and a sink.

Only validated names reach the templates: the outbox table passes
`flowproof.core.identifiers.validate_sql_identifier` and a sink is one of
`flowproof.core.config.SINK_NAMES`.
"""

from __future__ import annotations

import re
from functools import cache

from flowproof.core.identifiers import validate_sql_identifier
from flowproof.core.sqltext import read_sql, render

_NAME = re.compile(r"^-- name: (?P<name>[a-z_]+)\s*$", re.MULTILINE)


@cache
def _templates() -> dict[str, str]:
    parts = _NAME.split(read_sql("flowproof.publisher.sql", "queries.sql"))
    # split gives [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def query(name: str, table: str, sink: str | None = None, **extra: str) -> str:
    """The named query for `table` (and `sink`), with any extra `{{key}}` already validated."""
    return render(_templates()[name], table, sink, **extra)


def deliveries_table(table: str) -> str:
    """The table of where each event of the outbox `table` went (migration 0040)."""
    return f"{validate_sql_identifier(table)}_deliveries"
