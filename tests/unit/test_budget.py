"""The request budget: each component keeps to its share of the application user's limit."""

from __future__ import annotations

import pytest

from dualwrite.budget import RequestBudget
from dualwrite.config import BudgetConfig, parse_config
from dualwrite.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_share_allows_its_rate_after_a_short_burst() -> None:
    clock = Clock()
    b = RequestBudget(6000, 300, share=0.5, headroom=0.9, clock=clock)  # 9 requests/s, 45 at once
    assert b.rate == pytest.approx(9.0) and b.capacity == pytest.approx(45.0)
    for _ in range(45):
        assert b.wait_s() == 0
        b.spend()
    assert b.wait_s() == pytest.approx(1 / 9)  # the 46th waits for its share
    b.spend(8)  # a burst beyond the share makes the next wait longer, it is not refused
    assert b.wait_s() == pytest.approx(1.0)
    clock.now += 1.0
    assert b.wait_s() == 0
    # Over any window, what a component spends stays within its share of the limit: the burst comes out
    # of the headroom. (Spending as fast as allowed from a full bucket, for one window.)
    fresh = RequestBudget(6000, 300, share=0.5, headroom=0.9, clock=clock)
    spent, end = 0, clock.now + 300
    while clock.now < end:
        clock.now += fresh.wait_s()
        fresh.spend()
        spent += 1
    assert spent <= 0.5 * 6000


def test_a_small_limit_keeps_its_burst_within_the_headroom() -> None:
    b = RequestBudget(300, 15, share=0.6, headroom=0.9, clock=Clock())
    assert b.rate * 15 + b.capacity <= 0.6 * 300 + 1e-9


def test_shares_are_checked_at_start_with_the_field_named() -> None:
    assert sum(BudgetConfig().shares.values()) <= 1
    for shares, why in (
        ({"consumer": 0.8, "dataverse-producer": 0.4}, "sum to 1.2"),
        ({"consumer": 0}, "more than 0"),
        ({"producer": 0.5}, "unknown component producer"),
    ):
        with pytest.raises(ConfigError, match=r"dataverse\.budget\.shares") as err:
            parse_config({"fo": _side(None), "dataverse": _side(shares)})
        assert why in str(err.value)


def _side(shares: dict[str, float] | None) -> dict[str, object]:
    auth = {"token_url": "http://127.0.0.1:1/token", "client_id": "c", "client_secret": "s"}
    side: dict[str, object] = {"url": "http://127.0.0.1:2", "auth": auth}
    if shares is not None:
        side["budget"] = {"shares": shares}
    return side


def test_a_429_holds_the_whole_share_until_its_retry_after() -> None:
    clock = Clock()
    b = RequestBudget(6000, 300, share=0.5, headroom=0.9, clock=clock)  # a full bucket: no wait
    assert b.wait_s() == 0
    b.hold(3.0)  # the service said Retry-After: 3
    assert b.wait_s() == pytest.approx(3.0)
    clock.now += 2.0
    assert b.wait_s() == pytest.approx(1.0)
    clock.now += 1.0
    assert b.wait_s() == 0
    b.spend(72)  # a bucket emptier than the hold asks for keeps its longer wait (28 requests short)
    before = b.wait_s()
    b.hold(0.5)
    assert b.wait_s() == pytest.approx(before)
