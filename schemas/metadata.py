"""Import catalogue entities from the services' own metadata: pure functions, text in, entities out.

F&O: the OData CSDL at `/data/$metadata`. Dataverse: the CSDL at `/api/data/v9.2/$metadata`, or
(richer: lengths, required levels, alternate keys, option values) `EntityDefinitions` with
`$expand=Attributes,Keys`. `merge` lays an import over the existing catalogue entry: the metadata
wins for what it states, the entry keeps what metadata does not carry (event names, labels, defaults).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from dualwrite.errors import ConfigError
from schemas.catalogue import SIDES, Entity, Field, load_entity, write_entity

EDMX = "{http://docs.oasis-open.org/odata/ns/edmx}"
EDM = "{http://docs.oasis-open.org/odata/ns/edm}"
FO_NAMESPACE = "Microsoft.Dynamics.DataEntities"
DV_NAMESPACE = "Microsoft.Dynamics.CRM"
FO_COMPANY_FIELD = "dataAreaId"
_EDM_TYPES = {
    "Edm.String": "string",
    "Edm.Int16": "int",
    "Edm.Int32": "int",
    "Edm.Int64": "int",
    "Edm.Byte": "int",
    "Edm.Decimal": "decimal",
    "Edm.Double": "decimal",
    "Edm.Single": "decimal",
    "Edm.Boolean": "bool",
    "Edm.DateTimeOffset": "datetime",
    "Edm.Date": "datetime",
    "Edm.Guid": "guid",
}
# EntityDefinitions AttributeType -> catalogue type; the others (Virtual, EntityName, ...) are not columns
_ATTRIBUTE_TYPES = {
    "String": "string",
    "Memo": "string",
    "Integer": "int",
    "BigInt": "int",
    "Decimal": "decimal",
    "Money": "decimal",
    "Double": "decimal",
    "Boolean": "bool",
    "DateTime": "datetime",
    "Uniqueidentifier": "guid",
    "Lookup": "lookup",
    "Customer": "lookup",
    "Owner": "lookup",
    "Picklist": "choice",
    "State": "choice",
    "Status": "choice",
}


@dataclass(frozen=True)
class Imported(Entity):
    """An entity read from metadata; `unstated` names what that kind of metadata does not carry."""

    unstated: frozenset[str] = frozenset()


# what each source leaves out, besides event names, labels and defaults (which none carries)
_FO_CSDL_UNSTATED = frozenset({"alternate_keys"})
_DV_CSDL_UNSTATED = frozenset({"alternate_keys", "max_length", "required", "choice", "company_field"})
_DV_DEFINITIONS_UNSTATED = frozenset({"company_field"})


# -- CSDL ---------------------------------------------------------------------------------------------
class _Csdl:
    """The parts of a CSDL document the importers need, by qualified name."""

    def __init__(self, xml_text: str, namespace: str, side: str) -> None:
        try:
            root = ET.fromstring(xml_text)
        except ET.ParseError as exc:
            raise ConfigError(f"{side} metadata is not XML: {exc}") from None
        if root.tag != f"{EDMX}Edmx":
            raise ConfigError(f"{side} metadata: the root element is {root.tag}, not edmx:Edmx (OData CSDL)")
        self.schemas = root.findall(f"{EDMX}DataServices/{EDM}Schema")
        if not any(s.get("Namespace") == namespace for s in self.schemas):
            found = ", ".join(str(s.get("Namespace")) for s in self.schemas) or "none"
            raise ConfigError(f"{side} metadata has no schema {namespace} (found: {found}); is it the other side's?")
        self.aliases = {s.get("Alias"): s.get("Namespace") for s in self.schemas if s.get("Alias")}
        self.types: dict[str, ET.Element] = {}
        self.enums: dict[str, tuple[str, ...]] = {}
        for schema in self.schemas:
            ns = schema.get("Namespace")
            for t in schema.findall(f"{EDM}EntityType"):
                self.types[f"{ns}.{t.get('Name')}"] = t
            for t in schema.findall(f"{EDM}EnumType"):
                self.enums[f"{ns}.{t.get('Name')}"] = tuple(str(m.get("Name")) for m in t.findall(f"{EDM}Member"))
        self.sets: list[tuple[str, str, dict[str, str]]] = []  # (set name, qualified type, nav path -> target set)
        for container in (c for s in self.schemas for c in s.findall(f"{EDM}EntityContainer")):
            for es in container.findall(f"{EDM}EntitySet"):
                bindings = {
                    str(b.get("Path")): str(b.get("Target")) for b in es.findall(f"{EDM}NavigationPropertyBinding")
                }
                self.sets.append((str(es.get("Name")), self.qualified(str(es.get("EntityType"))), bindings))
        if not self.sets:
            raise ConfigError(f"{side} metadata has no EntityContainer with EntitySets")
        self.set_of_type: dict[str, str] = {}
        for name, type_name, _ in self.sets:
            self.set_of_type.setdefault(type_name, name)

    def qualified(self, name: str) -> str:
        """A type name with its alias (`mscrm.account`) replaced by the namespace."""
        prefix, _, short = name.rpartition(".")
        return f"{self.aliases.get(prefix, prefix)}.{short}"

    def entity_type(self, entity_set: str, type_name: str) -> ET.Element:
        found = self.types.get(type_name)
        if found is None:
            raise ConfigError(f"metadata: entity set {entity_set} has type {type_name}, which is not defined")
        return found

    def key(self, entity_set: str, etype: ET.Element) -> tuple[str, ...]:
        key = tuple(str(r.get("Name")) for r in etype.findall(f"{EDM}Key/{EDM}PropertyRef"))
        if not key:
            raise ConfigError(f"metadata: entity type {etype.get('Name')} of {entity_set} has no Key")
        return key

    def navigations(self, etype: ET.Element, bindings: dict[str, str]) -> list[tuple[str, str | None, list[str]]]:
        """(navigation name, target entity set, referencing properties) of the single-valued ones."""
        out = []
        for nav in etype.findall(f"{EDM}NavigationProperty"):
            type_name = str(nav.get("Type"))
            if type_name.startswith("Collection("):
                continue
            name = str(nav.get("Name"))
            target = bindings.get(name) or self.set_of_type.get(self.qualified(type_name))
            props = [str(c.get("Property")) for c in nav.findall(f"{EDM}ReferentialConstraint")]
            out.append((name, target, props))
        return out


def _imported(**values: Any) -> Imported:
    try:
        return Imported(**values)
    except ConfigError as exc:
        raise ConfigError(f"metadata: {exc}") from None


def parse_fo_csdl(xml_text: str) -> list[Entity]:
    """F&O's `$metadata`: one entity per EntitySet, enums with their members, targets from navigation."""
    doc = _Csdl(xml_text, FO_NAMESPACE, "F&O")
    out: list[Entity] = []
    for entity_set, type_name, bindings in doc.sets:
        etype = doc.entity_type(entity_set, type_name)
        key = doc.key(entity_set, etype)
        company = FO_COMPANY_FIELD if FO_COMPANY_FIELD in key else None
        targets: dict[str, str] = {}
        for _, target, props in doc.navigations(etype, bindings):
            for referencing in props:
                if target is not None and referencing != company:
                    targets.setdefault(referencing, target)
        fields_ = []
        for prop in etype.findall(f"{EDM}Property"):
            name, edm_type = str(prop.get("Name")), doc.qualified(str(prop.get("Type")))
            values: tuple[str, ...] = ()
            if edm_type in doc.enums:
                typ, values = "enum", doc.enums[edm_type]
            elif edm_type in _EDM_TYPES:
                typ = _EDM_TYPES[edm_type]
            else:
                continue  # binary, streams and complex types are not syncable columns
            max_length = prop.get("MaxLength")
            fields_.append(
                Field(
                    name,
                    typ,
                    max_length=int(max_length) if typ == "string" and max_length and max_length.isdigit() else None,
                    values=values,
                    target=targets.get(name),
                    required=prop.get("Nullable") == "false",
                )
            )
        out.append(
            _imported(
                name=entity_set,
                key=key,
                fields=tuple(fields_),
                company_field=company,
                type_name=type_name.rpartition(".")[2],
                unstated=_FO_CSDL_UNSTATED,
            )
        )
    return out


