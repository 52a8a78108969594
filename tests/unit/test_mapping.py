"""The table-map engine: pure, typed, no broker."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pydantic import ValidationError

from dualwrite.envelope import ChangeEvent, Op, Origin, Side, record_key
from dualwrite.errors import MappingError
from dualwrite.mapping import LookupRef, changed_fields, map_event
from dualwrite.tablemap import Conflict, load_maps

MAPS = load_maps()
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def fo_customer(**over: object) -> dict[str, object]:
    row: dict[str, object] = {
        "dataAreaId": "usmf",
        "CustomerAccount": "US-001",
        "PartyType": "Organization",
        "OrganizationName": "Contoso Retail San Diego",
        "CustomerGroupId": "30",
        "SalesCurrencyCode": "USD",
        "CreditLimit": Decimal("25000.000000"),
        "CreditLimitIsMandatory": "Yes",
        "OnHoldStatus": "No",
        "IsOneTimeCustomer": "No",
        "PrimaryContactEmail": "sandiego@contoso.com",
        "DeliveryAddressLatitude": Decimal("32.7157"),
        "LanguageId": "en-us",
    }
    row.update(over)
    return row


def event(side: Side, entity: str, after: dict[str, object] | None, key: str, op: Op = Op.UPDATE) -> ChangeEvent:
    return ChangeEvent(op, entity, key.split("|")[0], key, NOW, Origin(side), after)


def test_fo_customer_maps_to_account_with_lookups_values_and_constants() -> None:
    write = map_event(MAPS["customers"], event(Side.FO, "CustomersV3", fo_customer(), "usmf|US-001"))
    assert write is not None and write.op == "upsert" and write.towards is Side.DATAVERSE
    assert write.key == {"accountnumber": "US-001"}
    assert write.values["name"] == "Contoso Retail San Diego"
    assert write.values["msdyn_creditlimitismandatory"] is True
    assert write.values["msdyn_onholdstatus"] == 192350000
    assert write.defaults == {"customertypecode": 3, "address1_addresstypecode": 2}
    assert write.values["address1_latitude"] == Decimal("32.7157")
    assert "LanguageId" not in write.values and "language" not in str(write.values)
    assert write.lookups["msdyn_customergroupid"] == LookupRef("msdyn_customergroups", "msdyn_groupid", "30", "usmf")
    assert write.lookups["transactioncurrencyid"] == LookupRef("transactioncurrencies", "isocurrencycode", "USD")
    assert write.lookups["msdyn_company"] == LookupRef("cdm_companies", "cdm_companycode", "usmf")


def test_account_maps_back_to_customer_with_reverse_values_and_fo_constants() -> None:
    account = {
        "accountnumber": "US-002",
        "name": "Fabrikam",
        "msdyn_company": "usmf",
        "msdyn_customergroupid": "10",
        "transactioncurrencyid": "USD",
        "msdyn_creditlimitismandatory": False,
        "msdyn_onholdstatus": 192350002,
        "msdyn_onetimecustomer": True,
        "customertypecode": 3,
        "address1_latitude": 1.5,
    }
    write = map_event(MAPS["customers"], event(Side.DATAVERSE, "accounts", account, "usmf|US-002"))
    assert write is not None and write.towards is Side.FO
    assert write.key == {"CustomerAccount": "US-002"}
    assert write.values["dataAreaId"] == "usmf"
    assert write.values["OnHoldStatus"] == "All"
    assert write.values["CreditLimitIsMandatory"] == "No" and write.values["IsOneTimeCustomer"] == "Yes"
    assert write.values["CustomerGroupId"] == "10" and write.values["SalesCurrencyCode"] == "USD"
    assert write.defaults == {"LanguageId": "en-us", "PartyType": "Organization"}  # only when creating
    assert "DeliveryAddressLatitude" not in write.values  # one-way F&O -> Dataverse


def test_unknown_enumeration_value_is_a_mapping_error_naming_field_and_value() -> None:
    with pytest.raises(MappingError, match=r"OnHoldStatus: value 'Sometimes'"):
        map_event(
            MAPS["customers"], event(Side.FO, "CustomersV3", fo_customer(OnHoldStatus="Sometimes"), "usmf|US-001")
        )
    with pytest.raises(MappingError, match=r"msdyn_onholdstatus: value 7"):
        map_event(
            MAPS["customers"],
            event(
                Side.DATAVERSE,
                "accounts",
                {"accountnumber": "A", "msdyn_onholdstatus": 7, "customertypecode": 3},
                "usmf|A",
            ),
        )


def test_source_filters_leave_persons_and_non_customer_accounts_out() -> None:
    person = fo_customer(PartyType="Person")
    assert map_event(MAPS["customers"], event(Side.FO, "CustomersV3", person, "usmf|US-001")) is None
    competitor = {"accountnumber": "X", "customertypecode": 1}
    assert map_event(MAPS["customers"], event(Side.DATAVERSE, "accounts", competitor, "usmf|X")) is None


def test_delete_carries_only_the_key() -> None:
    write = map_event(MAPS["customers"], event(Side.FO, "CustomersV3", None, "usmf|US-009", Op.DELETE))
    assert write is not None and write.op == "delete" and write.key == {"accountnumber": "US-009"}
    assert write.company == "usmf" and write.values == {}


def test_key_mismatch_between_envelope_and_row_is_refused() -> None:
    with pytest.raises(MappingError, match="differs from the event key"):
        map_event(MAPS["customers"], event(Side.FO, "CustomersV3", fo_customer(), "usmf|US-999"))


def test_companies_map_has_no_company_lookup() -> None:
    write = map_event(
        MAPS["companies"], event(Side.FO, "LegalEntities", {"LegalEntityId": "usmf", "Name": "USMF"}, "usmf|usmf")
    )
    assert write is not None and write.values == {"cdm_companycode": "usmf", "cdm_name": "USMF"}
    assert write.lookups == {}


def test_convergence_check_treats_blank_as_null_and_numbers_by_value() -> None:
    desired = {"name": "A", "creditlimit": Decimal("100.000000"), "fax": None, "numberofemployees": 5}
    current = {"name": "A", "creditlimit": 100.0, "fax": "", "numberofemployees": 5}
    assert changed_fields(desired, current) == {}
    assert changed_fields({**desired, "name": "B"}, current) == {"name": "B"}
    assert changed_fields({"flag": True}, {"flag": False}) == {"flag": True}


def test_record_key_is_company_then_natural_key() -> None:
    assert record_key("USMF", ["US-001"]) == "usmf|US-001"


def test_empty_dataverse_values_become_fo_empties_and_converge() -> None:
    account = {
        "accountnumber": "A",
        "customertypecode": 3,
        "msdyn_onholdstatus": None,
        "msdyn_creditlimitismandatory": None,
        "creditlimit": None,
    }
    write = map_event(MAPS["customers"], event(Side.DATAVERSE, "accounts", account, "usmf|A"))
    assert write is not None
    assert write.values["OnHoldStatus"] == "No" and write.values["CreditLimitIsMandatory"] == "No"
    fo_row = {"OnHoldStatus": "No", "CreditLimitIsMandatory": "No", "CreditLimit": 0.0, "OrganizationName": ""}
    assert changed_fields({k: write.values[k] for k in fo_row}, fo_row, no_nulls=True) == {}
    assert changed_fields({"CreditLimit": None}, {"CreditLimit": 0.0}) == {"CreditLimit": None}


# -- conflicts ---------------------------------------------------------------------------------------
def test_conflict_policy_spellings() -> None:
    assert Conflict.model_validate("last-writer-wins").policy == "last-writer-wins"
    with pytest.raises(ValidationError):
        Conflict.model_validate({"source-of-truth": "crm"})
    assert Conflict.model_validate({"source-of-truth": "fo"}).source_of_truth == "fo"
    with pytest.raises(ValidationError, match="window_s"):  # the clock no longer decides: say so
        Conflict.model_validate({"source-of-truth": "fo", "window_s": 60})
