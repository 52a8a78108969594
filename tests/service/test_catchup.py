"""Changes that no event brings: F&O set-based writes (caught up over OData by the fo-producer) and the
deletions Dataverse change tracking forgets when a delta token expires (found against the producer's id index)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from dualwrite import metrics
from wiring.stack import LocalStack, eventually
from wiring.stack import dv_account as account
from wiring.stack import fo_customer as customer

pytestmark = pytest.mark.service

CATCHUP_S = 1.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = LocalStack.start(tmp_path_factory.mktemp("catchup"), fo_producer={"catchup_interval_s": CATCHUP_S})
    try:
        yield s
    finally:
        s.stop()


def standin(stack: LocalStack, side: str, route: str, body: dict[str, object] | None = None) -> dict[str, object]:
    resp = httpx.post(f"{stack.servers[side].url}/_standin/{route}", json=body or {}, timeout=10)
    assert resp.status_code == 200, resp.text
    result: dict[str, object] = resp.json()
    return result


def events_raised(stack: LocalStack) -> int:
    listing = httpx.get(f"{stack.servers['fo'].url}/_standin/events", params={"after": 0, "limit": 100000}).json()
    return len(listing["events"])


def test_a_set_based_update_and_insert_reach_dataverse_by_catch_up(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client
) -> None:
    eventually(lambda: account(dv, "US-003") and account(dv, "US-004"), what="the seeded customers in Dataverse")
    stack.settle()
    before, published = events_raised(stack), caught_up()
    result = standin(
        stack,
        "fo",
        "set-based",
        {
            "entity_set": "CustomersV3",
            "filter": "dataAreaId eq 'usmf' and (CustomerAccount eq 'US-003' or CustomerAccount eq 'US-004')",
            "changes": {"CreditRating": "SET-BASED"},
            "insert": [
                {
                    "dataAreaId": "usmf",
                    "CustomerAccount": "T-SETBASED-1",
                    "OrganizationName": "Inserted by insert_recordset",
                    "CustomerGroupId": "30",
                    "SalesCurrencyCode": "USD",
                    "PartyType": "Organization",
                }
            ],
        },
    )
    assert result == {"updated": 2, "inserted": 1}
    assert events_raised(stack) == before, "a set-based write raises no data event"
    started = time.monotonic()
    for number in ("US-003", "US-004"):
        eventually(
            lambda n=number: (account(dv, n) or {}).get("msdyn_creditrating") == "SET-BASED",
            timeout_s=4 * CATCHUP_S + 10,
            what=f"{number}'s set-based change in Dataverse",
        )
    eventually(lambda: account(dv, "T-SETBASED-1"), timeout_s=4 * CATCHUP_S + 10, what="the inserted customer")
    assert time.monotonic() - started < 3 * CATCHUP_S + 10
    assert (customer(fo, "US-003") or {}).get("CreditRating") == "SET-BASED"
    time.sleep(3 * CATCHUP_S)  # the overlapping windows read the same rows again: they are not published twice
    assert caught_up() - published == 3


def caught_up() -> float:
    """Rows of CustomersV3 the catch-up published (the components run in this process)."""
    value = metrics.REGISTRY.get_sample_value(
        "dualwrite_fo_catchup_rows_total", {"entity": "CustomersV3", "outcome": "published"}
    )
    return value or 0.0


def test_deletions_in_the_gap_of_an_expired_delta_token_reach_fo(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client
) -> None:
    numbers = ["US-010", "US-011", "US-012"]
    rows = {n: eventually(lambda n=n: account(dv, n), what=f"{n} in Dataverse") for n in numbers}
    stack.settle()
    stack.stop_components(("dataverse-producer",))
    try:
        for n in numbers[:2]:  # deleted while nobody read change tracking
            assert dv.delete(f"accounts({rows[n]['accountid']})").status_code == 204
        r = dv.patch(f"accounts({rows['US-012']['accountid']})", json={"msdyn_creditrating": "IN THE GAP"})
        assert r.status_code == 204
        standin(stack, "dataverse", "expire-delta-tokens")
    finally:
        stack.start_components(("dataverse-producer",))
    for n in numbers[:2]:
        eventually(lambda n=n: customer(fo, n) is None, timeout_s=30, what=f"{n} deleted in F&O")
    eventually(
        lambda: (customer(fo, "US-012") or {}).get("CreditRating") == "IN THE GAP", timeout_s=30, what="the update"
    )
    assert customer(fo, "US-013") is not None  # a row the gap did not touch stays


def test_an_expired_token_answers_the_documented_error(stack: LocalStack, dv: httpx.Client) -> None:
    first = dv.get("cdm_companies", headers={"Prefer": "odata.track-changes"})
    link = first.json()["@odata.deltaLink"]
    time.sleep(1.1)  # tokens carry whole seconds
    standin(stack, "dataverse", "expire-delta-tokens")
    resp = dv.get(link)
    assert resp.status_code == 400
    assert resp.json()["error"] == {
        "code": "0x80044352",
        "message": "Version stamp associated with the client has expired. Please perform a full sync.",
    }
