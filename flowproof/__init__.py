"""flowproof: proves that events really flow from a PostgreSQL outbox to Redis and Kafka."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flowproof")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