def parse_dataverse_csdl(xml_text: str) -> list[Entity]:
    """Dataverse's `$metadata`: entity types by logical name, `_<name>_value` Guid properties as lookups."""
    doc = _Csdl(xml_text, DV_NAMESPACE, "Dataverse")
    out: list[Entity] = []
    for entity_set, type_name, bindings in doc.sets:
        etype = doc.entity_type(entity_set, type_name)
        key = doc.key(entity_set, etype)
        targets: dict[str, set[str | None]] = {}
        for _, target, props in doc.navigations(etype, bindings):
            for referencing in props:
                targets.setdefault(referencing, set()).add(target)
        fields_ = []
        for prop in etype.findall(f"{EDM}Property"):
            name, edm_type = str(prop.get("Name")), str(prop.get("Type"))
            if edm_type not in _EDM_TYPES:
                continue
            typ = _EDM_TYPES[edm_type]
            target = None
            if typ == "guid" and name.startswith("_") and name.endswith("_value") and name not in key:
                # a polymorphic lookup (customer, owner) has one navigation per target: no single target
                found = targets.get(name, set())
                target = next(iter(found)) if len(found) == 1 else None
                typ, name = "lookup", name[1 : -len("_value")]
            fields_.append(Field(name, typ, target=target))
        out.append(
            _imported(
                name=entity_set,
                key=key,
                fields=tuple(fields_),
                logical_name=type_name.rpartition(".")[2],
                unstated=_DV_CSDL_UNSTATED,
            )
        )
    return out


