"""The consumer's warning when its group gives it no partition for long."""

from __future__ import annotations

from consumers.loop import GroupWatch


def test_no_partition_for_longer_than_the_limit_warns_with_the_groups_state_then_once_per_limit() -> None:
    w = GroupWatch(60.0)
    w.group = {"state": "up", "join_state": "wait-join", "rebalance_cnt": 3, "rebalance_reason": "group is rebalancing"}
    assert w.check(0.0, 0) is None  # the first poll without partitions starts the clock
    assert w.check(59.0, 0) is None
    warning = w.check(61.0, 0)
    assert warning is not None and "61 s" in warning and "wait-join" in warning and "3 rebalances" in warning
    assert w.check(100.0, 0) is None  # not on every poll
    assert w.check(122.0, 0) is not None


def test_an_assignment_resets_the_clock() -> None:
    w = GroupWatch(60.0)
    assert w.check(0.0, 0) is None
    assert w.check(50.0, 6) is None
    assert w.check(55.0, 0) is None
    assert w.check(100.0, 0) is None  # 45 s without partitions since the last assignment
    assert w.check(116.0, 0) is not None
