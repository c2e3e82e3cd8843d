"""verifier.loss's rule on plain values: an event is lost only when every copy of it is passed or
gone; one copy the group can still read (ahead, pending, not looked up) makes it late."""

from __future__ import annotations

import uuid

from flowproof.verifier.loss import Copy, State, judge_copies


def copy(event: uuid.UUID, position: str, age: float = 10.0) -> Copy:
    return Copy(event, "flowproof.order", None, position, age)


def test_an_event_is_lost_only_when_every_copy_is_passed_or_gone() -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    copies = [copy(a, "1-0"), copy(a, "5-0"), copy(b, "2-0"), copy(c, "3-0", age=42.0)]
    states = [State.GONE, State.PASSED, State.PASSED, State.AHEAD]
    verdict = judge_copies(copies, states)
    assert verdict.lost == [a, b]
    assert (verdict.late, verdict.oldest_late_age, verdict.unchecked) == (1, 42.0, 0)
    [lane] = verdict.lanes.values()
    assert (lane.passed, lane.gone) == (1, 1)  # a counted by its first copy: gone
    assert lane.text().startswith("stream flowproof.order: 1 passed by the group")
    assert "positions 1-0, 2-0" in lane.text()


def test_a_copy_the_group_can_still_read_makes_the_event_late() -> None:
    event = uuid.uuid4()
    for reachable in (State.AHEAD, State.PENDING, State.UNCHECKED):
        verdict = judge_copies([copy(event, "1-0"), copy(event, "9-0")], [State.GONE, reachable])
        assert (verdict.lost, verdict.late) == ([], 1)
        assert verdict.unchecked == (reachable is State.UNCHECKED)


def test_kafka_copies_name_topic_and_partition() -> None:
    event = uuid.uuid4()
    kafka = Copy(event, "flowproof.order", 2, "2:17", 1.0)
    verdict = judge_copies([kafka], [State.GONE])
    assert verdict.evidence().startswith("topic flowproof.order partition 2: 1 no longer in")
    assert "positions 2:17" in verdict.evidence()
