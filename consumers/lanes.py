"""Write lanes: one round's changes (at most one per record) split by partition into parts applied concurrently.

A record's changes all come from one partition number (its key's), whichever side they come from, and its
sync state lives in that partition's state file and changelog partition: a lane owns whole partitions, so no
record, state file or changelog partition is ever touched by two lanes at once, and a record's changes keep
their order (the rounds stay one after the other). Waiting on one lane's target request overlaps with the
work and requests of the others. A small round stays one lane: at low load lanes cost no extra requests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def split(changes: Sequence[T], partition: Callable[[T], int], lanes: int, min_records: int) -> list[list[T]]:
    """The changes in at most `lanes` parts of at least about `min_records` each; every partition's changes in
    one part, in their order. Greedy: the biggest partition first, into the part with the fewest changes."""
    by_partition: dict[int, list[T]] = {}
    for c in changes:
        by_partition.setdefault(partition(c), []).append(c)
    n = max(1, min(lanes, len(by_partition), len(changes) // max(1, min_records)))
    if n == 1:
        return [list(changes)] if changes else []
    parts: list[list[T]] = [[] for _ in range(n)]
    for group in sorted(by_partition.values(), key=len, reverse=True):
        min(parts, key=len).extend(group)
    return [p for p in parts if p]


class Width:
    """How many lanes the next round may use, adaptively: it starts at one, grows by one per round that met
    no throttling, up to `most` and to the service's own hint (Dataverse's `x-ms-dop-hint`), and halves
    when a round was throttled (a 429 of any limit, the concurrency one included)."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.now = 1.0

    def allowed(self, hint: int | None = None) -> int:
        cap = self.most if hint is None or hint < 1 else min(self.most, hint)
        return max(1, min(cap, int(self.now)))

    def after_round(self, throttled: bool) -> None:
        self.now = max(1.0, self.now / 2) if throttled else min(float(self.most), self.now + 1)


class Lanes:
    """Runs a round's parts concurrently (the first in the calling thread)."""

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes
        self._pool = ThreadPoolExecutor(max_workers=lanes - 1, thread_name_prefix="write-lane") if lanes > 1 else None

    def run(self, parts: list[list[T]], apply: Callable[[list[T]], None]) -> None:
        """`apply` each part; returns when all are done, raising the first exception any of them raised."""
        if len(parts) <= 1 or self._pool is None:
            for part in parts:
                apply(part)
            return
        futures = [self._pool.submit(apply, part) for part in parts[1:]]
        error: BaseException | None = None
        try:
            apply(parts[0])
        except BaseException as exc:  # the other lanes are still waited for: none may outlive the round
            error = exc
        for f in futures:
            failed = f.exception()
            if failed is not None and error is None:
                error = failed
        if error is not None:
            raise error

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
