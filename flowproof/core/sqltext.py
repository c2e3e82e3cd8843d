"""SQL shipped as files, rendered for the configured outbox table and a sink: the one renderer of
`{{outbox}}`, `{{sink}}` and any other `{{name}}` placeholder.

Only validated names reach the text: the outbox table passes
`flowproof.core.identifiers.validate_sql_identifier`, a sink is one of
`flowproof.core.sinks.SINK_NAMES`, and the other values are the caller's validated names.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

from flowproof.core.identifiers import validate_sql_identifier
from flowproof.core.sinks import SINK_NAMES


def read_sql(package: str, name: str) -> str:
    """The text of the file `name` shipped in `package` (e.g. `flowproof.verifier.sql`)."""
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")


def render(template: str, outbox: str, sink: str | None = None, **extra: str) -> str:
    """`template` with `{{outbox}}` (and `{{sink}}`, `{{key}}` of `extra`) replaced; ValueError
    for an invalid name or a placeholder left unrendered."""
    sql = template.replace("{{outbox}}", validate_sql_identifier(outbox))
    if sink is not None and sink not in SINK_NAMES:
        raise ValueError(f"unknown sink {sink!r} (expected {', '.join(SINK_NAMES)})")
    if "{{sink}}" in sql:
        if sink is None:
            raise ValueError("the query is per sink and needs one")
        sql = sql.replace("{{sink}}", sink)
    for key, value in extra.items():
        sql = sql.replace("{{" + key + "}}", value)
    if "{{" in sql:
        raise ValueError("a placeholder was left unrendered")
    return sql


def text_array(values: Sequence[str]) -> str:
    """`values` as one PostgreSQL array literal, for a parameter cast `$n::text::text[]`.

    asyncpg encodes a list parameter element by element, each through Python-level checks
    (`collections.abc` isinstance calls): about 1.9 µs of the caller's CPU per string in a
    500-element list, against 0.1 µs joined into one text that PostgreSQL parses in C, which
    costs it about as much as receiving the array (`python -m bench.record`'s statement; see
    docs/benchmarks.md). Every element is quoted (an empty string, `NULL` and `{}` stay strings);
    a quote or backslash in one is escaped.
    """
    if not values:
        return "{}"
    joined = '","'.join(values)
    if "\\" in joined or joined.count('"') != 2 * (len(values) - 1):
        joined = '","'.join(v.replace("\\", "\\\\").replace('"', '\\"') for v in values)
    return '{"' + joined + '"}'
