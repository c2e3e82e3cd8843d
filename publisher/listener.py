"""LISTEN on the outbox channel and wake the sink workers; reconnect when the connection dies.

The outbox trigger NOTIFYs the channel named after the table once per inserting statement. A
notification can be missed while the listener reconnects, so every (re)connection wakes the
workers once, and the poll interval remains the fallback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg

from flowproof.core.aio import wait_any
from flowproof.core.config import Settings
from flowproof.core.errors import ComponentUnreachable
from flowproof.core.logging import get_logger
from flowproof.core.retry import RetryPolicy
from flowproof.publisher.db import LOST_CONNECTION, close_quietly, connect_relay

log = get_logger(__name__)


class Listener:
    """Calls `on_notify` for every notification on `channel`, until `stop` is set."""

    def __init__(
        self,
        settings: Settings,
        channel: str,
        on_notify: Callable[[], None],
        stop: asyncio.Event,
        policy: RetryPolicy,
    ) -> None:
        self._settings = settings
        self._channel = channel
        self._on_notify = on_notify
        self._stop = stop
        self._policy = policy
        self.listening = asyncio.Event()
        self.connections = 0  # how many times it (re)started listening

    async def run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                conn = await connect_relay(self._settings, "listener")
            except ComponentUnreachable as exc:
                attempt += 1
                log.warning("relay.listener_connect_failed", error=str(exc), attempt=attempt)
                await wait_any([self._stop], self._policy.delay(attempt) or self._policy.cap)
                continue
            attempt = 0
            try:
                await self._listen(conn)
            finally:
                self.listening.clear()
                await close_quietly(conn)

    async def _listen(self, conn: asyncpg.Connection) -> None:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        try:
            await conn.add_listener(self._channel, self._notified)
        except LOST_CONNECTION as exc:
            log.warning("relay.listener_lost", error=str(exc))
            return
        self.connections += 1
        self.listening.set()
        log.info("relay.listening", channel=self._channel, connections=self.connections)
        self._on_notify()  # notifications sent while we were not listening are lost: look now
        # A dead peer does not always close the socket: check the connection each poll interval.
        while not self._stop.is_set():
            if await wait_any([lost, self._stop], self._settings.relay_poll_interval_seconds):
                if lost.is_set():
                    log.warning("relay.listener_lost", error="connection closed")
                return
            try:
                await conn.execute("SELECT 1", timeout=10)
            except LOST_CONNECTION as exc:
                log.warning("relay.listener_lost", error=str(exc))
                return

    def _notified(self, _conn: object, _pid: int, _channel: str, _payload: object) -> None:
        self._on_notify()
