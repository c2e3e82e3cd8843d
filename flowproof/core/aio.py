"""Small asyncio helpers: waiting for the first of several events, finishing a write that a
cancellation must not cut in half, sleeping unless stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TypeVar

from flowproof.core.logging import get_logger

T = TypeVar("T")

log = get_logger(__name__)


async def shielded(awaitable: Awaitable[T], what: str) -> T:
    """Run `awaitable` to its end even if the caller is cancelled meanwhile.

    For the writes that record completion (marking rows published or parked): a stop must never
    leave one half done. A cancellation is re-raised once the write has finished.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            log.warning("relay.shielded_write_failed", write=what, error=task.exception())
        raise


async def wait_any(events: Iterable[asyncio.Event], seconds: float) -> bool:
    """Wait until one of `events` is set or `seconds` pass; True if an event was set."""
    waiters = [asyncio.create_task(event.wait(), name="relay.wait_event") for event in events]
    try:
        done, _ = await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    return bool(done)


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds` or until `stop` is set; True when stopped."""
    await wait_any([stop], seconds)
    return stop.is_set()
