"""The token endpoint says no for a while (throttled, secret rotated, an outage): changes wait and arrive
once it says yes again; none is dead-lettered for it (issue 9, point 8)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dualwrite import dlq, kafka
from wiring.stack import LocalStack, dv_company_id, dv_one, eventually, fo_create_customer

pytestmark = pytest.mark.service

LIFETIME_S = 2  # tokens that expire within the test, so the clients' cached ones do not hide the refusal


def start(state_dir: Path, **config: Any) -> LocalStack:
    """A stack whose components only ever get short-lived tokens."""
    s = LocalStack.start(state_dir, with_components=False, **config)
    try:
        assert httpx.put(f"{token_url(s)}/_standin/lifetime", json={"expires_in": LIFETIME_S}).status_code == 200
        s.start_components()
    except BaseException:
        s.stop()
        raise
    return s


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = start(tmp_path_factory.mktemp("token-refusal"))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture()
def impatient_stack(tmp_path: Path) -> Iterator[LocalStack]:
    """Two attempts and quick backoff: a transient error of a record is dead-lettered within a second or two."""
    retry = {"initial_backoff_s": 0.05, "max_backoff_s": 0.2, "max_attempts": 2}
    s = start(tmp_path, consumer={"retry": retry})
    try:
        yield s
    finally:
        s.stop()


def token_url(s: LocalStack) -> str:
    return str(s.servers["token"].url)


def account(dv: httpx.Client, number: str) -> dict[str, Any] | None:
    cid = dv_company_id(dv, "usmf")
    return dv_one(dv, "accounts", f"accountnumber eq '{number}' and _msdyn_company_value eq {cid}") if cid else None


def create_customers(fo: httpx.Client, prefix: str, n: int) -> list[str]:
    numbers = [f"{prefix}{i}" for i in range(n)]
    for number in numbers:
        fo_create_customer(fo, number)
    return numbers


def refusing_while_changes_arrive(s: LocalStack, prefix: str, refusal: dict[str, Any]) -> list[str]:
    """Refuse tokens, let the clients' last ones expire, change F&O; the changes must not arrive yet."""
    with s.user_client("fo") as fo, s.user_client("dataverse") as dv:
        eventually(lambda: account(dv, "US-025"), timeout_s=60, what="the seed in Dataverse")
        assert httpx.post(f"{token_url(s)}/_standin/refuse", json=refusal).status_code == 200
        time.sleep(LIFETIME_S + 0.5)
        numbers = create_customers(fo, prefix, 5)
        time.sleep(4.0)
        assert httpx.get(f"{token_url(s)}/_standin/stats").json()["refused"] > 0
        assert not any(account(dv, n) for n in numbers), "written without a token?"
    assert httpx.delete(f"{token_url(s)}/_standin/refuse").status_code == 200
    return numbers


def all_arrived_and_none_dead_lettered(s: LocalStack, numbers: list[str]) -> None:
    topic = kafka.dlq_topic(kafka.topic(s.cfg.kafka.topic_prefix, "fo", "CustomersV3"))
    with s.user_client("dataverse") as dv:

        def settled() -> tuple[list[bytes | None], bool] | None:
            mine = {f"usmf|{n}".encode() for n in numbers}
            dead = [d.key for d in dlq.read_all(s.cfg.kafka, topic, idle_s=0.5) if d.key in mine]
            arrived = all(account(dv, n) for n in numbers)
            return (dead, arrived) if dead or arrived else None

        dead, arrived = eventually(settled, timeout_s=90, what="every change in Dataverse (or in the DLQ)")
    assert not dead, f"dead-lettered: {dead}"
    assert arrived


@pytest.mark.parametrize(
    "refusal",
    [
        {"status": 401, "error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret."},
        {"status": 429, "error": "temporarily_unavailable", "error_description": "AADSTS50196: loop", "retry_after": 1},
        {"status": 503, "error": "temporarily_unavailable", "error_description": "AADSTS90033: unavailable"},
    ],
    ids=["wrong-secret", "throttled", "unavailable"],
)
def test_changes_wait_for_a_token_and_arrive_when_the_endpoint_recovers(
    stack: LocalStack, refusal: dict[str, Any]
) -> None:
    numbers = refusing_while_changes_arrive(stack, f"T-TOK-{refusal['status']}-", refusal)
    all_arrived_and_none_dead_lettered(stack, numbers)


def test_no_record_is_dead_lettered_for_a_refused_token_however_few_attempts_the_loop_allows(
    impatient_stack: LocalStack,
) -> None:
    numbers = refusing_while_changes_arrive(impatient_stack, "T-TOK-IMP-", {"status": 400, "error": "invalid_grant"})
    all_arrived_and_none_dead_lettered(impatient_stack, numbers)
