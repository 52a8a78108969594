"""Organization hierarchy over the real wire: operating units, hierarchy types, purposes and published
hierarchies go one way, F&O -> Dataverse, with their lookups resolved."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dualwrite import dlq, kafka
from wiring.stack import LocalStack, dv_one, dv_rows, eventually

pytestmark = pytest.mark.service

ORGS = "msdyn_internalorganizations"
TYPES = "msdyn_internalorganizationhierarchytypes"
PURPOSES = "msdyn_internalorganizationhierarchypurposes"
HIERARCHIES = "msdyn_internalorganizationhierarchies"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = LocalStack.start(tmp_path_factory.mktemp("organization"))
    try:
        yield s
    finally:
        s.stop()


def org(dv: httpx.Client, party: str) -> dict[str, Any] | None:
    return dv_one(dv, ORGS, f"msdyn_partynumber eq '{party}'")


def org_id(dv: httpx.Client, party: str) -> str:
    row = eventually(lambda: org(dv, party), what=f"internal organization {party}")
    return str(row["msdyn_internalorganizationid"])


def type_id(dv: httpx.Client, name: str) -> str:
    row = eventually(lambda: dv_one(dv, TYPES, f"msdyn_name eq '{name}'"), what=f"hierarchy type {name}")
    return str(row["msdyn_internalorganizationhierarchytypeid"])


def purpose(dv: httpx.Client, name: str, type_name: str) -> dict[str, Any] | None:
    flt = f"msdyn_hierarchypurpose eq '{name}' and msdyn_hierarchypurposetypename eq '{type_name}'"
    return dv_one(dv, PURPOSES, flt)


def hierarchy(dv: httpx.Client, type_name: str, child: str) -> dict[str, Any] | None:
    return dv_one(dv, HIERARCHIES, f"msdyn_hierarchytypename eq '{type_name}' and msdyn_childpartynumber eq '{child}'")


def at_least(dv: httpx.Client, entity_set: str, n: int) -> list[dict[str, Any]]:
    return eventually(lambda: found if len(found := dv_rows(dv, entity_set)) >= n else None, what=f"{n} {entity_set}")


def created(resp: httpx.Response) -> None:
    assert resp.status_code == 201, resp.text


def test_seeded_hierarchy_arrives_in_dataverse_with_lookups(dv: httpx.Client) -> None:
    orgs = {o["msdyn_partynumber"]: o for o in at_least(dv, ORGS, 9)}
    ces = orgs["000000701"]
    assert (ces["msdyn_name"], ces["msdyn_namealias"], ces["msdyn_languageid"]) == (
        "Contoso Entertainment Systems",
        "CES",
        "en-us",
    )
    types = {p: orgs[p]["msdyn_type"] for p in ("000000701", "000000702", "000000705", "000000707", "000000709")}
    assert types == {
        "000000701": 806380005,
        "000000702": 806380001,
        "000000705": 806380003,
        "000000707": 806380004,
        "000000709": 192350000,
    }
    assert {t["msdyn_name"] for t in at_least(dv, TYPES, 3)} == {"Departments", "CostCenters", "Retail"}

    at_least(dv, PURPOSES, 6)
    budgeting = purpose(dv, "Budgeting", "CostCenters")
    assert budgeting is not None
    assert budgeting["msdyn_immutable"] is True and budgeting["msdyn_setasdefault"] is False
    assert budgeting["_msdyn_hierarchytype_value"] == type_id(dv, "CostCenters")

    at_least(dv, HIERARCHIES, 7)
    store = hierarchy(dv, "Retail", "000000709")
    assert store is not None
    assert store["_msdyn_hierarchytypeid_value"] == type_id(dv, "Retail")
    assert store["_msdyn_parentid_value"] == orgs["000000708"]["msdyn_internalorganizationid"]
    assert store["_msdyn_childid_value"] == orgs["000000709"]["msdyn_internalorganizationid"]
    assert (store["msdyn_validfrom"], store["msdyn_validto"]) == ("2024-01-01T00:00:00Z", "2154-12-31T23:59:59Z")


def test_operating_unit_create_update_delete_reach_dataverse(fo: httpx.Client, dv: httpx.Client) -> None:
    body = {
        "OperatingUnitNumber": "OU-T1",
        "Name": "Procurement",
        "NameAlias": "Proc",
        "PartyNumber": "000009001",
        "OperatingUnitType": "CostCenter",
        "LanguageId": "en-gb",
    }
    created(fo.post("OperatingUnits", json=body))
    row = eventually(lambda: org(dv, "000009001"), what="new operating unit in Dataverse")
    assert (row["msdyn_name"], row["msdyn_namealias"], row["msdyn_languageid"], row["msdyn_type"]) == (
        "Procurement",
        "Proc",
        "en-gb",
        806380003,
    )

    url = "OperatingUnits(OperatingUnitNumber='OU-T1')"
    resp = fo.patch(url, json={"Name": "Global Procurement", "OperatingUnitType": "Region"})
    assert resp.status_code == 204, resp.text
    row = eventually(
        lambda: (o := org(dv, "000009001")) and o["msdyn_name"] == "Global Procurement" and o, what="rename"
    )
    assert row["msdyn_type"] == 806380006

    assert fo.delete(url).status_code == 204
    eventually(lambda: org(dv, "000009001") is None, what="operating unit deleted in Dataverse")


def test_hierarchy_type_purpose_and_published_hierarchy_follow_fo(fo: httpx.Client, dv: httpx.Client) -> None:
    # Hierarchy types have no field besides their key: create and delete are all there is to follow.
    created(fo.post("OrganizationHierarchyTypes", json={"Name": "Projects"}))
    projects = type_id(dv, "Projects")

    created(
        fo.post(
            "OrganizationHierarchyPurposes",
            json={"HierarchyPurpose": "Procurement", "HierarchyType": "Projects", "SetAsDefault": "Yes"},
        )
    )
    row = eventually(lambda: purpose(dv, "Procurement", "Projects"), what="new purpose")
    assert row["_msdyn_hierarchytype_value"] == projects
    assert row["msdyn_setasdefault"] is True and row["msdyn_immutable"] is False

    edge = {
        "HierarchyType": "Projects",
        "ChildOrganizationPartyNumber": "000000707",
        "ParentOrganizationPartyNumber": "000000701",
        "ValidFrom": "2026-02-01T00:00:00Z",
        "ValidTo": "2154-12-31T23:59:59Z",
    }
    created(fo.post("OrganizationHierarchyPublished", json=edge))
    row = eventually(lambda: hierarchy(dv, "Projects", "000000707"), what="new hierarchy row")
    assert row["_msdyn_hierarchytypeid_value"] == projects
    assert row["_msdyn_parentid_value"] == org_id(dv, "000000701")
    assert row["_msdyn_childid_value"] == org_id(dv, "000000707")
    assert row["msdyn_validfrom"] == "2026-02-01T00:00:00Z"

    purpose_url = "OrganizationHierarchyPurposes(HierarchyPurpose='Procurement',HierarchyType='Projects')"
    assert fo.patch(purpose_url, json={"Immutable": "Yes"}).status_code == 204
    eventually(lambda: (p := purpose(dv, "Procurement", "Projects")) and p["msdyn_immutable"], what="immutable")

    edge_url = "OrganizationHierarchyPublished(HierarchyType='Projects',ChildOrganizationPartyNumber='000000707')"
    assert fo.patch(edge_url, json={"ParentOrganizationPartyNumber": "000000704"}).status_code == 204
    rd = org_id(dv, "000000704")
    eventually(
        lambda: (h := hierarchy(dv, "Projects", "000000707")) and h["_msdyn_parentid_value"] == rd, what="new parent"
    )

    for url in (edge_url, purpose_url, "OrganizationHierarchyTypes(Name='Projects')"):
        assert fo.delete(url).status_code == 204, url
    eventually(lambda: hierarchy(dv, "Projects", "000000707") is None, what="hierarchy row deleted")
    eventually(lambda: purpose(dv, "Procurement", "Projects") is None, what="purpose deleted")
    eventually(lambda: dv_one(dv, TYPES, "msdyn_name eq 'Projects'") is None, what="hierarchy type deleted")


def test_dataverse_edits_are_not_written_back_to_fo(fo: httpx.Client, dv: httpx.Client) -> None:
    finance = eventually(lambda: org(dv, "000000703"), what="Finance in Dataverse")
    resp = dv.patch(f"{ORGS}({finance['msdyn_internalorganizationid']})", json={"msdyn_name": "Edited in Dataverse"})
    assert resp.status_code == 204, resp.text
    departments = type_id(dv, "Departments")
    assert dv.patch(f"{TYPES}({departments})", json={"msdyn_name": "Renamed"}).status_code == 204

    # A later Dataverse change on a two-way map reaching F&O shows the Dataverse side has moved past ours.
    cid = eventually(lambda: dv_one(dv, "cdm_companies", "cdm_companycode eq 'usmf'"), what="usmf")["cdm_companyid"]
    group = eventually(
        lambda: dv_one(dv, "msdyn_customergroups", f"msdyn_groupid eq '20' and _msdyn_company_value eq {cid}"),
        what="customer group 20",
    )
    resp = dv.patch(f"msdyn_customergroups({group['msdyn_customergroupid']})", json={"msdyn_description": "Key"})
    assert resp.status_code == 204, resp.text
    eventually(
        lambda: fo.get("CustomerGroups(dataAreaId='usmf',CustomerGroupId='20')").json()["Description"] == "Key",
        what="customer group edit in F&O",
    )

    assert fo.get("OperatingUnits(OperatingUnitNumber='OU-0003')").json()["Name"] == "Finance"
    assert fo.get("OrganizationHierarchyTypes(Name='Departments')").status_code == 200
    assert fo.get("OrganizationHierarchyTypes(Name='Renamed')").status_code == 404


def test_key_with_a_space_reaches_dataverse(stack: LocalStack, fo: httpx.Client, dv: httpx.Client) -> None:
    created(fo.post("OrganizationHierarchyTypes", json={"Name": "Cost centers"}))
    topic = kafka.topic(stack.config.kafka.topic_prefix, "fo", "OrganizationHierarchyTypes")

    def arrived_or_dead_lettered() -> bool:
        if dv_one(dv, TYPES, "msdyn_name eq 'Cost centers'") is not None:
            return True
        letters = dlq.read_all(stack.config.kafka, kafka.dlq_topic(topic), idle_s=0.3)
        return any((d.key or b"").lower() == b"|cost centers" for d in letters)

    eventually(arrived_or_dead_lettered, what="'Cost centers' in Dataverse or in the DLQ")
    assert dv_one(dv, TYPES, "msdyn_name eq 'Cost centers'") is not None
