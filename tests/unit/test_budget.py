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
    b.spend(72)  # a bucket emptier than the hold asks for keeps its longer wait (a short hold never shortens it)
    before = b.wait_s()
    b.hold(0.5)
    assert b.wait_s() >= before


def test_a_429_halves_the_rate_once_per_retry_after_and_the_rate_grows_back_after_it() -> None:
    # The service allows less than the configured share: each 429 halves the rate (not each 429 of one burst),
    # down to a floor; after the hold it grows back linearly, so the rate settles under the real limit.
    clock = Clock()
    b = RequestBudget(6000, 300, share=0.5, headroom=0.9, clock=clock)  # 9 requests/s
    b.hold(2.0)
    assert b.rate == pytest.approx(4.5) and b.cuts == 1
    for _ in range(5):  # the other in-flight requests of the burst meet 429s too
        clock.now += 0.1
        b.hold(2.0)
    assert b.rate == pytest.approx(4.5) and b.cuts == 1
    assert b.capacity == pytest.approx(4.5 * 5)  # and bursts shrink with the rate
    clock.now += 2.0  # past the hold: it grows back by 1% of 9 requests/s per second
    before = b.rate
    clock.now += 10.0
    assert b.wait_s() >= 0 and b.rate == pytest.approx(before + 10 * 0.09)
    clock.now += 1000.0
    b.wait_s()
    assert b.rate == pytest.approx(9.0)  # never above the configured share
    for _ in range(20):  # a service that keeps answering 429
        clock.now += 3.0
        b.hold(1.0)
    assert b.rate == pytest.approx(9.0 * 0.05) and b.cuts == 21
    # Under a real limit below the share, the rate found stays within a factor of two of it.
    limit, clock.now = 3.0, 10_000.0  # the service allows 3 requests/s (30 per 10 s) to this component
    sent: list[float] = []
    rates = []
    for _ in range(3000):
        clock.now += b.wait_s() + 0.01
        b.spend()
        sent = [t for t in sent if t > clock.now - 10] + [clock.now]
        if len(sent) > limit * 10:
            b.hold(1.0)
        rates.append(b.rate)
    tail = rates[-1000:]
    assert limit / 2 <= sum(tail) / len(tail) <= limit * 1.5, sum(tail) / len(tail)


def test_a_429_of_another_limit_holds_but_keeps_the_rate() -> None:
    # Execution time or concurrency over its limit: wait as told, but sending fewer requests afterwards would
    # only leave what the limit allows unused (the changes wait for the share instead of going out).
    clock = Clock()
    b = RequestBudget(6000, 300, share=0.5, headroom=0.9, clock=clock)
    b.hold(2.0, cut=False)
    assert b.wait_s() == pytest.approx(2.0)
    assert b.rate == pytest.approx(9.0) and b.cuts == 0
    clock.now += 2.0
    assert b.wait_s() == 0


@pytest.mark.parametrize(
    ("code", "cut"),
    [("0x80072322", True), ("0x80072321", False), ("0x80072326", False), (None, True)],
)
def test_the_pool_cuts_the_rate_only_for_the_request_limit(code: str | None, cut: bool) -> None:
    import httpx

    from dualwrite.dataverse import UserPool

    class Token:
        def token(self) -> str:
            return "t"

        def invalidate(self) -> None:
            pass

    b = RequestBudget(6000, 300, share=0.5, headroom=0.9, clock=Clock())
    pool = UserPool([("auth", Token(), b)])  # type: ignore[list-item]
    body = {"error": {"code": code, "message": "over a limit"}} if code else {"error": {"message": "over"}}

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json=body, headers={"Retry-After": "2"})

    with httpx.Client(transport=httpx.MockTransport(answer), auth=pool) as c:
        assert c.get("http://127.0.0.1/api/data/v9.2/accounts").status_code == 429
    assert b.cuts == (1 if cut else 0)
    assert b.wait_s() > 1.5  # held either way
