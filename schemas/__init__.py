"""Avro schemas of the change events, one per side and entity: `<schemas dir>/<side>/<entity set>.avsc`.

The built-in directory is this package; a user with their own maps and catalogue generates their own
(`python -m schemas.generate --out DIR`) and points `schemas_dir` in the config at it.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from dualwrite.errors import ConfigError


def builtin_dir() -> Path:
    return Path(str(resources.files(__name__)))


@cache
def load(side: str, entity_set: str, directory: Path | None = None) -> dict[str, Any]:
    """The parsed-JSON Avro schema of one side's entity set (file name is the lower-cased set name)."""
    path = (directory or builtin_dir()) / side / f"{entity_set.lower()}.avsc"
    if not path.is_file():
        raise ConfigError(f"no Avro schema for {side} entity {entity_set!r} (expected {path})")
    try:
        schema: dict[str, Any] = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    return schema


def schema_text(side: str, entity_set: str, directory: Path | None = None) -> str:
    return json.dumps(load(side, entity_set, directory), separators=(",", ":"))


def record_fields(side: str, entity_set: str, directory: Path | None = None) -> dict[str, str]:
    """Field name -> Avro base type name ('string', 'long', 'decimal', 'boolean', 'double') of the row."""
    after = next(f for f in load(side, entity_set, directory)["fields"] if f["name"] == "after")
    row = next(t for t in after["type"] if isinstance(t, dict))
    out: dict[str, str] = {}
    for f in row["fields"]:
        typ = next(t for t in f["type"] if t != "null")
        out[f["name"]] = str(typ.get("logicalType", typ["type"])) if isinstance(typ, dict) else str(typ)
    return out
