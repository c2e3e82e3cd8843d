"""A Burrow-style status per consumer group, from a sliding window of observations.

Burrow (LinkedIn's Kafka lag monitor) judges a group by the last few offsets it committed per
partition, each with its commit time and the lag at that moment. Neither Kafka's offset fetch nor
Redis's XINFO tells when a position was committed, so here each evaluation is an observation
(time, position, lag) of one lane: a Kafka partition's committed offset, or a Redis stream's
last-delivered id. The rules, in Burrow's order, for a window of at least `min_observations`:

1. OK when the lag was zero at any observation in the window (including the last).
2. REWIND when the position went backwards between two observations.
3. Stopped progressing (Burrow's rule 3, with the time the lane first showed its current position
   standing in for the last commit time): the position has not moved for longer than it had been
   moving within the window, that is `now - last_move > last_move - first_observation`.
   Burrow tells STALL (the consumer still commits the same offset) from STOP (it stopped
   committing) by commit times; here by liveness: STALL when a consumer of the group is alive
   (a Kafka group with members; a Redis consumer seen within the grace period), STOP when none is.
4. WARN when the position moves but the lag never decreased between two observations.
5. OK otherwise.

With fewer observations a lane is OK when its lag is zero and UNKNOWN otherwise: one look at a
lagging group is not evidence of how it behaves. A group's status is its worst lane's, by
SEVERITY.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum


class GroupStatus(StrEnum):
    OK = "OK"
    UNKNOWN = "UNKNOWN"
    WARN = "WARN"
    REWIND = "REWIND"
    STALL = "STALL"
    STOP = "STOP"


SEVERITY = {
    GroupStatus.OK: 0,
    GroupStatus.UNKNOWN: 1,
    GroupStatus.WARN: 2,
    GroupStatus.REWIND: 3,
    GroupStatus.STALL: 4,
    GroupStatus.STOP: 5,
}
# The statuses that fail a lag check.
FAILING = frozenset({GroupStatus.STALL, GroupStatus.STOP})

Position = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Observation:
    at: float  # Unix time, seconds
    position: Position
    lag: int


@dataclass(frozen=True, slots=True)
class LaneStatus:
    status: GroupStatus
    why: str


def lane_status(
    window: Sequence[Observation], *, alive: bool, now: float, min_observations: int
) -> LaneStatus:
    """Apply the rules of the module docstring to one lane's observations, oldest first."""
    if not window:
        return LaneStatus(GroupStatus.UNKNOWN, "not observed yet")
    if any(o.lag == 0 for o in window):
        return LaneStatus(GroupStatus.OK, "caught up within the window")
    if len(window) < min_observations:
        return LaneStatus(
            GroupStatus.UNKNOWN,
            f"lagging; {len(window)} of {min_observations} observations needed for a status",
        )
    return _lagging_status(window, alive=alive, now=now)


def _lagging_status(window: Sequence[Observation], *, alive: bool, now: float) -> LaneStatus:
    """Rules 2 to 5, for a full enough window that lagged at every observation."""
    pairs = list(itertools.pairwise(window))
    if any(b.position < a.position for a, b in pairs):
        return LaneStatus(GroupStatus.REWIND, "position went backwards")
    last_move = window[0].at
    for earlier, later in pairs:
        if later.position != earlier.position:
            last_move = later.at
    if now - last_move > last_move - window[0].at:
        still = f"position unchanged for {now - last_move:.0f}s while lagging"
        if alive:
            return LaneStatus(GroupStatus.STALL, f"{still}; a consumer is alive")
        return LaneStatus(GroupStatus.STOP, f"{still}; no consumer alive")
    if all(b.lag >= a.lag for a, b in pairs):
        return LaneStatus(GroupStatus.WARN, "moving, but the lag never decreased")
    return LaneStatus(GroupStatus.OK, "moving and catching up")


def worst(statuses: Iterable[LaneStatus]) -> LaneStatus:
    """The most severe of the lanes' statuses (OK when there is none)."""
    found = list(statuses)
    if not found:
        return LaneStatus(GroupStatus.OK, "no lanes")
    return max(found, key=lambda s: SEVERITY[s.status])


class StatusWindows:
    """The sliding windows of every lane observed, keyed by (sink, group, lane)."""

    def __init__(self, size: int, min_observations: int) -> None:
        self.size = size
        self.min_observations = min(min_observations, size)
        self._windows: dict[Hashable, deque[Observation]] = {}

    def observe(self, key: Hashable, observation: Observation) -> None:
        window = self._windows.setdefault(key, deque(maxlen=self.size))
        window.append(observation)

    def status(self, key: Hashable, *, alive: bool, now: float) -> LaneStatus:
        return lane_status(
            list(self._windows.get(key, ())),
            alive=alive,
            now=now,
            min_observations=self.min_observations,
        )

    def observations(self, key: Hashable) -> int:
        return len(self._windows.get(key, ()))

    def retain(self, keys: Iterable[Hashable]) -> None:
        """Forget the lanes not in `keys` (a stream deleted, a group gone)."""
        keep = set(keys)
        for key in list(self._windows):
            if key not in keep:
                del self._windows[key]
