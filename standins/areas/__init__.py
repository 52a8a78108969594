"""The dual-write areas beyond companies and customers, each declared as data in its own module.

An area module holds, for both stand-ins, the entity sets it serves and the demo rows seeded at start:

    FO_ENTITIES: tuple[EntityDef, ...]         # F&O data entities (OData entity sets)
    DATAVERSE_ENTITIES: tuple[EntityDef, ...]  # Dataverse tables (entity set names)
    def fo_seed() -> Iterable[tuple[str, dict]]         # (entity set, row), referenced rows first
    def dataverse_seed() -> Iterable[tuple[str, dict]]  # rows every org already has (may be empty)

The maps that sync them are `maps/*.yaml`; their Avro schemas are generated (`python -m schemas.generate`).
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType
from typing import Any

from standins.areas import currencies, organization, parties, products
from standins.store import EntityDef

AREAS: tuple[ModuleType, ...] = (currencies, organization, parties, products)


def fo_entities() -> tuple[EntityDef, ...]:
    return tuple(e for a in AREAS for e in a.FO_ENTITIES)


def dataverse_entities() -> tuple[EntityDef, ...]:
    return tuple(e for a in AREAS for e in a.DATAVERSE_ENTITIES)


def fo_seed() -> Iterable[tuple[str, dict[str, Any]]]:
    for a in AREAS:
        yield from a.fo_seed()


def dataverse_seed() -> Iterable[tuple[str, dict[str, Any]]]:
    for a in AREAS:
        yield from a.dataverse_seed()
