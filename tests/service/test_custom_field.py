"""A user's extension field, as a user adds it: the field is in the services' metadata (a copy of
the F&O CSDL and of the Dataverse EntityDefinitions with one more property each), `dualwrite
entities import` puts it in a catalogue, a map pairs it, `python -m schemas.generate` types it in
the Avro schemas, and it syncs both ways."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dualwrite.tablemap import builtin_maps_dir
from schemas.catalogue import builtin_entities_dir, load_catalogue
from standins import token
from wiring.stack import TENANT, LocalStack, ThreadPart, dv_company_id, eventually, standin_app

pytestmark = pytest.mark.service

FO_FIELD, DV_FIELD = "CustomerLoyaltyTier", "msdyn_loyaltytier"


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def served_metadata() -> tuple[str, dict[str, Any]]:
    """What the real services would answer: the stand-ins' F&O $metadata and account's EntityDefinitions."""
    fo, dv = ThreadPart(standin_app("fo", {}), 0), ThreadPart(standin_app("dataverse", {}), 0)
    try:
        bearer = {"Authorization": f"Bearer {token.issue_token('x', fo.url, TENANT, token.DEFAULT_SIGNING_KEY)}"}
        csdl = httpx.get(f"{fo.url}/data/$metadata", headers=bearer).text
        definition = httpx.get(
            f"{dv.url}/api/data/v9.2/EntityDefinitions(LogicalName='account')",
            params={"$expand": "Attributes,Keys"},
            headers=bearer,
        ).json()
    finally:
        fo.stop()
        dv.stop()
    return csdl, definition


@pytest.fixture(scope="module")
def custom(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("custom")
    csdl, definition = served_metadata()
    anchor = '<Property Name="OrganizationName" Type="Edm.String" MaxLength="100" />'
    assert csdl.count(anchor) == 1
    (tmp / "fo-metadata.xml").write_text(
        csdl.replace(anchor, anchor + f'\n        <Property Name="{FO_FIELD}" Type="Edm.String" MaxLength="20" />')
    )
    like = next(a for a in definition["Attributes"] if a["LogicalName"] == "msdyn_creditrating")
    extra = {**like, "LogicalName": DV_FIELD, "SchemaName": DV_FIELD, "MaxLength": 20, "MetadataId": None}
    definition["Attributes"].append(extra)
    (tmp / "account-definitions.json").write_text(json.dumps(definition))

    entities = tmp / "entities"
    shutil.copytree(builtin_entities_dir(), entities)
    cli = ("-m", "wiring.cli", "entities", "import", "--into", str(entities))
    out = run(*cli, "--side", "fo", "--from", str(tmp / "fo-metadata.xml"), "--set", "CustomersV3")
    assert "fo CustomersV3: imported" in out
    run(*cli, "--side", "dataverse", "--from", str(tmp / "account-definitions.json"))

    maps = tmp / "maps"
    shutil.copytree(builtin_maps_dir(), maps)
    customers = maps / "customers.yaml"
    text = customers.read_text()
    pair = "  - {fo: OrganizationName, dir: \"<->\", dataverse: name}\n"
    assert pair in text
    customers.write_text(text.replace(pair, pair + f'  - {{fo: {FO_FIELD}, dir: "<->", dataverse: {DV_FIELD}}}\n'))

    schemas = tmp / "schemas"
    run("-m", "schemas.generate", "--maps", str(maps), "--entities", str(entities), "--out", str(schemas))
    return {"entities": entities, "maps": maps, "schemas": schemas}


def test_the_imported_field_is_in_the_catalogue_and_the_generated_schemas(custom: dict[str, Path]) -> None:
    catalogue = load_catalogue(custom["entities"])
    f = catalogue.entity("fo", "CustomersV3").field(FO_FIELD)
    assert f is not None and f.type == "string" and f.max_length == 20
    d = catalogue.entity("dataverse", "accounts").field(DV_FIELD)
    assert d is not None and d.type == "string" and d.max_length == 20
    # what metadata does not carry survived the import
    assert catalogue.entity("fo", "CustomersV3").event_name == "mserp_custcustomerv3entity"
    assert catalogue.entity("dataverse", "accounts").alternate_keys == (("accountnumber", "msdyn_company"),)

    for side, name, field in (("fo", "customersv3", FO_FIELD), ("dataverse", "accounts", DV_FIELD)):
        schema = json.loads((custom["schemas"] / side / f"{name}.avsc").read_text())
        after = next(f for f in schema["fields"] if f["name"] == "after")
        row = next(t for t in after["type"] if isinstance(t, dict))
        assert {"name": field, "type": ["null", "string"], "default": None} in row["fields"]
    builtin = json.loads((Path(__file__).parents[2] / "schemas" / "fo" / "customersv3.avsc").read_text())
    assert FO_FIELD not in json.dumps(builtin)  # the user's schemas are their own, the shipped ones unchanged


@pytest.fixture(scope="module")
def stack(custom: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    catalogue = {"catalogue_dir": str(custom["entities"])}
    s = LocalStack.start(
        tmp_path_factory.mktemp("custom-stack"),
        maps_dir=custom["maps"],
        fo_settings=catalogue,
        dataverse_settings=catalogue,
        schemas_dir=str(custom["schemas"]),
    )
    try:
        yield s
    finally:
        s.stop()


def test_the_custom_field_syncs_both_ways(stack: LocalStack, fo: httpx.Client, dv: httpx.Client) -> None:
    body = {
        "dataAreaId": "usmf",
        "CustomerAccount": "US-LOY",
        "OrganizationName": "Loyal Ltd",
        "CustomerGroupId": "30",
        "SalesCurrencyCode": "USD",
        "PartyType": "Organization",
        FO_FIELD: "Gold",
    }
    assert fo.post("CustomersV3", json=body).status_code == 201

    def account() -> dict[str, Any] | None:
        cid = dv_company_id(dv)
        rows = dv.get("accounts", params={"$filter": f"accountnumber eq 'US-LOY' and _msdyn_company_value eq {cid}"})
        found = rows.json().get("value", []) if cid else []
        return found[0] if found else None

    row = eventually(lambda: (a := account()) and a.get(DV_FIELD) == "Gold" and a, what="Gold in Dataverse")
    assert dv.patch(f"accounts({row['accountid']})", json={DV_FIELD: "Platinum"}).status_code == 204
    eventually(
        lambda: fo.get("CustomersV3(dataAreaId='usmf',CustomerAccount='US-LOY')").json().get(FO_FIELD) == "Platinum",
        what="Platinum in F&O",
    )


def test_entities_import_reads_the_running_services_with_the_configs_auth(stack: LocalStack, tmp_path: Path) -> None:
    into = tmp_path / "entities"
    shutil.copytree(builtin_entities_dir(), into)
    config = str(stack.state_dir / "config.yaml")
    cli = ("-m", "wiring.cli", "entities", "import", "--into", str(into), "--config", config)
    out = run(*cli, "--side", "dataverse", "--from", stack.servers["dataverse"].url, "--set", "accounts")
    assert "dataverse accounts: imported" in out
    out = run(*cli, "--side", "fo", "--from", stack.servers["fo"].url)  # every catalogued F&O set
    assert "fo CustomersV3: imported" in out and "fo LegalEntities: imported" in out
    catalogue = load_catalogue(into)
    assert catalogue.entity("fo", "CustomersV3").field(FO_FIELD) is not None  # the stack's F&O has the field
    assert catalogue.entity("dataverse", "accounts").field(DV_FIELD) is not None
    assert catalogue.entity("dataverse", "accounts").field("msdyn_onholdstatus").values  # option values
