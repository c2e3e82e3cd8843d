"""The verifier's named SQL queries (`verifier/sql/*.sql`), rendered for a table and a sink.

`{{outbox}}` stands for the configured outbox table and `{{sink}}` for a sink name (both
validated before they get here).
"""

from __future__ import annotations

from functools import lru_cache

from flowproof.core.sqltext import read_sql, render


@lru_cache(maxsize=128)
def query(name: str, outbox: str, sink: str | None = None) -> str:
    """The query `name` for the outbox table `outbox` and, where it has one, the sink `sink`."""
    return render(read_sql("flowproof.verifier.sql", f"{name}.sql"), outbox, sink)
