"""One encoding of a row for every sink of a relay.

Each sink worker claims and encodes the same rows for its sink; the encoding (schema check,
envelope, Avro framing) is most of the relay's CPU per event and the same for every sink, only
the destination differs. `EncodedRows` keeps what one worker encoded for the others.

The first worker to claim a row encodes it; the others take that result, checked against the row
they claimed (so a row fixed and retried meanwhile is encoded anew). Workers claim in seq order,
so each sink's highest claimed seq tells whether it will still want a row: an entry is kept only
for the sinks that have not passed it, dropped once they took it, or when `capacity` newer ones
arrived. Rows that cannot be encoded are not kept: they are rare, and each sink parks them.

Sharing only works while the workers stay close: a worker more than `capacity` rows behind finds
nothing and encodes everything itself, which keeps it behind. So a worker that is half the
capacity ahead of another that shares with it waits, before its next claim, for that one to take
what it left (`pace`), at most `stall` seconds; a sink that does not catch up within that (down,
or much slower) is left behind and never waited for again until it catches up on its own (takes
a shared row again). Only a common backlog is paced: workers that keep up never wait.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable

from flowproof.core.logging import get_logger
from flowproof.publisher.aio import wait_any
from flowproof.publisher.encoding import Encoded, OutboxRow

log = get_logger(__name__)

STALL_SECONDS = 1.0


class EncodedRows:
    """Rows encoded in this process, shared by the sink workers of one relay."""

    def __init__(self, sinks: Iterable[str], capacity: int, stall: float = STALL_SECONDS) -> None:
        names = tuple(sinks)
        self._capacity = capacity
        self._stall = stall
        self._passed = dict.fromkeys(names, 0)  # highest seq each sink claimed
        self._owed = dict.fromkeys(names, 0)  # entries kept for each sink
        self._together = dict.fromkeys(names, True)  # waited for by the sinks ahead of it
        self._taken = asyncio.Event()
        # seq -> (encoding, the sinks still to take it); oldest first
        self._entries: OrderedDict[int, tuple[Encoded, set[str]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, sink: str, row: OutboxRow) -> Encoded | None:
        """The encoding another sink made of `row`, if it is still here."""
        self._passed[sink] = max(self._passed[sink], row.seq)
        entry = self._entries.get(row.seq)
        if entry is None or sink not in entry[1] or entry[0].row != row:
            return None
        encoded, takers = entry
        takers.discard(sink)
        if not takers:
            del self._entries[row.seq]
        self._owed[sink] -= 1
        if not self._together[sink]:
            self._together[sink] = True
            log.info("relay.encoding_shared_again", sink=sink)
        self._taken.set()
        return encoded

    def put(self, sink: str, encoded: Encoded) -> None:
        """Keep `sink`'s encoding for the sinks that have not claimed that row yet."""
        seq = encoded.row.seq
        takers = {other for other, passed in self._passed.items() if passed < seq}
        takers.discard(sink)
        if not takers:
            return
        self._entries[seq] = (encoded, takers)
        for other in takers:
            self._owed[other] += 1
        if len(self._entries) > self._capacity:
            _, (_, left) = self._entries.popitem(last=False)
            for other in left:
                self._owed[other] -= 1

    async def pace(self, sink: str, stop: asyncio.Event) -> None:
        """Before `sink` claims again: let the sinks it is far ahead of catch up, briefly."""
        limit = max(self._capacity // 2, 1)
        for other, together in self._together.items():
            if other == sink or not together or self._owed[other] < limit:
                continue
            deadline = asyncio.get_running_loop().time() + self._stall
            while self._owed[other] >= limit and not stop.is_set():
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    self._together[other] = False
                    log.info(
                        "relay.encoding_unshared",
                        sink=other,
                        ahead=sink,
                        rows_behind=self._owed[other],
                        detail="it did not catch up: it encodes its rows itself",
                    )
                    break
                self._taken.clear()
                await wait_any([self._taken, stop], left)
