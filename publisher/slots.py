"""Which relay publishes which aggregates to a sink: 64 slots, held as advisory locks.

Every outbox row has a `slot` (a hash of its aggregate, 0-63). For each sink, a slot is published
by at most one relay at a time: the one holding the PostgreSQL session advisory lock
(`slot_space(sink)`, slot). Because a worker claims and marks only on the connection holding its
locks, a worker whose connection dies cannot mark anything any more, and its slots are free for
another relay at once (fencing). That, with claims in seq order, keeps the order of each
aggregate's events in every sink while several relays run.

Membership: each sink worker also holds one lock in `member_space(sink)`, keyed by its relay's
member id (the same for every sink of one relay process); listing those in `pg_locks` gives the
live relays. The relay of rank r among n (member ids in order) publishes the slots s with
s mod n = r: it takes those that are free and gives back the others, between batches. Every
slot has one taker, each relay a fair share (at most ceil(64 / n)), and the workers of one relay
publish the same slots to every sink, so that they claim the same rows and encode each once
(flowproof.publisher.encode_cache): with slots chosen at random per sink, two relays' workers
claimed different rows for each sink, each row was encoded in both processes and the sinks'
workers waited for each other (`pace`), and two relays published half of what one did.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable

import asyncpg

from flowproof.core.logging import get_logger
from flowproof.core.metrics import RELAY_OWNED_SLOTS
from flowproof.publisher.queries import query

SLOTS = 64

log = get_logger(__name__)


def lock_space(table: str, sink: str, purpose: str) -> int:
    """The first key of an advisory-lock key space, stable across processes and versions."""
    return zlib.crc32(f"flowproof:{table}:{sink}:{purpose}".encode()) & 0x7FFFFFFF


def fair_share(members: int) -> int:
    """Slots one of `members` relays may hold."""
    return -(-SLOTS // max(members, 1))


class SlotLeases:
    """The slots one sink worker holds, on its own connection (`conn` of every call)."""

    def __init__(
        self,
        table: str,
        sink: str,
        rng: random.Random | None = None,
        member_id: int | None = None,
    ) -> None:
        self.table = table
        self.sink = sink
        self.slot_space = lock_space(table, sink, "slot")
        self.member_space = lock_space(table, sink, "member")
        self.owned: frozenset[int] = frozenset()
        self.target: frozenset[int] = frozenset()  # the slots of this relay's rank
        self.member_id: int | None = None
        self.members = 0
        self.joins = 0
        self._rng = rng or random.Random()
        self._preferred_id = member_id

    async def join(self, conn: asyncpg.Connection) -> None:
        """Take a membership lock with the relay's member id, or a random one no other live
        worker uses when that one is taken."""
        candidate = self._preferred_id
        while self.member_id is None:
            if candidate is None:
                candidate = self._rng.randrange(1, 2**31)
            if await conn.fetchval(query("join", self.table), self.member_space, candidate):
                self.member_id = candidate
                self.joins += 1
            candidate = None

    async def rebalance(self, conn: asyncpg.Connection) -> None:
        """Give back the slots of other ranks, and take the free ones of this relay's rank."""
        census = await conn.fetchrow(
            query("slot_census", self.table), self.member_space, self.slot_space
        )
        members = sorted(census["members"])
        self.members = len(members)
        rank = members.index(self.member_id) if self.member_id in members else 0
        self.target = frozenset(s for s in range(SLOTS) if s % max(self.members, 1) == rank)
        before = self.owned
        surplus = self.owned - self.target
        if surplus:
            await self._release(conn, surplus)
        wanted = sorted((self.target - self.owned) - set(census["held"]))
        if wanted:
            taken = await conn.fetch(query("take_slots", self.table), self.slot_space, wanted)
            self.owned = self.owned | {row["s"] for row in taken}
        if self.owned != before:
            RELAY_OWNED_SLOTS.labels(self.sink).set(len(self.owned))
            log.info(
                "relay.slots_rebalanced",
                sink=self.sink,
                owned=len(self.owned),
                relays=self.members,
                fair_share=len(self.target),
            )

    async def leave(self, conn: asyncpg.Connection) -> None:
        """Release every slot and the membership (closing the connection does the same)."""
        await self._release(conn, self.owned)
        if self.member_id is not None:
            await conn.execute(
                "SELECT pg_advisory_unlock($1::int, $2::int)", self.member_space, self.member_id
            )
        self.lost()

    def lost(self) -> None:
        """Forget the locks: the connection that held them is gone, and the locks with it."""
        self.owned = frozenset()
        self.target = frozenset()
        self.member_id = None
        RELAY_OWNED_SLOTS.labels(self.sink).set(0)

    async def _release(self, conn: asyncpg.Connection, slots: Iterable[int]) -> None:
        slots = sorted(slots)
        if slots:
            await conn.fetch(query("release_slots", self.table), self.slot_space, slots)
            self.owned = self.owned - set(slots)
