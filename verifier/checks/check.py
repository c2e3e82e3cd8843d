"""A check as data: its name, what it reads, how it judges."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from flowproof.core.config import Settings
from flowproof.verifier.groups import SinkGroup
from flowproof.verifier.model import CheckResult
from flowproof.verifier.reading import Readings, Source
from flowproof.verifier.status import LaneStatus, StatusWindows


@dataclass(slots=True)
class Judging:
    """What every judge may use besides the readings: the settings, the expected groups, the
    consumer groups' status windows, and where the lag checks leave the statuses they found."""

    settings: Settings
    groups: list[SinkGroup]
    windows: StatusWindows
    statuses: dict[tuple[str, str], LaneStatus] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Check:
    """One check of the report: `judge` builds its result from the readings of `reads`."""

    name: str
    reads: frozenset[Source]
    judge: Callable[[Readings, Judging], CheckResult]
