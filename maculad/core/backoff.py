"""Capped exponential backoff: the one formula every retry loop uses.

`delay(attempt)` is pure (initial × factor^attempt, capped); a `Backoff`
counts attempts for a loop (`next()`, `reset()`). With `jitter=True` a delay
is "equal jitter": half fixed, half random, so many clients that failed
together do not retry together.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    initial: float
    cap: float
    factor: float = 2.0
    jitter: bool = False
    rng: random.Random = field(default_factory=random.Random, repr=False)
    attempt: int = 0

    def delay(self, attempt: int) -> float:
        """The un-jittered delay before retry number `attempt` (0 for the first)."""
        return min(self.cap, self.initial * self.factor ** min(attempt, 64))

    def peek(self) -> float:
        """The delay the next `next()` returns before jitter."""
        return self.delay(self.attempt)

    def next(self) -> float:
        """The delay before the next retry; counts one attempt."""
        base = self.delay(self.attempt)
        self.attempt = min(self.attempt + 1, 64)
        if self.jitter:
            return base / 2 + self.rng.uniform(0, base / 2)
        return base

    def reset(self) -> None:
        """After a success (or a run that lasted): the next delay is `initial` again."""
        self.attempt = 0
