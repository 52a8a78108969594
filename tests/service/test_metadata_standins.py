"""The stand-ins serve their metadata from the catalogue, and importing it gives the catalogue back."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import httpx
import pytest

from schemas.catalogue import (
    Entity,
    Field,
    builtin_entities_dir,
    entity_sets_by_logical_name,
    load_catalogue,
    write_entity,
)
from schemas.metadata import fold_option_sets, import_into, load_metadata_text, parse_entity_definitions
from standins import dataverse, fo
from standins.server import BackgroundServer
from standins.token import DEFAULT_SIGNING_KEY, issue_token

FO_AUDIENCE = "https://contoso.operations.dynamics.com"
DV_AUDIENCE = "https://contoso.crm.dynamics.com"
API = "/api/data/v9.2/"
CATALOGUE = load_catalogue()


@pytest.fixture
def start() -> Iterator[Callable[..., httpx.Client]]:
    """Start a stand-in (`fo` or `dataverse`) with these settings; returns a client holding a token."""
    servers: list[BackgroundServer] = []
    clients: list[httpx.Client] = []

    def _start(side: str, **settings: Any) -> httpx.Client:
        module, audience, root = (fo, FO_AUDIENCE, "/data/") if side == "fo" else (dataverse, DV_AUDIENCE, API)
        srv = BackgroundServer(module.create_app(module.Settings(**settings))).start()  # type: ignore[attr-defined]
        servers.append(srv)
        token = issue_token("dualwrite", audience, "tenant", DEFAULT_SIGNING_KEY)
        client = httpx.Client(base_url=srv.url + root, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        clients.append(client)
        return client

    yield _start
    for client in clients:
        client.close()
    for srv in servers:
        srv.stop()


def copy_of_catalogue(tmp_path: Path) -> Path:
    target = tmp_path / "entities"
    shutil.copytree(builtin_entities_dir(), target)
    return target


def fetched_metadata(client: httpx.Client) -> str:
    resp = client.get("$metadata")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/xml"
    root = ET.fromstring(resp.text)
    assert root.tag == "{http://docs.oasis-open.org/odata/ns/edmx}Edmx" and root.get("Version") == "4.0"
    return resp.text


def shape(entity: Entity, *, lengths: bool = True, required: bool = True, choices: bool = True) -> Any:
    """What metadata carries of an entity: keys and each field's name, type, length, values, target."""
    fields = [
        (
            f.name,
            "int" if f.type == "choice" and not choices else f.type,
            f.max_length if lengths else None,
            f.values if choices else (),
            f.target,
            f.required if required else False,
        )
        for f in entity.fields
    ]
    return entity.name, entity.key, fields


def definitions(client: httpx.Client, with_options: bool = True) -> list[dict[str, Any]]:
    """Every table's EntityDefinitions with Attributes and Keys (and option values from the cast path)."""
    out = []
    for entity in CATALOGUE.entities("dataverse"):
        table = f"EntityDefinitions(LogicalName='{entity.logical_name}')"
        resp = client.get(table, params={"$expand": "Attributes,Keys"})
        assert resp.status_code == 200, resp.text
        definition = resp.json()
        if with_options:
            for cast in ("PicklistAttributeMetadata", "StateAttributeMetadata"):
                options = client.get(
                    f"{table}/Attributes/Microsoft.Dynamics.CRM.{cast}",
                    params={"$select": "LogicalName", "$expand": "OptionSet($select=Options)"},
                )
                assert options.status_code == 200, options.text
                definition = fold_option_sets(definition, options.json())
        out.append(definition)
    return out


# -- F&O ------------------------------------------------------------------------------------------------
def test_fo_metadata_needs_a_token(start: Callable[..., httpx.Client]) -> None:
    client = start("fo")
    assert client.get("$metadata", headers={"Authorization": "Bearer x.y.z"}).status_code == 401


