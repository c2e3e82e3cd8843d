"""lag.<sink> (lag.redis, lag.kafka): judging the lanes of each expected consumer group.

A lane fails when more than the threshold of entries are behind and the oldest of them was
written longer ago than the grace period (a group that does not exist, or never committed, on a
lane with entries is behind by all of them: its consumer never ran); a Redis lane also fails when
its oldest pending entry has waited unacknowledged longer than the grace period. A group fails
when its Burrow-style status (verifier.status) is STALL or STOP.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowproof.core.config import Settings, Sink
from flowproof.core.sinks import sink_spec
from flowproof.verifier.groups import subject
from flowproof.verifier.lanes import GroupLanes, Lane, SinkSnapshot
from flowproof.verifier.model import CheckBuilder
from flowproof.verifier.status import FAILING, LaneStatus, Observation, StatusWindows, worst


@dataclass(frozen=True, slots=True)
class Limits:
    threshold: int
    grace: float
    unit: str


def limits(settings: Settings, sink: Sink) -> Limits:
    spec = sink_spec(sink)
    threshold: int = getattr(settings, spec.lag_threshold_setting)
    grace: float = getattr(settings, spec.lag_grace_setting)
    return Limits(threshold, grace, spec.lag_unit)


def lag_builder(settings: Settings, sink: Sink) -> CheckBuilder:
    limit = limits(settings, sink)
    return CheckBuilder(sink_spec(sink).lag_check, limit.threshold, limit.unit, limit.grace)


def lane_key(sink: Sink, group: str, lane: Lane) -> tuple[str, str, str, int | None]:
    return (sink, group, lane.source, lane.partition)


def observe(windows: StatusWindows, snapshot: SinkSnapshot) -> None:
    """Add the snapshot's positions and lags to the status windows of its groups' lanes."""
    for group in snapshot.groups:
        for lane in group.lanes:
            windows.observe(
                lane_key(snapshot.sink, group.group, lane),
                Observation(snapshot.taken_at, lane.position, lane.behind),
            )


def group_status(windows: StatusWindows, snapshot: SinkSnapshot, group: GroupLanes) -> LaneStatus:
    return worst(
        windows.status(
            lane_key(snapshot.sink, group.group, lane), alive=group.alive, now=snapshot.taken_at
        )
        for lane in group.lanes
    )


def judge_lane(builder: CheckBuilder, sink: Sink, group: str, lane: Lane, limit: Limits) -> None:
    behind = f"{lane.behind}{'' if lane.behind_exact else '+'} {limit.unit} behind"
    if not lane.has_position:
        never = sink_spec(sink).never_consumed
        behind = f"group {never} here (its consumer never ran); {behind}"
    text = f"{behind}, time lag {lane.time_lag:.1f}s"
    if lane.pending is not None:
        idle = lane.oldest_pending_idle
        text += f"; {lane.pending} pending" + (f", oldest idle {idle:.1f}s" if idle else "")
    late = lane.behind > limit.threshold and lane.time_lag > limit.grace
    stuck = lane.oldest_pending_idle is not None and lane.oldest_pending_idle > limit.grace
    builder.add(
        f"{subject(sink, group)} {lane.name}",
        not (late or stuck),
        text,
        sink=sink,
        group=group,
        source=lane.source,
        partition=lane.partition,
        behind=lane.behind,
        time_lag_seconds=round(lane.time_lag, 3),
        pending=lane.pending,
        oldest_pending_idle_seconds=lane.oldest_pending_idle,
    )
    builder.worst(lane.behind)


def judge_lag(
    builder: CheckBuilder, snapshot: SinkSnapshot, windows: StatusWindows, settings: Settings
) -> dict[str, LaneStatus]:
    """Judge every expected group of the snapshot; return each group's status."""
    limit = limits(settings, snapshot.sink)
    statuses: dict[str, LaneStatus] = {}
    for group in snapshot.groups:
        status = group_status(windows, snapshot, group)
        statuses[group.group] = status
        if not group.expected:
            continue
        for lane in group.lanes:
            judge_lane(builder, snapshot.sink, group.group, lane, limit)
        kind = sink_spec(snapshot.sink).lane_kind
        lanes = f"{len(group.lanes)} {kind}{'' if len(group.lanes) == 1 else 's'}"
        builder.add(
            subject(snapshot.sink, group.group),
            status.status not in FAILING,
            f"status {status.status} ({status.why}); {group.liveness}; {lanes} with entries",
            sink=snapshot.sink,
            group=group.group,
            status=str(status.status),
        )
    if builder.value is None:
        builder.value = 0
    return statuses
