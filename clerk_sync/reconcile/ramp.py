"""The write ramp: backfill and reconcile write as Firestore asks new traffic to, not as fast as Clerk pages come.

Firestore's guidance for new traffic (the 500/50/5 rule): start at 500 operations a second and
raise by 50 % every 5 minutes, so its tablets split ahead of the load. A run's repairs are charged
against that schedule, second by second from its first write: in whole second `k` of the run, at
most floor(500 * 1.5 ** floor(k / 300)) writes start. A repair is charged WRITES_PER_REPAIR, the most
document writes one of the webhook's transactions makes (the document, the event record, a claim
taken and one released, or a tombstone). A deletion's sweep of what belonged to the deleted object
is not charged (it writes in batches of its own, bounded by its deadline).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

__all__ = ["GROWTH", "START_RATE", "STEP_SECONDS", "WRITES_PER_REPAIR", "Ramp", "ceiling"]

START_RATE = 500.0  # writes per second at first
GROWTH = 1.5  # the rate's factor at every step
STEP_SECONDS = 300.0
WRITES_PER_REPAIR = 4


def ceiling(elapsed: float) -> int:
    """The writes a second the schedule allows `elapsed` seconds after the run's first write."""
    steps = math.floor(max(elapsed, 0.0) / STEP_SECONDS)
    return math.floor(START_RATE * GROWTH**steps)


class Ramp:
    """Hands out writes second by second along the schedule; a caller past this second's share waits."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_raise: Callable[[int], None] | None = None,
    ) -> None:
        self._clock, self._sleep, self._on_raise = clock, sleep, on_raise
        self._lock = threading.Lock()  # the repairs run on several threads
        self._started: float | None = None
        self._second = -1  # the whole second of the run being handed out
        self._used = 0  # writes handed out in it
        self._announced = 0  # the ceiling last told to `on_raise`

    def current(self) -> int | None:
        """The ceiling now; None before the first write (the schedule has not begun)."""
        started = self._started
        return None if started is None else ceiling(self._clock() - started)

    def take(self, writes: int = WRITES_PER_REPAIR) -> float:
        """Wait until `writes` more fit in the schedule, then count them; the clock's time they were counted at."""
        with self._lock:
            now = self._clock()
            if self._started is None:
                self._started = now
            while True:
                second = math.floor(now - self._started)
                if second != self._second:
                    self._second, self._used = second, 0
                allowed = ceiling(float(second))
                if allowed != self._announced:
                    self._announced = allowed
                    if self._on_raise is not None:
                        self._on_raise(allowed)
                if self._used + writes <= allowed or self._used == 0:
                    self._used += writes
                    return now
                self._sleep(self._started + second + 1 - now)
                now = max(self._clock(), self._started + second + 1)
