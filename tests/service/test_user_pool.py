"""More than one application user: Dataverse limits each on its own, so a component given a pool spreads its
requests over them, each user within its own budget. Against the stand-in's per-user limit (scaled down in
time), two users let a component make about twice the requests of one, none answered 429; a user the service
throttles takes only its own requests off, and each user is known by its WhoAmI."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dualwrite.config import DataverseConfig
from dualwrite.dataverse import DataverseClient
from standins import dataverse, token
from standins.server import BackgroundServer
from wiring.stack import CLIENT_ID, CLIENT_SECRET, TENANT

pytestmark = pytest.mark.service

LIMIT, WINDOW_S = 20, 2.0  # requests per user per window, as the stand-in enforces them
SECOND, SECOND_SECRET = "dualwrite-2", "dualwrite-2-secret"


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[str, str]]:
    tokens = BackgroundServer(token.create_app({CLIENT_ID: CLIENT_SECRET, SECOND: SECOND_SECRET})).start()
    dv = BackgroundServer(
        dataverse.create_app(dataverse.Settings(seed=True, max_requests=LIMIT, window_s=WINDOW_S))
    ).start()
    try:
        yield tokens.url, dv.url
    finally:
        dv.stop()
        tokens.stop()


def config(servers: tuple[str, str], users: int, requests: int = LIMIT) -> DataverseConfig:
    token_url, dv_url = servers
    auth: dict[str, Any] = {"token_url": f"{token_url}/{TENANT}/oauth2/v2.0/token"}
    more = {"second": {**auth, "client_id": SECOND, "client_secret": SECOND_SECRET}} if users == 2 else {}
    return DataverseConfig.model_validate(
        {
            "url": dv_url,
            "auth": {**auth, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
            "more_users": more,
            # the whole limit of each user is this component's
            "budget": {"requests": requests, "window_s": WINDOW_S, "headroom": 0.9, "shares": {"consumer": 1.0}},
        }
    )


def stats(servers: tuple[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{servers[1]}/_standin/stats", timeout=5).json()
    return body


def paced_requests(client: DataverseClient, seconds: float) -> tuple[int, int]:
    """Requests made as fast as the budget lets them out for `seconds`: (made, answered 429)."""
    assert client.budget is not None
    made = throttled = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        wait = client.budget.wait_s()
        if wait > 0:
            time.sleep(min(wait, deadline - time.monotonic(), 0.05))
            continue
        resp = client.http.get(f"{client.base}/cdm_companies", params={"$select": "cdm_companycode"})
        made += 1
        throttled += resp.status_code == 429
    return made, throttled


def test_two_application_users_make_about_twice_the_requests_of_one_and_none_is_throttled(
    servers: tuple[str, str],
) -> None:
    before = stats(servers)["requests_by"]
    one = DataverseClient(config(servers, 1), "consumer")
    try:
        alone, throttled_alone = paced_requests(one, 3 * WINDOW_S)
    finally:
        one.close()
    time.sleep(WINDOW_S)  # the first user's window empties
    two = DataverseClient(config(servers, 2), "consumer")
    try:
        pooled, throttled_pooled = paced_requests(two, 3 * WINDOW_S)
    finally:
        two.close()
    assert throttled_alone == 0 and throttled_pooled == 0, (throttled_alone, throttled_pooled)
    # Each user's share: 18 requests per 2 s window plus a burst of 2 at the start; 6 s of it is about 56.
    assert 45 <= alone <= 58, alone
    assert pooled >= 1.8 * alone, (alone, pooled)
    after = stats(servers)["requests_by"]
    first = after.get(CLIENT_ID, 0) - before.get(CLIENT_ID, 0) - alone
    second = after.get(SECOND, 0) - before.get(SECOND, 0)
    assert first + second == pooled and abs(first - second) <= 0.2 * pooled, (first, second)


def test_a_throttled_user_takes_only_its_own_requests_off(servers: tuple[str, str]) -> None:
    time.sleep(WINDOW_S)
    # The first user's limit is used up by someone else (another application on the same user).
    bearer = token.issue_token(CLIENT_ID, servers[1], TENANT, token.DEFAULT_SIGNING_KEY)
    squatter = httpx.Client(base_url=f"{servers[1]}/api/data/v9.2/", headers={"Authorization": f"Bearer {bearer}"})
    with squatter:
        while squatter.get("WhoAmI").status_code != 429:
            pass
    pool = DataverseClient(config(servers, 2), "consumer")
    try:
        made, throttled = paced_requests(pool, 2 * WINDOW_S)
        first_budget, second_budget = (b for _, _, b in pool.users.users)
        assert first_budget is not None and second_budget is not None
    finally:
        pool.close()
    # One 429 (or a few in flight at once) holds the first user; the second goes on within its own share.
    assert 1 <= throttled <= 2, throttled
    assert first_budget.cuts == 1 and second_budget.cuts == 0
    assert made - throttled >= 30, made  # the second user's share: 18 per window, and a burst


def test_each_user_is_known_by_its_whoami(servers: tuple[str, str]) -> None:
    time.sleep(WINDOW_S)
    pool = DataverseClient(config(servers, 2), "consumer")
    try:
        assert pool.whoami("auth") == token.object_id(CLIENT_ID)
        assert pool.whoami("second") == token.object_id(SECOND)
    finally:
        pool.close()
