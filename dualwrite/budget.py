"""A component's share of an application user's Dataverse request budget.

Dataverse limits each application user to a number of requests per sliding window (6,000 per 5
minutes). The components that share one user (the consumer, the Dataverse producer, reconcile, each
in its own pod) cannot see each other's requests, so each gets a configured share of the limit and
keeps its own rate under it: a token bucket refilled at `requests * headroom * share / window`
requests per second, holding at most a few seconds' worth. A component asks `wait_s()` before it
spends: the consumer keeps filling its batch for that long (one request then carries more
changes), the producer polls less often. Nothing is refused here; a component that spends more than
its share only waits longer next time, and a 429 from the service is still honoured on its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

BURST_S = 5.0  # the bucket holds this many seconds of the rate: short bursts go out at once


class RequestBudget:
    def __init__(
        self,
        requests: int,
        window_s: float,
        share: float,
        headroom: float = 0.9,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if requests < 1 or window_s <= 0 or not 0 < share <= 1 or not 0 < headroom <= 1:
            raise ValueError("requests >= 1, window_s > 0, 0 < share <= 1 and 0 < headroom <= 1")
        self.rate = requests * headroom * share / window_s  # requests per second
        # A burst comes out of the headroom: over any window, burst + rate * window stays within the share.
        self.capacity = max(1.0, min(self.rate * BURST_S, (1 - headroom) * share * requests))
        self._clock = clock
        self._tokens = self.capacity
        self._at = clock()
        self._lock = threading.Lock()
        self.spent = 0

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def spend(self, n: int = 1) -> None:
        """Count requests made (the bucket may go below zero: the next wait is longer)."""
        with self._lock:
            self._refill()
            self._tokens -= n
            self.spent += n

    def hold(self, seconds: float) -> None:
        """The service answered 429 with `Retry-After`: nothing of this share goes out before then (the
        consumer's other partitions and the producer's next poll would only be refused too)."""
        with self._lock:
            self._refill()
            self._tokens = min(self._tokens, 1 - seconds * self.rate)

    def wait_s(self, n: int = 1) -> float:
        """How long until `n` requests fit in the share (0: now)."""
        with self._lock:
            self._refill()
            short = n - self._tokens
            return 0.0 if short <= 0 else short / self.rate
