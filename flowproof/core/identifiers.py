"""Validation of configurable names that end up in SQL, Redis keys and Kafka topics.

Names are validated once, at configuration time, against strict patterns; code that builds SQL
from them quotes them again with `quote_ident` so an identifier is never interpolated raw.
"""

from __future__ import annotations

import re

_SQL_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Kafka's legal topic characters; Redis stream names use the same set so one prefix fits both.
_TOPIC_PREFIX = re.compile(r"^[A-Za-z0-9._\-]{0,200}$")
_GROUP_NAME = re.compile(r"^[A-Za-z0-9._\-]{1,200}$")


def validate_sql_identifier(name: str) -> str:
    """Return `name` if it is a plain lower-case SQL identifier, else raise ValueError."""
    if not _SQL_IDENTIFIER.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a valid table name "
            "(lower-case letters, digits and _, starting with a letter or _, at most 63)"
        )
    return name


def validate_name_prefix(prefix: str) -> str:
    """Return `prefix` if it only uses characters legal in Kafka topics, else raise ValueError."""
    if not _TOPIC_PREFIX.fullmatch(prefix):
        raise ValueError(
            f"{prefix!r} is not a valid stream/topic prefix (letters, digits, '.', '_', '-')"
        )
    return prefix


def validate_group_name(name: str) -> str:
    """Return `name` if it is a valid consumer group name, else raise ValueError."""
    if not _GROUP_NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a valid consumer group name (letters, digits, '.', '_', '-')"
        )
    return name


def quote_ident(name: str) -> str:
    """Quote an already validated identifier for SQL."""
    validate_sql_identifier(name)
    return f'"{name}"'
