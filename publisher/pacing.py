"""Pacing between the sink workers of one relay, so they keep sharing their encodings.

A worker more than the `EncodeCache`'s capacity behind another finds nothing shared and encodes
everything itself, which keeps it behind. So a worker that is half the capacity ahead of another
that shares with it waits, before its next claim, for that one to take what it left (`pace`), at
most `stall` seconds; a sink that does not catch up within that (down, or much slower) is left
behind and never waited for again until it catches up on its own (takes a shared row again).
Only a common backlog is paced: workers that keep up never wait.
"""

from __future__ import annotations

import asyncio

from flowproof.core.aio import wait_any
from flowproof.core.logging import get_logger
from flowproof.publisher.encode_cache import EncodeCache

log = get_logger(__name__)

STALL_SECONDS = 1.0


class Pacing:
    """Decides, before each claim of a sink, whether it waits for the others."""

    def __init__(self, cache: EncodeCache, stall: float = STALL_SECONDS) -> None:
        self._cache = cache
        self._stall = stall
        # A sink left behind, with how many shared encodings it had taken by then.
        self._left_behind: dict[str, int] = {}

    async def pace(self, sink: str, stop: asyncio.Event) -> None:
        """Before `sink` claims again: let the sinks it is far ahead of catch up, briefly."""
        cache = self._cache
        limit = max(cache.capacity // 2, 1)
        for other in cache.sinks:
            if other == sink or not self._waited_for(other) or cache.owed(other) < limit:
                continue
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._stall
            while cache.owed(other) >= limit and not stop.is_set():
                left = deadline - loop.time()
                if left <= 0:
                    self._left_behind[other] = cache.taken_by[other]
                    log.info(
                        "relay.encoding_unshared",
                        sink=other,
                        ahead=sink,
                        rows_behind=cache.owed(other),
                        detail="it did not catch up: it encodes its rows itself",
                    )
                    break
                cache.taken.clear()
                await wait_any([cache.taken, stop], left)

    def _waited_for(self, sink: str) -> bool:
        """False while `sink` is left behind: until it takes a shared encoding again."""
        taken = self._left_behind.get(sink)
        if taken is None:
            return True
        if self._cache.taken_by[sink] > taken:
            del self._left_behind[sink]
            log.info("relay.encoding_shared_again", sink=sink)
            return True
        return False