# -- EntityDefinitions --------------------------------------------------------------------------------
def _definitions(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, dict) and isinstance(data.get("value"), list):
        data = data["value"]
    items = data if isinstance(data, list) else [data]
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("LogicalName"), str):
            raise ConfigError("Dataverse EntityDefinitions: each table definition needs a LogicalName")
        if not isinstance(item.get("EntitySetName"), str):
            raise ConfigError(f"Dataverse EntityDefinitions of {item['LogicalName']}: EntitySetName is missing")
        if not isinstance(item.get("Attributes"), list):
            raise ConfigError(
                f"Dataverse EntityDefinitions of {item['LogicalName']} carry no Attributes: "
                "request them with $expand=Attributes,Keys"
            )
    return items


def _option_values(attribute: dict[str, Any]) -> tuple[int, ...]:
    for name in ("OptionSet", "GlobalOptionSet"):
        options = (attribute.get(name) or {}).get("Options")
        if isinstance(options, list):
            return tuple(int(o["Value"]) for o in options if isinstance(o, dict) and "Value" in o)
    return ()  # not expanded: unknown here, merge keeps the catalogue's


def fold_option_sets(definition: dict[str, Any], attributes: Any) -> dict[str, Any]:
    """A table definition whose Attributes carry the OptionSets of a cast query's answer.

    `$expand=Attributes` leaves option values out; they come from
    `.../Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata?$select=LogicalName&$expand=OptionSet`."""
    items = attributes.get("value") if isinstance(attributes, dict) and "value" in attributes else attributes
    if not isinstance(items, list):
        raise ConfigError("Dataverse attribute metadata: a list of attributes (a `value` page) was expected")
    options = {a.get("LogicalName"): a["OptionSet"] for a in items if isinstance(a, dict) and a.get("OptionSet")}
    tables = _definitions(definition)
    if len(tables) != 1:
        raise ConfigError(f"Dataverse EntityDefinitions: one table definition expected, not {len(tables)}")
    definition = tables[0]
    merged = [
        {**a, "OptionSet": options[a.get("LogicalName")]} if a.get("LogicalName") in options else a
        for a in definition["Attributes"]
    ]
    return {**definition, "Attributes": merged}


def parse_entity_definitions(data: Any, entity_sets: Mapping[str, str] | None = None) -> list[Entity]:
    """Dataverse `EntityDefinitions` (one definition, a list, or a `{"value": [...]}` page) with Attributes.

    A lookup's Targets are logical names; `entity_sets` (logical name -> entity set, e.g. from the
    catalogue) resolves those the imported definitions themselves do not."""
    items = _definitions(data)
    sets = {**(entity_sets or {}), **{i["LogicalName"]: i["EntitySetName"] for i in items}}
    out: list[Entity] = []
    for item in items:
        logical = item["LogicalName"]
        attributes = [a for a in item["Attributes"] if isinstance(a, dict) and not a.get("AttributeOf")]
        primary = item.get("PrimaryIdAttribute") or next(
            (a.get("LogicalName") for a in attributes if a.get("IsPrimaryId")), None
        )
        if not isinstance(primary, str):
            raise ConfigError(f"Dataverse EntityDefinitions of {logical}: no PrimaryIdAttribute")
        fields_ = []
        for a in attributes:
            typ = _ATTRIBUTE_TYPES.get(str(a.get("AttributeType")))
            if typ is None or not isinstance(a.get("LogicalName"), str):
                continue
            name = a["LogicalName"]
            targets = a.get("Targets") or []
            level = (a.get("RequiredLevel") or {}).get("Value")
            max_length = a.get("MaxLength") if typ == "string" else None
            fields_.append(
                Field(
                    name,
                    typ,
                    max_length=max_length if isinstance(max_length, int) and max_length > 0 else None,
                    values=_option_values(a) if typ == "choice" else (),
                    target=sets.get(targets[0]) if typ == "lookup" and len(targets) == 1 else None,
                    # only SystemRequired is enforced by the API; the service sets the primary key itself
                    required=level == "SystemRequired" and name != primary,
                )
            )
        names = {f.name for f in fields_}
        keys = item.get("Keys")
        unstated = _DV_DEFINITIONS_UNSTATED | (frozenset() if isinstance(keys, list) else {"alternate_keys"})
        alternate = tuple(
            tuple(k["KeyAttributes"])
            for k in keys or []
            if isinstance(k, dict) and k.get("KeyAttributes") and set(k["KeyAttributes"]) <= names
        )
        primary_name = item.get("PrimaryNameAttribute")
        out.append(
            _imported(
                name=item["EntitySetName"],
                key=(primary,),
                fields=tuple(fields_),
                alternate_keys=alternate,
                logical_name=logical,
                primary_name=primary_name if primary_name in names else None,
                unstated=unstated,
            )
        )
    return out


