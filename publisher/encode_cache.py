"""One encoding of a row for every sink of a relay.

Each sink worker claims and encodes the same rows for its sink; the encoding (schema check,
envelope, Avro framing) is most of the relay's CPU per event and the same for every sink, only
the destination differs. `EncodeCache` keeps what one worker encoded for the others.

The first worker to claim a row encodes it; the others take that result, checked against the row
they claimed (so a row fixed and retried meanwhile is encoded anew). Workers claim in seq order,
so each sink's highest claimed seq tells whether it will still want a row: an entry is kept only
for the sinks that have not passed it, dropped once they took it, or when `capacity` newer ones
arrived. Rows that cannot be encoded are not kept: they are rare, and each sink parks them.

Sharing only works while the workers stay close; `flowproof.publisher.pacing` keeps them so.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable

from flowproof.publisher.rows import Encoded, OutboxRow


class EncodeCache:
    """Rows encoded in this process, shared by the sink workers of one relay."""

    def __init__(self, sinks: Iterable[str], capacity: int) -> None:
        self.sinks = tuple(sinks)
        self.capacity = capacity
        self._passed = dict.fromkeys(self.sinks, 0)  # highest seq each sink claimed
        self._owed = dict.fromkeys(self.sinks, 0)  # entries kept for each sink
        self.taken_by = dict.fromkeys(self.sinks, 0)  # shared encodings each sink took
        self.taken = asyncio.Event()  # set whenever a sink takes a shared encoding
        # seq -> (encoding, the sinks still to take it); oldest first
        self._entries: OrderedDict[int, tuple[Encoded, set[str]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def owed(self, sink: str) -> int:
        """How many encodings are kept for `sink` that it has not taken yet."""
        return self._owed[sink]

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
        self.taken_by[sink] += 1
        self.taken.set()
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
        if len(self._entries) > self.capacity:
            _, (_, left) = self._entries.popitem(last=False)
            for other in left:
                self._owed[other] -= 1
