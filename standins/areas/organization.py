"""Area organization: operating units, hierarchy types and purposes, published hierarchies.

Global (shared by all legal entities) and owned by F&O: dual-write copies them one way to Dataverse's
msdyn_internalorganization* tables. Operating units are found by party number on both sides, because
that is how the published hierarchy refers to them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from standins.areas.common import NO_YES, dv_pk, statecode
from standins.store import EntityDef, Field

OPERATING_UNIT_TYPES = ("Department", "CostCenter", "BusinessUnit", "ValueStream", "Region", "RetailChannel")
# msdyn_internalorganization.msdyn_type. Department, CostCenter, BusinessUnit and RetailChannel are
# Microsoft's values; LegalEntity, ValueStream and Region are our guesses in the same range.
INTERNAL_ORG_TYPES = {
    "LegalEntity": 806380000,
    "Department": 806380001,
    "CostCenter": 806380003,
    "ValueStream": 806380004,
    "BusinessUnit": 806380005,
    "Region": 806380006,
    "RetailChannel": 192350000,
}
HIERARCHY_PURPOSES = (
    "OrganizationChart",
    "Procurement",
    "Expenses",
    "SigningLimits",
    "CentralizedPayments",
    "Security",
    "RetailAssortment",
    "RetailReporting",
    "RetailReplenishment",
    "Budgeting",
)

# -- F&O ---------------------------------------------------------------------------------------------
OPERATING_UNITS = EntityDef(
    name="OperatingUnits",
    key=("OperatingUnitNumber",),
    fields=(
        Field("OperatingUnitNumber", max_length=20, required=True),
        Field("Name", max_length=100),
        Field("NameAlias", max_length=20),
        Field("LanguageId", max_length=7, default="en-us"),
        Field("PartyNumber", max_length=40, required=True),
        Field("OperatingUnitType", "enum", values=OPERATING_UNIT_TYPES, default="Department"),
    ),
    alternate_keys=(("PartyNumber",),),
    event_name="mserp_omoperatingunitentity",
    logical_name="OMOperatingUnitEntity",
    type_name="OperatingUnit",
)

HIERARCHY_TYPES = EntityDef(
    name="OrganizationHierarchyTypes",
    key=("Name",),
    fields=(Field("Name", max_length=60, required=True),),
    event_name="mserp_omhierarchytypeentity",
    logical_name="OMHierarchyTypeEntity",
    type_name="OrganizationHierarchyType",
)

HIERARCHY_PURPOSE_ROWS = EntityDef(
    name="OrganizationHierarchyPurposes",
    key=("HierarchyPurpose", "HierarchyType"),
    fields=(
        Field("HierarchyPurpose", "enum", values=HIERARCHY_PURPOSES, required=True),
        Field("HierarchyType", max_length=60, required=True, target="OrganizationHierarchyTypes", label="Hierarchy"),
        Field("Immutable", "enum", values=NO_YES, default="No"),
        Field("SetAsDefault", "enum", values=NO_YES, default="No"),
    ),
    event_name="mserp_omorganizationhierarchypurposeentity",
    logical_name="OMOrganizationHierarchyPurposeEntity",
    type_name="OrganizationHierarchyPurpose",
)

# Keyed by type and child, a simplification: real F&O keeps one row per validity period.
PUBLISHED_HIERARCHIES = EntityDef(
    name="OrganizationHierarchyPublished",
    key=("HierarchyType", "ChildOrganizationPartyNumber"),
    fields=(
        Field("HierarchyType", max_length=60, required=True, target="OrganizationHierarchyTypes", label="Hierarchy"),
        Field("ChildOrganizationPartyNumber", max_length=40, required=True),
        Field("ParentOrganizationPartyNumber", max_length=40),
        Field("ValidFrom", "datetime"),
        Field("ValidTo", "datetime"),
    ),
    event_name="mserp_omorganizationhierarchypublishedv2entity",
    logical_name="OMOrganizationHierarchyPublishedV2Entity",
    type_name="OrganizationHierarchyPublished",
)

FO_ENTITIES: tuple[EntityDef, ...] = (OPERATING_UNITS, HIERARCHY_TYPES, HIERARCHY_PURPOSE_ROWS, PUBLISHED_HIERARCHIES)

# -- Dataverse ---------------------------------------------------------------------------------------
INTERNAL_ORGANIZATIONS = EntityDef(
    name="msdyn_internalorganizations",
    key=("msdyn_internalorganizationid",),
    fields=(
        dv_pk("msdyn_internalorganizationid"),
        Field("msdyn_name", max_length=100),
        Field("msdyn_namealias", max_length=20),
        Field("msdyn_languageid", max_length=7),
        Field("msdyn_partynumber", max_length=40),
        Field("msdyn_type", "choice", values=tuple(INTERNAL_ORG_TYPES.values())),
        statecode(),
    ),
    alternate_keys=(("msdyn_partynumber",),),
    logical_name="msdyn_internalorganization",
)

DV_HIERARCHY_TYPES = EntityDef(
    name="msdyn_internalorganizationhierarchytypes",
    key=("msdyn_internalorganizationhierarchytypeid",),
    fields=(
        dv_pk("msdyn_internalorganizationhierarchytypeid"),
        Field("msdyn_name", max_length=60, required=True),
        statecode(),
    ),
    alternate_keys=(("msdyn_name",),),
    logical_name="msdyn_internalorganizationhierarchytype",
)

DV_HIERARCHY_PURPOSES = EntityDef(
    name="msdyn_internalorganizationhierarchypurposes",
    key=("msdyn_internalorganizationhierarchypurposeid",),
    fields=(
        dv_pk("msdyn_internalorganizationhierarchypurposeid"),
        Field("msdyn_hierarchypurpose", max_length=100),
        Field("msdyn_hierarchypurposetypename", max_length=60),
        Field("msdyn_hierarchytype", "lookup", target="msdyn_internalorganizationhierarchytypes"),
        Field("msdyn_immutable", "bool", default=False),
        Field("msdyn_setasdefault", "bool", default=False),
        statecode(),
    ),
    alternate_keys=(("msdyn_hierarchypurpose", "msdyn_hierarchypurposetypename"),),
    logical_name="msdyn_internalorganizationhierarchypurpose",
)

DV_HIERARCHIES = EntityDef(
    name="msdyn_internalorganizationhierarchies",
    key=("msdyn_internalorganizationhierarchyid",),
    fields=(
        dv_pk("msdyn_internalorganizationhierarchyid"),
        Field("msdyn_hierarchytypename", max_length=60),
        Field("msdyn_childpartynumber", max_length=40),
        Field("msdyn_hierarchytypeid", "lookup", target="msdyn_internalorganizationhierarchytypes"),
        Field("msdyn_parentid", "lookup", target="msdyn_internalorganizations"),
        Field("msdyn_childid", "lookup", target="msdyn_internalorganizations"),
        Field("msdyn_validfrom", "datetime"),
        Field("msdyn_validto", "datetime"),
        statecode(),
    ),
    alternate_keys=(("msdyn_hierarchytypename", "msdyn_childpartynumber"),),
    logical_name="msdyn_internalorganizationhierarchy",
)

DATAVERSE_ENTITIES: tuple[EntityDef, ...] = (
    INTERNAL_ORGANIZATIONS,
    DV_HIERARCHY_TYPES,
    DV_HIERARCHY_PURPOSES,
    DV_HIERARCHIES,
)

# -- seed --------------------------------------------------------------------------------------------
# (operating unit number, name, alias, type, party number)
UNITS = (
    ("OU-0001", "Contoso Entertainment Systems", "CES", "BusinessUnit", "000000701"),
    ("OU-0002", "Sales and Marketing", "Sales", "Department", "000000702"),
    ("OU-0003", "Finance", "Finance", "Department", "000000703"),
    ("OU-0004", "Research and Development", "R&D", "Department", "000000704"),
    ("OU-0005", "CC 001 Sales US", "CC001", "CostCenter", "000000705"),
    ("OU-0006", "CC 002 Finance US", "CC002", "CostCenter", "000000706"),
    ("OU-0007", "Car Audio", "CarAudio", "ValueStream", "000000707"),
    ("OU-0008", "Retail North America", "RetailNA", "Region", "000000708"),
    ("OU-0009", "Seattle Store", "Seattle", "RetailChannel", "000000709"),
)
TYPES = ("Departments", "CostCenters", "Retail")
# (purpose, hierarchy type, immutable, set as default)
PURPOSES = (
    ("OrganizationChart", "Departments", "No", "Yes"),
    ("Security", "Departments", "No", "No"),
    ("Expenses", "CostCenters", "No", "Yes"),
    ("Budgeting", "CostCenters", "Yes", "No"),
    ("RetailAssortment", "Retail", "No", "Yes"),
    ("RetailReporting", "Retail", "No", "No"),
)
# (hierarchy type, child party number, parent party number)
EDGES = (
    ("Departments", "000000702", "000000701"),
    ("Departments", "000000703", "000000701"),
    ("Departments", "000000704", "000000701"),
    ("CostCenters", "000000705", "000000702"),
    ("CostCenters", "000000706", "000000703"),
    ("Retail", "000000708", "000000701"),
    ("Retail", "000000709", "000000708"),
)
VALID_FROM = "2024-01-01T00:00:00Z"
VALID_TO = "2154-12-31T23:59:59Z"  # F&O's "never expires"


def fo_seed() -> Iterable[tuple[str, dict[str, Any]]]:
    for number, name, alias, unit_type, party in UNITS:
        yield (
            OPERATING_UNITS.name,
            {
                "OperatingUnitNumber": number,
                "Name": name,
                "NameAlias": alias,
                "LanguageId": "en-us",
                "PartyNumber": party,
                "OperatingUnitType": unit_type,
            },
        )
    for type_name in TYPES:
        yield HIERARCHY_TYPES.name, {"Name": type_name}
    for purpose, type_name, immutable, default in PURPOSES:
        yield (
            HIERARCHY_PURPOSE_ROWS.name,
            {"HierarchyPurpose": purpose, "HierarchyType": type_name, "Immutable": immutable, "SetAsDefault": default},
        )
    for type_name, child, parent in EDGES:
        yield (
            PUBLISHED_HIERARCHIES.name,
            {
                "HierarchyType": type_name,
                "ChildOrganizationPartyNumber": child,
                "ParentOrganizationPartyNumber": parent,
                "ValidFrom": VALID_FROM,
                "ValidTo": VALID_TO,
            },
        )


def dataverse_seed() -> Iterable[tuple[str, dict[str, Any]]]:
    return ()
