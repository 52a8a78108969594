"""A component's share of an application user's Dataverse request budget.

Dataverse limits each application user to a number of requests per sliding window (6,000 per 5
minutes). The components that share one user (the consumer, the Dataverse producer, reconcile, each
in its own pod) cannot see each other's requests, so each gets a configured share of the limit and
keeps its own rate under it: a token bucket refilled at `requests * headroom * share / window`
requests per second, holding at most a few seconds' worth. A component asks `wait_s()` before it
spends: the consumer keeps filling its batch for that long (one request then carries more
changes), the producer polls less often. Nothing is refused here; a component that spends more than
its share only waits longer next time, and a 429 from the service is still honoured on its own.

When the service allows less than the configured share (another application shares the user, or the
limit was lowered), a 429 of the request limit (`0x80072322`) also halves the rate (once per `Retry-After`,
down to `MIN_FRACTION` of it);
after the hold the rate grows back by `RAMP_PER_S` of the configured rate per second: additive
increase, multiplicative decrease, so a component settles just under what the service allows instead
of meeting a 429 at every window.

The service limits each application user on its own. A component given several (`dataverse.more_users`) keeps
one budget per user and sends each request as the user whose budget lets it out soonest: n users, about n
times the requests of one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

BURST_S = 5.0  # the bucket holds this many seconds of the rate: short bursts go out at once
MIN_FRACTION = 0.05  # a 429 never takes the rate below this part of the configured one
RAMP_PER_S = 0.01  # after a 429's hold, the rate grows back by this part of the configured rate per second


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
        self.max_rate = requests * headroom * share / window_s  # requests per second, as configured
        self.rate = self.max_rate  # lower after a 429 (see the module's docstring)
        # A burst comes out of the headroom: over any window, burst + rate * window stays within the share.
        self.max_capacity = max(1.0, min(self.max_rate * BURST_S, (1 - headroom) * share * requests))
        self._clock = clock
        self._tokens = self.max_capacity
        self._at = clock()
        self._held_until = self._at  # the end of the last 429's Retry-After
        self._lock = threading.Lock()
        self.spent = 0
        self.cuts = 0  # how often a 429 lowered the rate

    @property
    def capacity(self) -> float:
        return max(1.0, min(self.max_capacity, self.rate * BURST_S))

    def _refill(self) -> None:
        now = self._clock()
        if self.rate < self.max_rate and now > self._held_until:
            grow_from = max(self._at, self._held_until)
            self.rate = min(self.max_rate, self.rate + (now - grow_from) * RAMP_PER_S * self.max_rate)
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def spend(self, n: int = 1) -> None:
        """Count requests made (the bucket may go below zero: the next wait is longer)."""
        with self._lock:
            self._refill()
            self._tokens -= n
            self.spent += n

    def hold(self, seconds: float, cut: bool = True) -> None:
        """The service answered 429 with `Retry-After`: nothing of this share goes out before then (the
        consumer's other partitions and the producer's next poll would only be refused too). `cut`: the
        429 was for the number of requests, so the rate is lowered too; a 429 of another limit (execution
        time, concurrent requests) is not about how many requests go out: fewer would only leave what the
        limit allows unused (the requests then wait to fill up while the service could take them)."""
        with self._lock:
            self._refill()
            now = self._clock()
            if cut and now >= self._held_until:  # (the other 429s of one burst say the same: one cut for them all)
                self.rate = max(self.max_rate * MIN_FRACTION, self.rate / 2)
                self.cuts += 1
            self._held_until = max(self._held_until, now + seconds)
            self._tokens = min(self._tokens, 1 - seconds * self.rate)

    def wait_s(self, n: int = 1) -> float:
        """How long until `n` requests fit in the share (0: now)."""
        with self._lock:
            self._refill()
            short = n - self._tokens
            return 0.0 if short <= 0 else short / self.rate


class PooledBudget:
    """The budgets of several application users as one component sees them: it may send as soon as any user's
    share lets it (each request then goes as that user, see `dualwrite.dataverse.UserPool`)."""

    def __init__(self, members: list[RequestBudget]) -> None:
        if not members:
            raise ValueError("a pool needs at least one budget")
        self.members = members

    @property
    def spent(self) -> int:
        return sum(b.spent for b in self.members)

    @property
    def cuts(self) -> int:
        return sum(b.cuts for b in self.members)

    def wait_s(self, n: int = 1) -> float:
        return min(b.wait_s(n) for b in self.members)
