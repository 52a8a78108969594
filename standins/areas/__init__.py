"""The dual-write areas beyond companies and customers: the demo rows each seeds, one module per area.

An area module holds, for both stand-ins, the rows seeded at start:

    def fo_seed() -> Iterable[tuple[str, dict]]         # (entity set, row), referenced rows first
    def dataverse_seed() -> Iterable[tuple[str, dict]]  # rows every org already has (may be empty)

The entity sets themselves are the catalogue (`schemas/entities/`), the maps that sync them are
`maps/*.yaml`, and their Avro schemas are generated (`python -m schemas.generate`).
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType
from typing import Any

from standins.areas import currencies, organization, parties, products

AREAS: tuple[ModuleType, ...] = (currencies, organization, parties, products)


def fo_seed() -> Iterable[tuple[str, dict[str, Any]]]:
    for a in AREAS:
        yield from a.fo_seed()


def dataverse_seed() -> Iterable[tuple[str, dict[str, Any]]]:
    for a in AREAS:
        yield from a.dataverse_seed()
