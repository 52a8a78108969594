"""Write lanes: a round split by partition, each partition whole and in order in one lane; small rounds stay one."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumers.lanes import Lanes, Width, split


@given(
    st.lists(st.integers(min_value=0, max_value=11), max_size=400),
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=1, max_value=100),
)
def test_every_partition_is_whole_and_in_order_in_one_lane(partitions: list[int], lanes: int, min_records: int) -> None:
    changes = list(enumerate(partitions))  # (position in the round, partition)
    parts = split(changes, lambda c: c[1], lanes, min_records)
    assert sorted(c for p in parts for c in p) == changes  # each change once
    assert len(parts) <= lanes and all(parts)
    owner = {}
    for i, part in enumerate(parts):
        for _, partition in part:
            assert owner.setdefault(partition, i) == i  # a partition in one lane only
        for p in {c[1] for c in part}:
            mine = [c[0] for c in part if c[1] == p]
            assert mine == sorted(mine)  # in the round's order
    if len(parts) > 1:
        assert len(changes) // len(parts) >= min_records  # split only into lanes of about min_records or more


def test_a_small_round_stays_one_lane_and_a_big_one_spreads() -> None:
    small = [(i, i % 12) for i in range(60)]
    assert len(split(small, lambda c: c[1], 4, 50)) == 1
    big = [(i, i % 12) for i in range(480)]
    parts = split(big, lambda c: c[1], 4, 50)
    assert len(parts) == 4 and sorted(len(p) for p in parts) == [120, 120, 120, 120]


def test_lanes_run_at_once_and_the_first_error_is_raised_after_all_finished() -> None:
    lanes = Lanes(3)
    running, peak, done = [0], [0], []
    lock = threading.Lock()

    def apply(part: list[int]) -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
            done.append(part[0])
        if part[0] == 1:
            raise ValueError("lane 1 failed")

    try:
        lanes.run([[0], [2], [3]], apply)
        lanes.run([[5]], apply)
        with pytest.raises(ValueError, match="lane 1"):
            lanes.run([[0], [1], [2]], apply)
    finally:
        lanes.close()
    assert peak[0] == 3
    assert sorted(done) == [0, 0, 1, 2, 2, 3, 5]  # the failing round still waited for every lane


def test_width_starts_at_one_grows_per_calm_round_to_the_hint_and_halves_when_throttled() -> None:
    w = Width(8)
    assert w.allowed() == 1
    for _ in range(3):
        w.after_round(throttled=False)
    assert w.allowed() == 4 and w.allowed(hint=2) == 2 and w.allowed(hint=0) == 4
    for _ in range(10):
        w.after_round(throttled=False)
    assert w.allowed() == 8  # never above consumer.lanes
    w.after_round(throttled=True)
    assert w.allowed() == 4
    for _ in range(5):
        w.after_round(throttled=True)
    assert w.allowed() == 1  # never below one
