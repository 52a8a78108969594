"""Importing the catalogue from the services' metadata: F&O CSDL, Dataverse CSDL and EntityDefinitions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualwrite.errors import ConfigError
from schemas.catalogue import Entity, Field, load_catalogue, load_entity
from schemas.metadata import (
    import_into,
    load_metadata_text,
    merge,
    parse_dataverse_csdl,
    parse_entity_definitions,
    parse_fo_csdl,
)

DATA = Path(__file__).parent / "data"
FO_XML = (DATA / "fo_customers_metadata.xml").read_text()
DV_XML = (DATA / "dataverse_accounts_metadata.xml").read_text()
DV_JSON = json.loads((DATA / "dataverse_entitydefinitions_account.json").read_text())


def by_name(entities: list[Entity]) -> dict[str, Entity]:
    return {e.name: e for e in entities}


# -- F&O CSDL -----------------------------------------------------------------------------------------
def test_fo_csdl_gives_keys_types_lengths_enums_and_targets() -> None:
    entities = by_name(parse_fo_csdl(FO_XML))
    assert set(entities) == {"CustomerGroups", "CustomersV3"}
    customers = entities["CustomersV3"]
    assert customers.key == ("dataAreaId", "CustomerAccount") and customers.company_field == "dataAreaId"
    assert customers.type_name == "CustomerV3"
    assert customers.field("dataAreaId") == Field("dataAreaId", "string", 4, required=True)
    # the navigation's company constraint is the company, not a lookup; the other one is
    assert customers.field("CustomerGroupId") == Field(
        "CustomerGroupId", "string", 10, target="CustomerGroups", required=True
    )
    assert customers.field("CreditLimitIsMandatory") == Field(
        "CreditLimitIsMandatory", "enum", values=("No", "Yes"), required=True
    )
    assert customers.field("CreditLimit").type == "decimal"  # type: ignore[union-attr]
    assert customers.field("OrganizationNumberOfEmployees").type == "int"  # type: ignore[union-attr]
    assert customers.field("SalesMemo") == Field("SalesMemo")  # a memo has no MaxLength
    assert customers.field("CustomerLoyaltyTier") == Field("CustomerLoyaltyTier", "string", 20)
    assert customers.field("Image") is None  # binary: not a syncable column
    groups = entities["CustomerGroups"]
    assert [f.name for f in groups.fields] == [
        "dataAreaId",
        "CustomerGroupId",
        "Description",
        "IsSalesTaxIncludedInPrice",
    ]
    assert all(f.target is None for f in groups.fields)  # a collection navigation is no lookup


def test_merging_fo_keeps_what_csdl_does_not_carry() -> None:
    existing = load_catalogue().entity("fo", "CustomersV3")
    merged = merge(existing, by_name(parse_fo_csdl(FO_XML))["CustomersV3"])
    assert merged.event_name == "mserp_custcustomerv3entity" and merged.logical_name == "CustCustomerV3Entity"
    assert merged.field("CustomerGroupId") == existing.field("CustomerGroupId")  # label kept
    assert merged.field("CreditLimitIsMandatory") == Field(
        "CreditLimitIsMandatory", "enum", values=("No", "Yes"), required=True, default="No"
    )
    assert merged.field("CreditLimit").default == 0  # type: ignore[union-attr]
    assert merged.field("CustomerLoyaltyTier") == Field("CustomerLoyaltyTier", "string", 20)
    # the metadata wins for the fields: what this excerpt leaves out is gone
    assert merged.field("PartyType") is None and len(merged.fields) == 9


def test_merging_lets_the_metadata_win_for_what_it_states() -> None:
    existing = Entity(
        "Things",
        ("ThingId",),
        (
            Field("ThingId", max_length=10, required=True, label="Thing"),
            Field("Kind", "enum", values=("A", "B", "C"), default="C", label="Kind"),
            Field("Size", "string", 10, default="M", required=True),
        ),
        alternate_keys=(("Size",),),
        event_name="mserp_thingentity",
    )
    imported = Entity(
        "Things",
        ("ThingId",),
        (
            Field("ThingId", max_length=20, required=True),
            Field("Kind", "enum", values=("A", "B")),
            Field("Size", "int"),
        ),
        type_name="Thing",
    )
    merged = merge(existing, imported)
    assert merged.field("ThingId") == Field("ThingId", max_length=20, required=True, label="Thing")
    assert merged.field("Kind") == Field("Kind", "enum", values=("A", "B"), label="Kind")  # "C" is gone
    assert merged.field("Size") == Field("Size", "int")  # a new type keeps neither length nor default
    assert merged.alternate_keys == () and merged.event_name == "mserp_thingentity" and merged.type_name == "Thing"


# -- Dataverse CSDL -----------------------------------------------------------------------------------
def test_dataverse_csdl_gives_lookups_and_targets() -> None:
    entities = by_name(parse_dataverse_csdl(DV_XML))
    assert set(entities) == {"accounts", "cdm_companies", "contacts"}
    accounts = entities["accounts"]
    assert accounts.key == ("accountid",) and accounts.logical_name == "account" and accounts.guid_key == "accountid"
    assert accounts.field("msdyn_company") == Field("msdyn_company", "lookup", target="cdm_companies")
    assert accounts.field("primarycontactid") == Field("primarycontactid", "lookup", target="contacts")
    assert accounts.field("parentid") == Field("parentid", "lookup")  # one navigation per target: no single one
    assert accounts.field("customertypecode") == Field("customertypecode", "int")  # CSDL types a choice as Int32
    assert accounts.field("name") == Field("name")  # no MaxLength in Dataverse CSDL
    assert accounts.field("entityimage") is None
    assert accounts.alternate_keys == ()


def test_merging_dataverse_csdl_keeps_choices_lengths_and_alternate_keys() -> None:
    existing = load_catalogue().entity("dataverse", "accounts")
    merged = merge(existing, by_name(parse_dataverse_csdl(DV_XML))["accounts"])
    assert merged.field("customertypecode") == existing.field("customertypecode")
    assert merged.field("statecode") == Field("statecode", "choice", values=(0, 1), default=0)
    assert merged.field("name") == Field("name", "string", 160)
    assert merged.alternate_keys == (("accountnumber", "msdyn_company"),)
    assert merged.primary_name == "name"
    assert merged.field("msdyn_loyaltytier") == Field("msdyn_loyaltytier")
    assert merged.field("versionnumber") == Field("versionnumber", "int")


# -- EntityDefinitions --------------------------------------------------------------------------------
def test_entity_definitions_give_lengths_required_levels_options_and_keys() -> None:
    (accounts,) = parse_entity_definitions(DV_JSON, {"contact": "contacts"})
    assert accounts.name == "accounts" and accounts.logical_name == "account" and accounts.key == ("accountid",)
    assert accounts.primary_name == "name" and accounts.alternate_keys == (("accountnumber", "msdyn_company"),)
    assert accounts.field("accountid") == Field("accountid", "guid")  # the service sets it: not required
    assert accounts.field("name") == Field("name", "string", 160)  # ApplicationRequired is not enforced
    assert accounts.field("msdyn_legacycode") == Field("msdyn_legacycode", "string", 10, required=True)
    assert accounts.field("msdyn_company") == Field("msdyn_company", "lookup")  # cdm_company: not resolvable
    assert accounts.field("primarycontactid") == Field("primarycontactid", "lookup", target="contacts")
    assert accounts.field("parentid") == Field("parentid", "lookup")
    assert accounts.field("msdyn_onholdstatus").values == tuple(range(192350000, 192350006))  # type: ignore[union-attr]
    assert accounts.field("customertypecode") == Field("customertypecode", "choice")  # OptionSet not expanded
    assert accounts.field("statecode").type == "choice"  # type: ignore[union-attr]
    assert accounts.field("creditlimit").type == "decimal"  # type: ignore[union-attr]
    assert accounts.field("msdyn_companyname") is None  # AttributeOf: a name column of the lookup
    assert accounts.field("entityimage") is None


def test_merging_definitions_keeps_unexpanded_option_values() -> None:
    existing = load_catalogue().entity("dataverse", "accounts")
    (imported,) = parse_entity_definitions(DV_JSON, {"cdm_company": "cdm_companies"})
    merged = merge(existing, imported)
    assert merged.field("customertypecode") == existing.field("customertypecode")
    assert merged.field("msdyn_company") == Field("msdyn_company", "lookup", target="cdm_companies")
    assert merged.field("msdyn_loyaltytier") == Field("msdyn_loyaltytier", "string", 20)
    assert merged.field("msdyn_onetimecustomer") == Field("msdyn_onetimecustomer", "bool", default=False)


# -- by content, and what is not metadata -------------------------------------------------------------
def test_load_metadata_text_decides_by_content() -> None:
    assert [e.name for e in load_metadata_text("fo", FO_XML)] == ["CustomerGroups", "CustomersV3"]
    assert [e.name for e in load_metadata_text("dataverse", DV_XML)] == ["accounts", "cdm_companies", "contacts"]
    assert [e.name for e in load_metadata_text("dataverse", json.dumps(DV_JSON))] == ["accounts"]


@pytest.mark.parametrize(
    ("side", "text", "message"),
    [
        ("fo", "<html><body>Sign in</body></html>", "root element is html, not edmx:Edmx"),
        ("fo", "<edmx:Edmx", "not XML"),
        ("dataverse", FO_XML, "no schema Microsoft.Dynamics.CRM"),
        ("fo", DV_XML, "no schema Microsoft.Dynamics.DataEntities"),
        ("fo", json.dumps(DV_JSON), "F&O metadata is the CSDL XML"),
        ("dataverse", '{"value": [{"LogicalName": "account", "EntitySetName": "accounts"}]}', "$expand=Attributes"),
        ("dataverse", '{"error": {"code": "0x80040217"}}', "needs a LogicalName"),
        ("dataverse", "Bad Request", "neither CSDL XML nor EntityDefinitions JSON"),
        ("sap", FO_XML, "unknown side"),
    ],
)
def test_text_that_is_not_metadata_is_refused(side: str, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("$", r"\$").replace("(", r"\(")):
        load_metadata_text(side, text)


# -- into a catalogue directory -----------------------------------------------------------------------
def test_import_into_writes_merged_files(tmp_path: Path) -> None:
    existing = load_catalogue().entity("fo", "CustomersV3")
    (tmp_path / "fo").mkdir()
    (tmp_path / "fo" / "CustomersV3.yaml").write_text(
        (load_catalogue().directory / "fo" / "CustomersV3.yaml").read_text()
    )
    written = import_into(tmp_path, "fo", parse_fo_csdl(FO_XML), only_sets=["CustomersV3"])
    assert written == ["CustomersV3"]
    assert not (tmp_path / "fo" / "CustomerGroups.yaml").exists()
    merged = load_entity(tmp_path / "fo" / "CustomersV3.yaml")
    assert merged.event_name == existing.event_name and merged.field("CustomerLoyaltyTier") is not None
    assert import_into(tmp_path, "fo", parse_fo_csdl(FO_XML)) == ["CustomerGroups", "CustomersV3"]
    assert [e.name for e in load_catalogue(tmp_path).entities("fo")] == ["CustomerGroups", "CustomersV3"]
    with pytest.raises(ConfigError, match="no entity set VendorsV2"):
        import_into(tmp_path, "fo", parse_fo_csdl(FO_XML), only_sets=["VendorsV2"])
