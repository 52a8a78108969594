"""Area organization: operating units, hierarchy types and purposes, published hierarchies.

Global (shared by all legal entities) and owned by F&O: dual-write copies them one way to Dataverse's
msdyn_internalorganization* tables. Operating units are found by party number on both sides, because
that is how the published hierarchy refers to them. The entity sets are in schemas/entities/.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

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
            "OperatingUnits",
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
        yield "OrganizationHierarchyTypes", {"Name": type_name}
    for purpose, type_name, immutable, default in PURPOSES:
        yield (
            "OrganizationHierarchyPurposes",
            {"HierarchyPurpose": purpose, "HierarchyType": type_name, "Immutable": immutable, "SetAsDefault": default},
        )
    for type_name, child, parent in EDGES:
        yield (
            "OrganizationHierarchyPublished",
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
