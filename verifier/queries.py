"""The verifier's named SQL queries (`verifier/sql/*.sql`), rendered for a table and a sink.

`{{outbox}}` stands for the configured outbox table and `{{sink}}` for a sink name (both
validated before they get here).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from flowproof.core.config import SINK_NAMES
from flowproof.core.identifiers import validate_sql_identifier


@lru_cache(maxsize=64)
def _text(name: str) -> str:
    return (
        resources.files("flowproof.verifier.sql")
        .joinpath(f"{name}.sql")
        .read_text(encoding="utf-8")
    )


@lru_cache(maxsize=128)
def query(name: str, outbox: str, sink: str | None = None) -> str:
    """The query `name` for the outbox table `outbox` and, where it has one, the sink `sink`."""
    sql = _text(name).replace("{{outbox}}", validate_sql_identifier(outbox))
    if "{{sink}}" in sql:
        if sink not in SINK_NAMES:
            raise ValueError(f"query {name} needs a sink, got {sink!r}")
        sql = sql.replace("{{sink}}", sink)
    return sql
