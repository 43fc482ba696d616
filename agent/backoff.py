"""How long a device waits before it tries the platform again.

Capped exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And
Jitter"): the n-th consecutive failure waits a uniform random time in [0, min(cap, base * 2**n)].
The jitter spreads a fleet that lost its broker at one moment over the whole window, so it does
not come back in lockstep and knock the broker over again; the cap bounds how long a device
stays away once the platform is back. `reset()` after a session that went live: one dropped
connection is retried soon, an outage backs off to the cap.
"""

from __future__ import annotations

import random


class Backoff:
    __slots__ = ("base", "cap", "failures", "rng")

    def __init__(self, base: float = 0.5, cap: float = 10.0, rng: random.Random | None = None) -> None:
        if not 0 < base <= cap:
            raise ValueError(f"backoff needs 0 < base <= cap, got base={base}, cap={cap}")
        self.base = base
        self.cap = cap
        self.failures = 0
        self.rng = rng or random  # type: ignore[assignment]

    def ceiling(self) -> float:
        """The longest the next wait can be."""
        return min(self.cap, self.base * 2 ** min(self.failures, 62))

    def next_delay(self) -> float:
        """The wait before the next try; counts one more failure."""
        delay = self.rng.uniform(0, self.ceiling())
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0
