"""The relay's PostgreSQL connections, and the one place its driver errors become flowproof's.

A sink worker's connection carries its slot locks, so it is its own (never pooled), with TCP
keepalives: if a relay's host vanishes without closing the socket, the server drops the session,
and the locks with it, within about 25 s, and other relays take over its slots.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

from flowproof.core.config import Settings
from flowproof.core.connect import connect_postgres, create_postgres_pool
from flowproof.core.redact import scrub
from flowproof.publisher.errors import DatabaseLost

# A statement that takes longer than this is treated as a lost connection (the session, and its
# locks, are dropped and made again) rather than waited for forever.
COMMAND_TIMEOUT = 60.0
_KEEPALIVES = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
}
LOST_CONNECTION = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    # What asyncpg raises when the next statement meets a session the server just ended (its
    # FATAL message is still being consumed): a lost connection too.
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
)


async def connect_relay(settings: Settings, purpose: str) -> asyncpg.Connection:
    """A dedicated connection named after its purpose (visible in pg_stat_activity)."""
    return await connect_postgres(
        settings,
        command_timeout=COMMAND_TIMEOUT,
        server_settings={"application_name": f"flowproof-relay-{purpose}", **_KEEPALIVES},
    )


async def relay_pool(settings: Settings) -> asyncpg.Pool:
    """A small pool for the relay's side work (gauges, pruning)."""
    return await create_postgres_pool(
        settings,
        min_size=1,
        max_size=2,
        command_timeout=COMMAND_TIMEOUT,
        server_settings={"application_name": "flowproof-relay-aux", **_KEEPALIVES},
    )


@contextlib.asynccontextmanager
async def database_boundary(what: str) -> AsyncIterator[None]:
    """Turn a lost connection inside the block into DatabaseLost naming `what`."""
    try:
        yield
    except LOST_CONNECTION as exc:
        raise DatabaseLost(f"{what}: {scrub(f'{type(exc).__name__}: {exc}')}") from None


async def close_quietly(conn: asyncpg.Connection | None) -> None:
    """Close a connection that may already be broken; a broken one is terminated instead."""
    if conn is None or conn.is_closed():
        return
    try:
        await conn.close(timeout=5)
    except LOST_CONNECTION:
        conn.terminate()