def test_fo_metadata_describes_the_catalogue(start: Callable[..., httpx.Client]) -> None:
    root = ET.fromstring(fetched_metadata(start("fo")))
    ns = {"edm": "http://docs.oasis-open.org/odata/ns/edm"}
    (schema,) = root.findall(".//edm:Schema", ns)
    assert schema.get("Namespace") == "Microsoft.Dynamics.DataEntities"
    customer = schema.find("edm:EntityType[@Name='CustomerV3']", ns)
    assert customer is not None
    account = customer.find("edm:Property[@Name='CustomerAccount']", ns)
    assert account is not None and account.attrib == {
        "Name": "CustomerAccount",
        "Type": "Edm.String",
        "Nullable": "false",
        "MaxLength": "20",
    }
    mandatory = customer.find("edm:Property[@Name='CreditLimitIsMandatory']", ns)
    assert mandatory is not None and mandatory.get("Type") == "Microsoft.Dynamics.DataEntities.NoYes"
    members = [m.get("Name") for m in schema.findall("edm:EnumType[@Name='NoYes']/edm:Member", ns)]
    assert members == ["No", "Yes"]
    nav = customer.find("edm:NavigationProperty[@Name='CustomerGroup']", ns)
    assert nav is not None and nav.get("Type") == "Microsoft.Dynamics.DataEntities.CustomerGroup"
    constraints = [(c.get("Property"), c.get("ReferencedProperty")) for c in nav]
    assert constraints == [("dataAreaId", "dataAreaId"), ("CustomerGroupId", "CustomerGroupId")]
    sets = [e.get("Name") for e in schema.findall("edm:EntityContainer/edm:EntitySet", ns)]
    assert sets == [e.name for e in CATALOGUE.entities("fo")]


def test_fo_metadata_imports_back_to_the_catalogue(start: Callable[..., httpx.Client], tmp_path: Path) -> None:
    text = fetched_metadata(start("fo"))
    entities = load_metadata_text("fo", text)
    # into the catalogue itself: nothing changes (merge keeps event names, labels, defaults, alternate keys)
    directory = copy_of_catalogue(tmp_path)
    assert import_into(directory, "fo", entities) == [e.name for e in CATALOGUE.entities("fo")]
    assert load_catalogue(directory).sides["fo"] == CATALOGUE.entities("fo")
    # into an empty directory: every field, type, length, enum value, target and key
    assert import_into(tmp_path / "new", "fo", entities)
    imported = load_catalogue(tmp_path / "new")
    assert [shape(e) for e in imported.entities("fo")] == [shape(e) for e in CATALOGUE.entities("fo")]
    assert [e.company_field for e in imported.entities("fo")] == [e.company_field for e in CATALOGUE.entities("fo")]
    assert [e.type_name for e in imported.entities("fo")] == [e.type_name for e in CATALOGUE.entities("fo")]


# -- Dataverse ------------------------------------------------------------------------------------------
def test_dataverse_metadata_describes_the_catalogue(start: Callable[..., httpx.Client]) -> None:
    client = start("dataverse")
    assert client.get("$metadata", headers={"Authorization": "Bearer x.y.z"}).status_code == 401
    root = ET.fromstring(fetched_metadata(client))
    ns = {"edm": "http://docs.oasis-open.org/odata/ns/edm"}
    (schema,) = root.findall(".//edm:Schema", ns)
    assert (schema.get("Namespace"), schema.get("Alias")) == ("Microsoft.Dynamics.CRM", "mscrm")
    account = schema.find("edm:EntityType[@Name='account']", ns)
    assert account is not None and account.get("BaseType") == "mscrm.crmbaseentity"
    assert [r.get("Name") for r in account.findall("edm:Key/edm:PropertyRef", ns)] == ["accountid"]
    company = account.find("edm:Property[@Name='_msdyn_company_value']", ns)
    assert company is not None and company.get("Type") == "Edm.Guid"
    nav = account.find("edm:NavigationProperty[@Name='msdyn_company']", ns)
    assert nav is not None and nav.get("Type") == "mscrm.cdm_company"
    assert [(c.get("Property"), c.get("ReferencedProperty")) for c in nav] == [
        ("_msdyn_company_value", "cdm_companyid")
    ]
    entity_set = schema.find("edm:EntityContainer/edm:EntitySet[@Name='accounts']", ns)
    assert entity_set is not None and entity_set.get("EntityType") == "Microsoft.Dynamics.CRM.account"


