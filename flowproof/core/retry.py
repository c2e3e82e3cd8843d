"""The retry policy every loop uses: capped exponential backoff with full jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to wait before trying again.

    `delay(attempt)` returns the seconds to wait before attempt number `attempt + 1` (attempts
    count from 1), or None when the policy gives up. `max_attempts=None` retries forever, which
    is right for a sink that is down: the relay must keep trying, not drop events.
    """

    base: float = 0.1
    cap: float = 30.0
    multiplier: float = 2.0
    max_attempts: int | None = None
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base or self.multiplier < 1:
            raise ValueError("RetryPolicy needs 0 < base <= cap and multiplier >= 1")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be at least 1")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float | None:
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return None
        ceiling = min(self.cap, self.base * self.multiplier ** max(attempt - 1, 0))
        if not self.jitter:
            return ceiling
        # "Full jitter" (AWS architecture blog): spreads retries of many clients apart.
        return (rng or random).uniform(self.base / 2, ceiling)
