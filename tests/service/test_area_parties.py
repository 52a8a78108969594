"""Parties area: terms of payment, payment methods, vendor groups, vendors and person customers (contacts),
both directions over the real wire."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from wiring.stack import LocalStack, dv_company_id, eventually

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = LocalStack.start(tmp_path_factory.mktemp("parties"))
    try:
        yield s
    finally:
        s.stop()


def dv_row(dv: httpx.Client, entity_set: str, column: str, value: str, company: str = "usmf") -> dict[str, Any] | None:
    cid = dv_company_id(dv, company)
    if not cid:
        return None
    flt = f"{column} eq '{value}' and _msdyn_company_value eq {cid}"
    rows = dv.get(entity_set, params={"$filter": flt}).json()["value"]
    return rows[0] if rows else None


def dv_key_of(dv: httpx.Client, entity_set: str, guid: str | None, column: str) -> Any:
    """The alternate-key value of the row a lookup points at."""
    assert guid, f"lookup to {entity_set} is empty"
    return dv.get(f"{entity_set}({guid})").json()[column]


def fo_row(fo: httpx.Client, entity_set: str, company: str = "usmf", **key: str) -> dict[str, Any] | None:
    keys = ",".join([f"dataAreaId='{company}'", *(f"{k}='{v}'" for k, v in key.items())])
    resp = fo.get(f"{entity_set}({keys})")
    return resp.json() if resp.status_code == 200 else None


def bind(dv: httpx.Client, entity_set: str, column: str, value: str, company: str = "usmf") -> str:
    row = eventually(lambda: dv_row(dv, entity_set, column, value, company), what=f"{entity_set} {value}")
    pk = next(k for k in row if k.endswith("id") and k[:-2] + "s" == entity_set)
    return f"/{entity_set}({row[pk]})"


def test_seeded_rows_arrive_with_their_lookups(stack: LocalStack, dv: httpx.Client) -> None:
    net45 = eventually(lambda: dv_row(dv, "msdyn_paymentterms", "msdyn_name", "Net45", "demf"), what="Net45 in demf")
    assert net45["msdyn_days"] == 45 and net45["msdyn_description"] == "Net 45 days"
    cod = eventually(lambda: dv_row(dv, "msdyn_paymentterms", "msdyn_name", "COD"), what="COD")
    assert cod["msdyn_iscashpayment"] is True
    method = eventually(lambda: dv_row(dv, "msdyn_customerpaymentmethods", "msdyn_name", "TRANSFER"), what="TRANSFER")
    assert method["msdyn_description"] == "Bank transfer"
    eventually(lambda: dv_row(dv, "msdyn_vendorpaymentmethods", "msdyn_name", "CHECK"), what="vendor method CHECK")

    group = eventually(lambda: dv_row(dv, "msdyn_vendorgroups", "msdyn_vendorgroup", "20"), what="vendor group 20")
    assert dv_key_of(dv, "msdyn_paymentterms", group["_msdyn_paymentterms_value"], "msdyn_name") == "Net45"

    vendor = eventually(
        lambda: dv_row(dv, "msdyn_vendors", "msdyn_vendoraccountnumber", "DE-102", "demf"), what="DE-102"
    )
    assert vendor["msdyn_name"] == "Contoso Office Supply" and float(vendor["msdyn_vendorcreditlimit"]) == 20000
    assert dv_key_of(dv, "msdyn_vendorgroups", vendor["_msdyn_vendorgroupid_value"], "msdyn_vendorgroup") == "30"
    assert dv_key_of(dv, "transactioncurrencies", vendor["_msdyn_currencycode_value"], "isocurrencycode") == "EUR"
    assert dv_key_of(dv, "msdyn_vendorpaymentmethods", vendor["_msdyn_vendorpaymentmethod_value"], "msdyn_name") == (
        "TRANSFER"
    )
    assert vendor["msdyn_onholdstatus"] == 192350000 and vendor["msdyn_isperson"] is False

    # Person customers become contacts, organization customers accounts, and neither the other.
    contact = eventually(lambda: dv_row(dv, "contacts", "msdyn_contactpersonid", "US-502"), what="contact US-502")
    assert (contact["firstname"], contact["lastname"]) == ("Jamie", "Reding")
    assert contact["gendercode"] == 1 and contact["familystatuscode"] == 1 and contact["msdyn_sellable"] is True
    assert contact["address1_city"] == "Redmond" and contact["address1_addresstypecode"] == 3
    assert dv_key_of(dv, "msdyn_paymentterms", contact["_msdyn_paymentterms_value"], "msdyn_name") == "Net10"
    account = eventually(
        lambda: (a := dv_row(dv, "accounts", "accountnumber", "US-002")) and a.get("_msdyn_paymentterm_value") and a,
        what="account US-002 with its terms of payment",
    )
    assert dv_key_of(dv, "msdyn_paymentterms", account["_msdyn_paymentterm_value"], "msdyn_name") == "Net10"
    assert dv_key_of(
        dv, "msdyn_customerpaymentmethods", account["_msdyn_customerpaymentmethod_value"], "msdyn_name"
    ) == ("CHECK")
    assert dv_row(dv, "accounts", "accountnumber", "US-502") is None
    assert dv_row(dv, "contacts", "msdyn_contactpersonid", "US-002") is None


def test_payment_terms_both_ways(stack: LocalStack, fo: httpx.Client, dv: httpx.Client) -> None:
    body = {"dataAreaId": "usmf", "Name": "Net60", "Description": "Net 60 days", "NumberOfDays": 60}
    assert fo.post("PaymentTerms", json=body).status_code == 201
    row = eventually(lambda: dv_row(dv, "msdyn_paymentterms", "msdyn_name", "Net60"), what="Net60 in Dataverse")
    assert row["msdyn_days"] == 60 and row["msdyn_iscashpayment"] is False
    fo.patch("PaymentTerms(dataAreaId='usmf',Name='Net60')", json={"Description": "Sixty", "IsCashPayment": "Yes"})
    eventually(
        lambda: (
            (r := dv_row(dv, "msdyn_paymentterms", "msdyn_name", "Net60"))
            and r["msdyn_description"] == "Sixty"
            and r["msdyn_iscashpayment"] is True
        ),
        what="Net60 update",
    )
    # Dataverse -> F&O: create, update, delete
    cid = dv_company_id(dv, "usmf")
    resp = dv.post(
        "msdyn_paymentterms",
        json={"msdyn_name": "Net90", "msdyn_days": 90, "msdyn_company@odata.bind": f"/cdm_companies({cid})"},
    )
    assert resp.status_code in (201, 204), resp.text
    fo_terms = eventually(lambda: fo_row(fo, "PaymentTerms", Name="Net90"), what="Net90 in F&O")
    assert fo_terms["NumberOfDays"] == 90 and fo_terms["IsCashPayment"] == "No"
    guid = dv_row(dv, "msdyn_paymentterms", "msdyn_name", "Net90")["msdyn_paymenttermid"]  # type: ignore[index]
    dv.patch(f"msdyn_paymentterms({guid})", json={"msdyn_description": "Ninety days"})
    eventually(
        lambda: (r := fo_row(fo, "PaymentTerms", Name="Net90")) and r["Description"] == "Ninety days", what="update"
    )
    assert dv.delete(f"msdyn_paymentterms({guid})").status_code == 204
    eventually(lambda: fo_row(fo, "PaymentTerms", Name="Net90") is None, what="Net90 deleted in F&O")
    assert fo.delete("PaymentTerms(dataAreaId='usmf',Name='Net60')").status_code == 204
    eventually(lambda: dv_row(dv, "msdyn_paymentterms", "msdyn_name", "Net60") is None, what="Net60 deleted")


def test_vendor_groups_and_vendors_from_fo(stack: LocalStack, fo: httpx.Client, dv: httpx.Client) -> None:
    group = {
        "dataAreaId": "demf",
        "VendorGroupId": "40",
        "Description": "Raw material",
        "DefaultPaymentTermName": "M15",
    }
    assert fo.post("VendorGroups", json=group).status_code == 201
    vendor = {
        "dataAreaId": "demf",
        "VendorAccountNumber": "DE-900",
        "VendorOrganizationName": "Rohstoff GmbH",
        "VendorGroupId": "40",
        "CurrencyCode": "EUR",
        "OnHoldStatus": "Payment",
        "DefaultPaymentTermsName": "Net30",
        "InvoiceVendorAccountNumber": "DE-101",
    }
    assert fo.post("VendorsV2", json=vendor).status_code == 201
    row = eventually(
        lambda: dv_row(dv, "msdyn_vendors", "msdyn_vendoraccountnumber", "DE-900", "demf"), what="DE-900 in Dataverse"
    )
    assert row["msdyn_name"] == "Rohstoff GmbH" and row["msdyn_onholdstatus"] == 192350003
    assert dv_key_of(dv, "msdyn_vendorgroups", row["_msdyn_vendorgroupid_value"], "msdyn_vendorgroup") == "40"
    assert dv_key_of(
        dv, "msdyn_vendors", row["_msdyn_invoicevendoraccountnumber_value"], "msdyn_vendoraccountnumber"
    ) == ("DE-101")
    grp = dv_row(dv, "msdyn_vendorgroups", "msdyn_vendorgroup", "40", "demf")
    assert grp is not None and dv_key_of(dv, "msdyn_paymentterms", grp["_msdyn_paymentterms_value"], "msdyn_name") == (
        "M15"
    )
    fo.patch("VendorsV2(dataAreaId='demf',VendorAccountNumber='DE-900')", json={"VendorGroupId": "10"})
    eventually(
        lambda: (
            dv_key_of(
                dv,
                "msdyn_vendorgroups",
                dv_row(dv, "msdyn_vendors", "msdyn_vendoraccountnumber", "DE-900", "demf")[
                    "_msdyn_vendorgroupid_value"
                ],  # type: ignore[index]
                "msdyn_vendorgroup",
            )
            == "10"
        ),
        what="vendor group change",
    )
    assert fo.delete("VendorsV2(dataAreaId='demf',VendorAccountNumber='DE-900')").status_code == 204
    eventually(
        lambda: dv_row(dv, "msdyn_vendors", "msdyn_vendoraccountnumber", "DE-900", "demf") is None, what="deleted"
    )
    # The same account number in the other company is another record and is untouched.
    assert dv_row(dv, "msdyn_vendors", "msdyn_vendoraccountnumber", "US-101", "usmf") is not None


def test_vendors_from_dataverse(stack: LocalStack, fo: httpx.Client, dv: httpx.Client) -> None:
    cid = dv_company_id(dv, "usmf")
    body = {
        "msdyn_vendoraccountnumber": "US-950",
        "msdyn_name": "Cloud Vendor Inc.",
        "msdyn_isperson": False,
        "msdyn_company@odata.bind": f"/cdm_companies({cid})",
        "msdyn_vendorgroupid@odata.bind": bind(dv, "msdyn_vendorgroups", "msdyn_vendorgroup", "30"),
        "msdyn_paymentterms@odata.bind": bind(dv, "msdyn_paymentterms", "msdyn_name", "Net10"),
        "msdyn_currencycode@odata.bind": "/transactioncurrencies(isocurrencycode='USD')",
        "msdyn_isonetimevendor": True,
    }
    resp = dv.post("msdyn_vendors", json=body)
    assert resp.status_code in (201, 204), resp.text
    row = eventually(lambda: fo_row(fo, "VendorsV2", VendorAccountNumber="US-950"), what="US-950 in F&O")
    assert row["VendorOrganizationName"] == "Cloud Vendor Inc." and row["VendorGroupId"] == "30"
    assert row["DefaultPaymentTermsName"] == "Net10" and row["CurrencyCode"] == "USD"
    assert row["IsOneTimeVendor"] == "Yes" and row["VendorPartyType"] == "Organization"
    guid = dv_row(dv, "msdyn_vendors", "msdyn_vendoraccountnumber", "US-950")["msdyn_vendorid"]  # type: ignore[index]
    dv.patch(f"msdyn_vendors({guid})", json={"msdyn_addresscity": "Bellevue", "msdyn_vendorcreditlimit": 7500})
    eventually(
        lambda: (
            (r := fo_row(fo, "VendorsV2", VendorAccountNumber="US-950"))
            and r["AddressCity"] == "Bellevue"
            and float(r["CreditLimit"]) == 7500
        ),
        what="vendor update in F&O",
    )
    assert dv.delete(f"msdyn_vendors({guid})").status_code == 204
    eventually(lambda: fo_row(fo, "VendorsV2", VendorAccountNumber="US-950") is None, what="vendor deleted in F&O")


def test_person_customers_and_contacts_both_ways(stack: LocalStack, fo: httpx.Client, dv: httpx.Client) -> None:
    person = {
        "dataAreaId": "usmf",
        "CustomerAccount": "US-777",
        "PartyType": "Person",
        "PersonFirstName": "Ada",
        "PersonLastName": "Lovelace",
        "PersonGender": "Female",
        "PersonMaritalStatus": "Married",
        "CustomerGroupId": "30",
        "SalesCurrencyCode": "USD",
        "AddressCity": "London",
    }
    assert fo.post("CustomersV3", json=person).status_code == 201
    row = eventually(lambda: dv_row(dv, "contacts", "msdyn_contactpersonid", "US-777"), what="contact US-777")
    assert (row["firstname"], row["lastname"], row["gendercode"], row["familystatuscode"]) == ("Ada", "Lovelace", 2, 2)
    assert row["address1_city"] == "London" and row["msdyn_sellable"] is True
    fo.patch("CustomersV3(dataAreaId='usmf',CustomerAccount='US-777')", json={"PersonProfessionalTitle": "Analyst"})
    eventually(
        lambda: (r := dv_row(dv, "contacts", "msdyn_contactpersonid", "US-777")) and r["jobtitle"] == "Analyst",
        what="contact update",
    )
    assert dv_row(dv, "accounts", "accountnumber", "US-777") is None

    # Dataverse -> F&O: a sellable contact becomes a person customer.
    cid = dv_company_id(dv, "usmf")
    body = {
        "msdyn_contactpersonid": "US-778",
        "firstname": "Grace",
        "lastname": "Hopper",
        "msdyn_sellable": True,
        "gendercode": 2,
        "msdyn_company@odata.bind": f"/cdm_companies({cid})",
        "msdyn_customergroupid@odata.bind": bind(dv, "msdyn_customergroups", "msdyn_groupid", "10"),
        "transactioncurrencyid@odata.bind": "/transactioncurrencies(isocurrencycode='USD')",
    }
    resp = dv.post("contacts", json=body)
    assert resp.status_code in (201, 204), resp.text
    cust = eventually(lambda: fo_row(fo, "CustomersV3", CustomerAccount="US-778"), what="person customer US-778")
    assert cust["PartyType"] == "Person" and cust["PersonFirstName"] == "Grace" and cust["PersonGender"] == "Female"
    assert cust["PersonMaritalStatus"] == "None" and cust["CustomerGroupId"] == "10"
    guid = dv_row(dv, "contacts", "msdyn_contactpersonid", "US-778")["contactid"]  # type: ignore[index]
    dv.patch(f"contacts({guid})", json={"lastname": "Hopper-Murray"})
    eventually(
        lambda: (r := fo_row(fo, "CustomersV3", CustomerAccount="US-778")) and r["PersonLastName"] == "Hopper-Murray",
        what="person customer update",
    )
    # A contact that is not sellable is not a customer.
    body2 = {**body, "msdyn_contactpersonid": "US-779", "msdyn_sellable": False}
    assert dv.post("contacts", json=body2).status_code in (201, 204)
    assert dv.delete(f"contacts({guid})").status_code == 204
    eventually(lambda: fo_row(fo, "CustomersV3", CustomerAccount="US-778") is None, what="person customer deleted")
    assert fo_row(fo, "CustomersV3", CustomerAccount="US-779") is None
    assert fo.delete("CustomersV3(dataAreaId='usmf',CustomerAccount='US-777')").status_code == 204
    eventually(lambda: dv_row(dv, "contacts", "msdyn_contactpersonid", "US-777") is None, what="contact deleted")
