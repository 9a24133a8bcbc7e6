"""Capped, jittered exponential back-off."""

from __future__ import annotations

import random


class Backoff:
    """``min(cap, base * 1.8**tries)`` jittered in its upper half (aioesphomeapi's curve)."""

    def __init__(self, base_s: float, cap_s: float, *, rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.tries = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.base_s * 1.8**self.tries)
        self.tries += 1
        return ceiling / 2 + self._rng.random() * ceiling / 2

    def at_cap(self) -> float:
        self.tries += 1
        return self.cap_s / 2 + self._rng.random() * self.cap_s / 2

    def reset(self) -> None:
        self.tries = 0