def test_dataverse_csdl_imports_back_to_the_catalogue(start: Callable[..., httpx.Client], tmp_path: Path) -> None:
    entities = load_metadata_text("dataverse", fetched_metadata(start("dataverse")))
    directory = copy_of_catalogue(tmp_path)
    import_into(directory, "dataverse", entities)
    assert load_catalogue(directory).sides["dataverse"] == CATALOGUE.entities("dataverse")
    import_into(tmp_path / "new", "dataverse", entities)
    imported = load_catalogue(tmp_path / "new").entities("dataverse")
    # CSDL carries neither lengths, required levels nor option values
    loose = {"lengths": False, "required": False, "choices": False}
    assert [shape(e, **loose) for e in imported] == [shape(e, **loose) for e in CATALOGUE.entities("dataverse")]


def test_entity_definitions_import_back_to_the_catalogue(start: Callable[..., httpx.Client], tmp_path: Path) -> None:
    client = start("dataverse")
    entities = parse_entity_definitions(definitions(client, with_options=False))
    directory = copy_of_catalogue(tmp_path)
    import_into(directory, "dataverse", entities)
    assert load_catalogue(directory).sides["dataverse"] == CATALOGUE.entities("dataverse")
    # into an empty directory, with the option values from the cast path: all a definition carries
    import_into(tmp_path / "new", "dataverse", parse_entity_definitions(definitions(client)))
    imported = load_catalogue(tmp_path / "new").entities("dataverse")
    assert [shape(e) for e in imported] == [shape(e) for e in CATALOGUE.entities("dataverse")]
    assert [(e.logical_name, e.alternate_keys, e.primary_name) for e in imported] == [
        (e.logical_name, e.alternate_keys, e.primary_name) for e in CATALOGUE.entities("dataverse")
    ]


def test_entity_definitions_by_logical_name_and_filter(start: Callable[..., httpx.Client]) -> None:
    client = start("dataverse")
    body = client.get("EntityDefinitions(LogicalName='account')").json()
    assert (body["LogicalName"], body["EntitySetName"], body["PrimaryIdAttribute"]) == (
        "account",
        "accounts",
        "accountid",
    )
    assert body["PrimaryNameAttribute"] == "name" and "MetadataId" in body
    assert client.get(f"EntityDefinitions({body['MetadataId']})").json()["LogicalName"] == "account"
    selected = client.get(
        "EntityDefinitions", params={"$filter": "LogicalName eq 'account'", "$select": "LogicalName,EntitySetName"}
    ).json()["value"]
    assert selected == [{"MetadataId": body["MetadataId"], "LogicalName": "account", "EntitySetName": "accounts"}]
    missing = client.get("EntityDefinitions(LogicalName='nosuchtable')")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "0x80040217" and "nosuchtable" in missing.json()["error"]["message"]
    assert client.get("EntityDefinitions", headers={"Authorization": "Bearer x.y.z"}).status_code == 401


def test_entity_definitions_attributes_keys_and_options(start: Callable[..., httpx.Client]) -> None:
    client = start("dataverse")
    table = "EntityDefinitions(LogicalName='account')"
    attributes = {a["LogicalName"]: a for a in client.get(f"{table}/Attributes").json()["value"]}
    assert attributes["name"]["@odata.type"] == "#Microsoft.Dynamics.CRM.StringAttributeMetadata"
    assert (attributes["name"]["AttributeType"], attributes["name"]["MaxLength"]) == ("String", 160)
    assert attributes["accountid"]["IsPrimaryId"] and attributes["accountid"]["AttributeType"] == "Uniqueidentifier"
    assert attributes["msdyn_company"]["Targets"] == ["cdm_company"]
    assert attributes["statecode"]["AttributeType"] == "State"
    assert attributes["msdyn_onholdstatus"]["AttributeType"] == "Picklist"
    assert attributes["creditlimit"]["RequiredLevel"]["Value"] == "None"
    required = client.get("EntityDefinitions(LogicalName='cdm_company')/Attributes(LogicalName='cdm_companycode')")
    assert required.json()["RequiredLevel"]["Value"] == "SystemRequired"
    keys = client.get(f"{table}/Keys").json()["value"]
    assert [k["KeyAttributes"] for k in keys] == [["accountnumber", "msdyn_company"]]
    picklists = client.get(
        f"{table}/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
        params={"$select": "LogicalName", "$expand": "OptionSet($select=Options)"},
    ).json()["value"]
    values = {p["LogicalName"]: [o["Value"] for o in p["OptionSet"]["Options"]] for p in picklists}
    accounts = CATALOGUE.entity("dataverse", "accounts")
    assert values == {f.name: list(f.values) for f in accounts.fields if f.type == "choice" and f.name != "statecode"}
    # derived properties are selectable after a cast only, as in the Web API
    assert client.get(f"{table}/Attributes", params={"$select": "LogicalName,MaxLength"}).status_code == 400
    strings = client.get(
        f"{table}/Attributes/Microsoft.Dynamics.CRM.StringAttributeMetadata",
        params={"$select": "LogicalName,MaxLength"},
    ).json()["value"]
    assert {"@odata.type", "MetadataId", "LogicalName", "MaxLength"} == set(strings[0])
    expanded = client.get(
        table,
        params={
            "$select": "LogicalName",
            "$expand": "Attributes($select=LogicalName;$filter=AttributeType eq "
            "Microsoft.Dynamics.CRM.AttributeTypeCode'Lookup'),Keys($select=KeyAttributes)",
        },
    ).json()
    lookups = [f.name for f in accounts.fields if f.type == "lookup"]
    assert [a["LogicalName"] for a in expanded["Attributes"]] == lookups
    assert [k["KeyAttributes"] for k in expanded["Keys"]] == [["accountnumber", "msdyn_company"]]


