"""The shared retry policy."""

from __future__ import annotations

import random
import time

import pytest
from aiokafka.errors import NodeNotReadyError

from flowproof.core.retry import RetryPolicy
from flowproof.verifier.kafka_lag import ask_again_if_node_down


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(base=0.1, cap=1.0, jitter=False)
    assert [policy.delay(a) for a in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_jitter_stays_within_bounds() -> None:
    policy = RetryPolicy(base=0.1, cap=2.0)
    rng = random.Random(7)
    for attempt in range(1, 30):
        delay = policy.delay(attempt, rng)
        assert delay is not None
        assert 0.05 <= delay <= 2.0


def test_gives_up_after_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3, jitter=False)
    assert policy.delay(2) is not None
    assert policy.delay(3) is None


@pytest.mark.parametrize("kwargs", [{"base": 0}, {"base": 2, "cap": 1}, {"max_attempts": 0}])
def test_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


async def test_a_kafka_admin_request_is_asked_again_while_its_broker_is_down() -> None:
    """The verifier's admin requests follow the retry policy: again while the broker they reached
    is down (a leader moving), the error itself once the time allowed is spent."""
    calls: list[int] = []

    async def recovers() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise NodeNotReadyError("node 2 is down")
        return "answer"

    async def stays_down() -> str:
        calls.append(1)
        raise NodeNotReadyError("node 2 is down")

    assert await ask_again_if_node_down(recovers, "describe", within=5.0) == "answer"
    assert len(calls) == 3
    calls.clear()
    started = time.monotonic()
    with pytest.raises(NodeNotReadyError):
        await ask_again_if_node_down(stays_down, "describe", within=1.0)
    assert time.monotonic() - started <= 1.0
    assert len(calls) >= 2
