"""Company striping: only the companies enabled for sync (`companies:`) are read or written.

Here only usmf is enabled; demf exists on both sides but none of its records may cross."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from wiring.stack import LocalStack, eventually

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = LocalStack.start(tmp_path_factory.mktemp("companies"), companies=["usmf"])
    try:
        yield s
    finally:
        s.stop()


def _codes(dv: httpx.Client) -> set[str]:
    return {r["cdm_companycode"] for r in dv.get("cdm_companies").json()["value"]}


def _account(dv: httpx.Client, number: str) -> dict[str, Any] | None:
    rows = dv.get("accounts", params={"$filter": f"accountnumber eq '{number}'"}).json()["value"]
    return rows[0] if rows else None


def _customer(fo: httpx.Client, company: str, number: str) -> dict[str, Any] | None:
    resp = fo.get(f"CustomersV3(dataAreaId='{company}',CustomerAccount='{number}')")
    return resp.json() if resp.status_code == 200 else None


def test_only_the_enabled_company_is_read(stack: LocalStack) -> None:
    dv = stack.user_client("dataverse")
    eventually(lambda: _account(dv, "US-025"), what="the usmf customers")
    eventually(lambda: dv.get("msdyn_vendors").json()["value"], what="the usmf vendors")
    assert _codes(dv) == {"usmf"}
    numbers = {r["accountnumber"] for r in dv.get("accounts").json()["value"]}
    assert numbers and all(n.startswith("US-") for n in numbers)
    vendors = {r["msdyn_vendoraccountnumber"] for r in dv.get("msdyn_vendors").json()["value"]}
    assert vendors and all(n.startswith("US-") for n in vendors)
    # Global tables are not company-specific and do sync.
    assert dv.get("uoms").json()["value"]


def test_records_of_another_company_are_neither_read_nor_written(stack: LocalStack) -> None:
    fo = stack.user_client("fo")
    dv = stack.user_client("dataverse")
    # F&O: a demf change is not sent; a usmf change made after it is.
    assert (
        fo.patch("CustomersV3(dataAreaId='demf',CustomerAccount='DE-001')", json={"SalesMemo": "x"}).status_code < 300
    )
    assert (
        fo.patch("CustomersV3(dataAreaId='usmf',CustomerAccount='US-001')", json={"SalesMemo": "y"}).status_code < 300
    )
    eventually(lambda: (a := _account(dv, "US-001")) and a["description"] == "y", what="the usmf change")
    assert _account(dv, "DE-001") is None

    # Dataverse: someone adds the demf company and an account in it; neither reaches F&O.
    resp = dv.post("cdm_companies", json={"cdm_companycode": "demf", "cdm_name": "Germany (not enabled)"})
    assert resp.status_code in (201, 204), resp.text
    demf = dv.get("cdm_companies", params={"$filter": "cdm_companycode eq 'demf'"}).json()["value"][0]
    usmf = dv.get("cdm_companies", params={"$filter": "cdm_companycode eq 'usmf'"}).json()["value"][0]
    for company, number in ((demf, "DE-900"), (usmf, "US-900")):
        body = {
            "accountnumber": number,
            "name": f"Account {number}",
            "customertypecode": 3,
            "msdyn_company@odata.bind": f"/cdm_companies({company['cdm_companyid']})",
            "transactioncurrencyid@odata.bind": "/transactioncurrencies(isocurrencycode='USD')",
        }
        if number.startswith("US"):
            group = dv.get("msdyn_customergroups", params={"$filter": "msdyn_groupid eq '10'"}).json()["value"][0]
            body["msdyn_customergroupid@odata.bind"] = f"/msdyn_customergroups({group['msdyn_customergroupid']})"
        assert dv.post("accounts", json=body).status_code in (201, 204)
    eventually(lambda: _customer(fo, "usmf", "US-900"), what="the usmf account in F&O")
    assert _customer(fo, "demf", "DE-900") is None
    # The demf legal entity in F&O was not touched by the Dataverse company row either.
    assert fo.get("LegalEntities(LegalEntityId='demf')").json()["Name"] != "Germany (not enabled)"


def test_the_enabled_company_itself_syncs_both_ways(stack: LocalStack) -> None:
    fo = stack.user_client("fo")
    dv = stack.user_client("dataverse")

    def dv_name() -> str:
        rows = dv.get("cdm_companies", params={"$filter": "cdm_companycode eq 'usmf'"}).json()["value"]
        return str(rows[0]["cdm_name"]) if rows else ""

    assert fo.patch("LegalEntities(LegalEntityId='usmf')", json={"Name": "Contoso USA (renamed)"}).status_code < 300
    eventually(lambda: dv_name() == "Contoso USA (renamed)", what="the new name in Dataverse")
    row = dv.get("cdm_companies", params={"$filter": "cdm_companycode eq 'usmf'"}).json()["value"][0]
    time.sleep(1.1)  # a later second than F&O's edit (both keep whole seconds; a tie goes to F&O)
    assert dv.patch(f"cdm_companies({row['cdm_companyid']})", json={"cdm_name": "Contoso USA"}).status_code < 300
    eventually(
        lambda: fo.get("LegalEntities(LegalEntityId='usmf')").json()["Name"] == "Contoso USA", what="F&O renamed back"
    )
