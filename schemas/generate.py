"""Write `<out>/<side>/<entity set>.avsc` from the table maps and the entity catalogue.

    python -m schemas.generate          # (re)write the built-in schemas/ files
    python -m schemas.generate --check  # exit 1 when a committed file differs (run by the unit tests)
    python -m schemas.generate --maps my-maps --entities my-entities --out my-schemas

A schema's row holds exactly the fields the maps use on that side (keys, company, source filters,
mapped fields), typed from the entity catalogue (`schemas/entities/<side>/<entity set>.yaml`), so a
map naming a field the entity does not have fails here, not at run time. Every field is nullable
with a null default, which keeps adding fields BACKWARD compatible.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dualwrite.errors import ConfigError
from dualwrite.tablemap import TableMap, builtin_maps_dir, load_maps
from schemas.catalogue import Catalogue, load_catalogue

HERE = Path(__file__).parent
DECIMAL = {"type": "bytes", "logicalType": "decimal", "precision": 32, "scale": 6}
AVRO_TYPES: dict[str, Any] = {
    "string": "string",
    "enum": "string",  # F&O enums travel by name
    "guid": "string",
    "lookup": "string",  # a lookup travels as the related row's key value, never a GUID
    "datetime": "string",  # ISO 8601
    "int": "long",
    "choice": "long",
    "bool": "boolean",
    "decimal": DECIMAL,
}


def _envelope(side: str, entity_set: str, row: dict[str, Any]) -> dict[str, Any]:
    nullable = ["null", "string"]
    company_doc = "Legal entity (dataAreaId), lower case; empty for a global (shared) entity."
    origin = {
        "type": "record",
        "name": "Origin",
        "namespace": "dualwrite",
        "fields": [
            {"name": "side", "type": "string", "doc": "fo or dataverse"},
            {"name": "by_dualwrite", "type": "boolean", "doc": "The change was written by dualwrite itself."},
            {"name": "user_id", "type": nullable, "default": None},
            {"name": "correlation_id", "type": nullable, "default": None},
        ],
    }
    ops = ["create", "update", "delete", "snapshot"]
    return {
        "type": "record",
        "name": "Change",
        "namespace": row["namespace"],
        "doc": f"A change to one {'F&O' if side == 'fo' else 'Dataverse'} {entity_set} row, with the dualwrite "
        "change envelope.",
        "fields": [
            {"name": "event_id", "type": "string", "doc": "Unique id of this change event (UUID)."},
            {"name": "op", "type": {"type": "enum", "name": "Op", "namespace": "dualwrite", "symbols": ops}},
            {"name": "entity", "type": "string", "doc": "Entity set or table the row belongs to."},
            {"name": "company", "type": "string", "doc": company_doc},
            {"name": "key", "type": "string", "doc": "company|natural key; also the Kafka message key."},
            {
                "name": "source_time",
                "type": {"type": "long", "logicalType": "timestamp-millis"},
                "doc": "When the source committed the change.",
            },
            {"name": "source_version", "type": nullable, "default": None, "doc": "Row version or ETag at the source."},
            {
                "name": "source_id",
                "type": nullable,
                "default": None,
                "doc": "The row's own id at the source (Dataverse primary key, F&O data-event Id).",
            },
            {"name": "origin", "type": origin},
            {
                "name": "after",
                "type": ["null", row],
                "default": None,
                "doc": "The row after the change; null on delete.",
            },
        ],
    }


def _side_fields(side: str, m: TableMap) -> list[str]:
    if side == "fo":
        names = [*([m.fo.company_field] if m.fo.company_field else []), *m.fo.key, *m.fo.filter]
        return names + [f.fo for f in m.fields if f.fo]
    d = m.dataverse
    company = [c for c in (d.company_lookup, d.company_field) if c]
    return [d.primary_key, *company, *d.key, *d.filter, *[f.dataverse for f in m.fields if f.dataverse]]


def build(
    maps: dict[str, TableMap], catalogue: Catalogue | None = None, out: Path = HERE
) -> dict[Path, dict[str, Any]]:
    """Every schema the maps need, by file path under `out`."""
    catalogue = catalogue or load_catalogue()
    declared = {side: {e.name.lower(): e for e in catalogue.entities(side)} for side in ("fo", "dataverse")}
    fields: dict[tuple[str, str], list[str]] = {}
    for m in maps.values():
        for side, entity_set in (("fo", m.fo.entity_set), ("dataverse", m.dataverse.entity_set)):
            names = fields.setdefault((side, entity_set), [])
            names.extend(n for n in _side_fields(side, m) if n not in names)
    schemas: dict[Path, dict[str, Any]] = {}
    for (side, entity_set), names in sorted(fields.items()):
        entity = declared[side].get(entity_set.lower())
        if entity is None:
            raise SystemExit(
                f"{side} entity set {entity_set} is not in the entity catalogue "
                f"({catalogue.directory / side / (entity_set + '.yaml')})"
            )
        if side == "dataverse":
            names = [*names, "_modifiedby_value"]
        row_fields = []
        for name in names:
            f = entity.field(name)
            if f is None and name != "_modifiedby_value":
                raise SystemExit(f"{side} {entity_set}: a map names field {name}, which the entity does not have")
            typ = "string" if f is None else AVRO_TYPES[f.type]
            row_fields.append({"name": name if f is None else f.name, "type": ["null", typ], "default": None})
        namespace = f"dualwrite.{side}.{entity_set.lower()}"
        row = {
            "type": "record",
            "name": "Row",
            "namespace": namespace,
            "doc": f"{'F&O' if side == 'fo' else 'Dataverse'} {entity_set} row.",
            "fields": row_fields,
        }
        schemas[out / side / f"{entity_set.lower()}.avsc"] = _envelope(side, entity_set, row)
    return schemas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare with the files in --out")
    parser.add_argument("--maps", type=Path, default=None, help="table maps directory (default: the built-in maps)")
    parser.add_argument("--entities", type=Path, default=None, help="entity catalogue (default: schemas/entities)")
    parser.add_argument("--out", type=Path, default=HERE, help="schema directory to write (default: schemas/)")
    args = parser.parse_args(argv)
    out: Path = args.out
    try:
        wanted = build(load_maps(args.maps or builtin_maps_dir()), load_catalogue(args.entities), out)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stale = []
    for path, schema in wanted.items():
        text = json.dumps(schema, indent=2) + "\n"
        if not path.exists() or path.read_text() != text:
            stale.append(path)
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    extra = sorted(set(out.glob("*/*.avsc")) - set(wanted))
    for path in extra:
        print(f"{path.relative_to(out.parent)}: no map uses it", file=sys.stderr)
    if args.check:
        for path in stale:
            print(f"{path.relative_to(out.parent)} differs from the generated schema", file=sys.stderr)
        return 1 if stale or extra else 0
    print(f"{len(wanted)} schemas, {len(stale)} rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