# -- a user's catalogue -----------------------------------------------------------------------------------
def custom_catalogue(tmp_path: Path) -> Path:
    """The built-in catalogue plus a custom loyalty tier on F&O customers and Dataverse accounts."""
    directory = copy_of_catalogue(tmp_path)
    for side, entity_set, name in (
        ("fo", "CustomersV3", "CustomerLoyaltyTier"),
        ("dataverse", "accounts", "msdyn_loyaltytier"),
    ):
        entity = CATALOGUE.entity(side, entity_set)
        write_entity(directory, side, replace(entity, fields=(*entity.fields, Field(name, max_length=20))))
    return directory


def test_fo_standin_serves_a_custom_field_of_its_catalogue(start: Callable[..., httpx.Client], tmp_path: Path) -> None:
    client = start("fo", seed=True, catalogue_dir=str(custom_catalogue(tmp_path)))
    seeded = client.get("CustomersV3(dataAreaId='usmf',CustomerAccount='US-001')").json()
    assert seeded["CustomerLoyaltyTier"] == ""  # F&O has no NULLs
    body = {"CustomerAccount": "US-950", "OrganizationName": "Loyal Ltd", "CustomerGroupId": "30"}
    resp = client.post("CustomersV3", json={**body, "CustomerLoyaltyTier": "Gold"})
    assert resp.status_code == 201, resp.text
    assert (
        client.get("CustomersV3", params={"$filter": "CustomerLoyaltyTier eq 'Gold'"}).json()["value"][0][
            "CustomerAccount"
        ]
        == "US-950"
    )
    too_long = client.post("CustomersV3", json={**body, "CustomerAccount": "US-951", "CustomerLoyaltyTier": "G" * 21})
    assert too_long.status_code == 400
    imported = {e.name: e for e in load_metadata_text("fo", fetched_metadata(client))}
    assert imported["CustomersV3"].field("CustomerLoyaltyTier") == Field("CustomerLoyaltyTier", max_length=20)


def test_dataverse_standin_serves_a_custom_field_of_its_catalogue(
    start: Callable[..., httpx.Client], tmp_path: Path
) -> None:
    client = start("dataverse", seed=True, catalogue_dir=str(custom_catalogue(tmp_path)))
    resp = client.post(
        "accounts", json={"name": "Loyal Ltd", "msdyn_loyaltytier": "Gold"}, headers={"Prefer": "return=representation"}
    )
    assert resp.status_code == 201 and resp.json()["msdyn_loyaltytier"] == "Gold"
    (definition,) = parse_entity_definitions(
        client.get("EntityDefinitions(LogicalName='account')", params={"$expand": "Attributes,Keys"}).json(),
        entity_sets_by_logical_name(CATALOGUE.entities("dataverse")),
    )
    assert definition.field("msdyn_loyaltytier") == Field("msdyn_loyaltytier", max_length=20)
    assert definition.field("msdyn_company") == Field("msdyn_company", "lookup", target="cdm_companies")
