"""Area products: entity sets of both stand-ins and their seed rows (see standins/areas/__init__.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from standins.store import EntityDef

FO_ENTITIES: tuple[EntityDef, ...] = ()
DATAVERSE_ENTITIES: tuple[EntityDef, ...] = ()


def fo_seed() -> Iterable[tuple[str, dict[str, Any]]]:
    return ()


def dataverse_seed() -> Iterable[tuple[str, dict[str, Any]]]:
    return ()
