"""Field declarations the area modules share."""

from __future__ import annotations

from standins.store import Field

NO_YES = ("No", "Yes")
COMPANIES = ("usmf", "demf")  # the seeded legal entities


def fo_company() -> Field:
    """F&O's legal-entity field of a company-specific entity."""
    return Field("dataAreaId", max_length=4, required=True)


def dv_pk(name: str) -> Field:
    """A Dataverse table's primary key (a GUID)."""
    return Field(name, "guid")


def dv_company() -> Field:
    """The company lookup dual-write adds to company-specific Dataverse tables."""
    return Field("msdyn_company", "lookup", target="cdm_companies")


def statecode() -> Field:
    return Field("statecode", "choice", values=(0, 1), default=0)
