"""What the verifier needs from a sink, whatever it is: the base class of its readers.

One reader per enabled sink lives as long as the verifier. Each evaluation `connect`s it (the
reachability probe of `components.up`), takes a `snapshot` of the consumer groups' lanes and the
dead letters (the lag and conformance checks), and a `positions` reader (where the copies of
unreceived events stand: lost or late, `flowproof.verifier.loss`); `release` ends the evaluation's
use of the sink, `close` the verifier's. `export` publishes the sink's own lag metrics.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from prometheus_client import Gauge

from flowproof.core.config import Settings
from flowproof.core.sinks import SinkSpec
from flowproof.verifier.lanes import SinkSnapshot
from flowproof.verifier.loss import PositionReader

# Sets one gauge series for this evaluation (the exporter removes series not set again).
GaugeSetter = Callable[[Gauge, tuple[str, ...], float], None]


class SinkReader(ABC):
    """The verifier's reader of one sink, registered by name in `flowproof.verifier.sinks`."""

    spec: SinkSpec

    def __init__(self, settings: Settings, timeout: float) -> None:
        self.settings = settings
        self.timeout = timeout

    @abstractmethod
    async def connect(self) -> None:
        """Reach the sink, or raise ComponentUnreachable naming it."""

    @abstractmethod
    async def snapshot(
        self, groups: Sequence[str], *, alive_within: float, window_start: float, now: float
    ) -> SinkSnapshot:
        """The lanes of every group (the expected `groups` and any found) and the dead letters."""

    @abstractmethod
    def positions(self) -> PositionReader:
        """A reader of positions for this evaluation (valid until `release`)."""

    @abstractmethod
    async def release(self) -> None:
        """End this evaluation's use of the sink (what `connect` and `positions` opened)."""

    @abstractmethod
    async def close(self) -> None:
        """Release everything; the reader is not used again."""

    @staticmethod
    @abstractmethod
    def export(snapshot: SinkSnapshot, gauge: GaugeSetter) -> None:
        """Publish the sink's own lag metrics of `snapshot`."""
