"""A create whose answer was lost, and the row it made deleted by a person before dualwrite could look:
the person's delete is kept (issue 9's last known gap), and a row a person makes instead is kept too."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from wiring.stack import CLIENT_ID, LocalStack, eventually
from wiring.stack import dv_account as account
from wiring.stack import fo_customer as customer

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    faults = {"callers": [CLIENT_ID], "api_prefix": "/api/data", "dataverse": True}  # none until a test asks
    s = LocalStack.start(
        tmp_path_factory.mktemp("cut-short"),
        dataverse_settings={"faults": faults},
        # (the first retry after the lost answer comes after the test's next step)
        consumer={"retry": {"initial_backoff_s": 1.0, "max_backoff_s": 1.0, "max_attempts": 200}},
    )
    try:
        yield s
    finally:
        s.stop()


def faults(stack: LocalStack, **rates: Any) -> None:
    resp = httpx.post(f"{stack.servers['dataverse'].url}/_standin/faults", json=rates, timeout=5)
    assert resp.status_code == 200, resp.text


def new_customer(fo: httpx.Client, number: str) -> None:
    body = {
        "dataAreaId": "usmf",
        "CustomerAccount": number,
        "OrganizationName": f"Org {number}",
        "CustomerGroupId": "30",
        "SalesCurrencyCode": "USD",
        "PartyType": "Organization",
    }
    resp = fo.post("CustomersV3", json=body)
    assert resp.status_code == 201, resp.text


def made_unanswered(stack: LocalStack, fo: httpx.Client, dv: httpx.Client, number: str) -> dict[str, Any]:
    """A customer made in F&O whose account dualwrite creates in Dataverse without hearing the answer (its
    writes run slowly, then their connections drop); then every request of dualwrite's is slow, so the
    first look after the lost answer comes after what the test does next. The account, as a person sees it."""
    faults(stack, slow_rate=1.0, slow_s=3.0, drop_rate=1.0, methods=["POST", "PATCH", "DELETE"])
    try:
        new_customer(fo, number)
        row = eventually(lambda: account(dv, number), timeout_s=30, interval_s=0.01, what=f"{number} made")
        faults(stack, slow_rate=1.0, slow_s=3.0, drop_rate=0.0, methods=None)
        return row
    except BaseException:
        faults(stack, slow_rate=0.0, drop_rate=0.0, methods=None)
        raise


def healthy(stack: LocalStack) -> None:
    faults(stack, slow_rate=0.0, drop_rate=0.0, methods=None)


def test_a_persons_delete_of_the_row_a_create_made_unanswered_is_kept(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client
) -> None:
    number = "T-CUT-1"
    row = made_unanswered(stack, fo, dv, number)
    assert dv.delete(f"accounts({row['accountid']})").status_code == 204  # a person deletes it meanwhile
    healthy(stack)
    # dualwrite finds no row and may make it again; the delete of the first row then takes the record.
    eventually(lambda: customer(fo, number) is None, timeout_s=40, what=f"{number} deleted in F&O")
    eventually(lambda: account(dv, number) is None, timeout_s=20, what=f"{number} gone from Dataverse")
    time.sleep(3.0)  # change tracking brings the deletes back
    stack.settle()
    assert customer(fo, number) is None and account(dv, number) is None, "the person's delete was undone"


def test_a_row_a_person_makes_after_deleting_the_one_a_create_made_unanswered_is_kept(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client
) -> None:
    number = "T-CUT-2"
    row = made_unanswered(stack, fo, dv, number)
    assert dv.delete(f"accounts({row['accountid']})").status_code == 204
    mine = {  # a customer account (the map's filter) with what F&O requires of a customer
        "name": row["name"],
        "accountnumber": number,
        "customertypecode": 3,
        "msdyn_company@odata.bind": f"/cdm_companies({row['_msdyn_company_value']})",
        "msdyn_customergroupid@odata.bind": f"/msdyn_customergroups({row['_msdyn_customergroupid_value']})",
        "transactioncurrencyid@odata.bind": "/transactioncurrencies(isocurrencycode='USD')",
    }
    resp = dv.post("accounts", json=mine)  # and makes the account anew, by hand
    assert resp.status_code in (201, 204), resp.text
    healthy(stack)
    time.sleep(3.0)
    stack.settle()
    time.sleep(3.0)  # the delete of the first row comes through change tracking
    stack.settle()
    assert customer(fo, number) is not None, "the record was deleted in F&O"
    now = account(dv, number)
    assert now is not None and now["accountid"] != row["accountid"], now