def load_metadata_text(side: str, text: str, entity_sets: Mapping[str, str] | None = None) -> list[Entity]:
    """Entities from metadata text, deciding by content: XML is that side's CSDL, JSON is EntityDefinitions."""
    if side not in SIDES:
        raise ConfigError(f"unknown side {side!r} (fo or dataverse)")
    body = text.lstrip("\ufeff \t\r\n")
    if body.startswith("<"):
        return parse_fo_csdl(body) if side == "fo" else parse_dataverse_csdl(body)
    if body.startswith(("{", "[")):
        if side == "fo":
            raise ConfigError("F&O metadata is the CSDL XML of /data/$metadata, not JSON")
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"Dataverse metadata is not valid JSON: {exc}") from None
        return parse_entity_definitions(data, entity_sets)
    raise ConfigError(f"{side} metadata is neither CSDL XML nor EntityDefinitions JSON (starts {body[:40]!r})")


# -- merging into the catalogue -----------------------------------------------------------------------
def _plain(entity: Entity) -> Entity:
    """The catalogue entity without the import's bookkeeping."""
    return Entity(**{f.name: getattr(entity, f.name) for f in fields(Entity) if f.init})


def _merge_field(old: Field | None, new: Field, unstated: frozenset[str]) -> Field:
    if old is None:
        return new
    merged = new
    if "choice" in unstated and new.type == "int" and old.type == "choice":
        merged = replace(merged, type="choice")  # CSDL types a choice as Edm.Int32
    if merged.type != old.type:
        return replace(merged, label=old.label)  # a new type: its old length, values and default no longer apply
    if merged.type == "choice" and not merged.values:
        merged = replace(merged, values=old.values)
    if "max_length" in unstated:
        merged = replace(merged, max_length=old.max_length)
    if "required" in unstated:
        merged = replace(merged, required=old.required)
    if merged.target is None:
        merged = replace(merged, target=old.target)
    default = old.default if not merged.values or old.default in merged.values else None
    return replace(merged, default=default, label=old.label)


def merge(existing: Entity | None, imported: Entity) -> Entity:
    """The catalogue entry after an import: what the metadata states wins, the rest is kept from `existing`."""
    if existing is None:
        return _plain(imported)
    unstated: frozenset[str] = getattr(imported, "unstated", frozenset())
    merged_fields = tuple(_merge_field(existing.field(f.name), f, unstated) for f in imported.fields)
    names = {f.name for f in merged_fields}
    alternate = imported.alternate_keys
    if "alternate_keys" in unstated:
        alternate = tuple(k for k in existing.alternate_keys if set(k) <= names)
    company = imported.company_field
    if "company_field" in unstated and existing.company_field in names:
        company = existing.company_field
    return Entity(
        name=imported.name,
        key=imported.key,
        fields=merged_fields,
        alternate_keys=alternate,
        company_field=company,
        event_name=imported.event_name or existing.event_name,
        logical_name=imported.logical_name or existing.logical_name,
        type_name=imported.type_name or existing.type_name,
        primary_name=imported.primary_name or (existing.primary_name if existing.primary_name in names else None),
    )


def import_into(
    directory: Path, side: str, entities: Iterable[Entity], only_sets: list[str] | None = None
) -> list[str]:
    """Merge imported entities into `<directory>/<side>/*.yaml` (all, or `only_sets`); returns the sets written."""
    entities = list(entities)
    if only_sets is not None:
        missing = sorted(set(only_sets) - {e.name for e in entities})
        if missing:
            raise ConfigError(f"{side} metadata has no entity set {', '.join(missing)}")
        entities = [e for e in entities if e.name in only_sets]
    written = []
    for entity in entities:
        path = Path(directory) / side / f"{entity.name}.yaml"
        existing = load_entity(path) if path.exists() else None
        write_entity(directory, side, merge(existing, entity))
        written.append(entity.name)
    return written
