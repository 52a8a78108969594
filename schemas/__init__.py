"""Avro schemas of the change events, one per side and entity: `schemas/<side>/<entity set>.avsc`."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from dualwrite.errors import ConfigError


@cache
def load(side: str, entity_set: str) -> dict[str, Any]:
    """The parsed-JSON Avro schema of one side's entity set (file name is the lower-cased set name)."""
    path = resources.files(__name__).joinpath(side, f"{entity_set.lower()}.avsc")
    if not path.is_file():
        raise ConfigError(
            f"no Avro schema for {side} entity {entity_set!r} (expected schemas/{side}/{entity_set.lower()}.avsc)"
        )
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema


def schema_text(side: str, entity_set: str) -> str:
    return json.dumps(load(side, entity_set), separators=(",", ":"))


def record_fields(side: str, entity_set: str) -> dict[str, str]:
    """Field name -> Avro base type name ('string', 'long', 'decimal', 'boolean', 'double') of the row."""
    after = next(f for f in load(side, entity_set)["fields"] if f["name"] == "after")
    row = next(t for t in after["type"] if isinstance(t, dict))
    out: dict[str, str] = {}
    for f in row["fields"]:
        typ = next(t for t in f["type"] if t != "null")
        out[f["name"]] = str(typ.get("logicalType", typ["type"])) if isinstance(typ, dict) else str(typ)
    return out
