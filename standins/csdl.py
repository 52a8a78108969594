"""The `$metadata` documents (OData v4 CSDL XML) both stand-ins serve, written from the entity catalogue."""

from __future__ import annotations

from xml.etree import ElementTree as ET

from schemas.catalogue import Entity, Field
from standins.odata import ODataResponse

EDMX = "http://docs.oasis-open.org/odata/ns/edmx"
EDM = "http://docs.oasis-open.org/odata/ns/edm"
FO_NAMESPACE = "Microsoft.Dynamics.DataEntities"
DV_NAMESPACE = "Microsoft.Dynamics.CRM"
DV_ALIAS = "mscrm"
_EDM_TYPES = {
    "string": "Edm.String",
    "int": "Edm.Int32",
    "choice": "Edm.Int32",  # Dataverse CSDL types a choice as Int32; its options are in EntityDefinitions
    "decimal": "Edm.Decimal",
    "bool": "Edm.Boolean",
    "datetime": "Edm.DateTimeOffset",
    "guid": "Edm.Guid",
    "lookup": "Edm.Guid",
}


def xml_response(text: str) -> ODataResponse:
    return ODataResponse(200, {"Content-Type": "application/xml", "OData-Version": "4.0"}, text.encode())


def _document(schema_attrs: dict[str, str]) -> tuple[ET.Element, ET.Element]:
    root = ET.Element("edmx:Edmx", {"Version": "4.0", "xmlns:edmx": EDMX})
    services = ET.SubElement(root, "edmx:DataServices")
    schema = ET.SubElement(services, "Schema", {**schema_attrs, "xmlns": EDM})
    return root, schema


def _text(root: ET.Element) -> str:
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _key(parent: ET.Element, entity: Entity, name_of: dict[str, str] | None = None) -> None:
    key = ET.SubElement(parent, "Key")
    for name in entity.key:
        ET.SubElement(key, "PropertyRef", {"Name": (name_of or {}).get(name, name)})


# -- F&O ----------------------------------------------------------------------------------------------
def _fo_type(entity: Entity) -> str:
    return entity.type_name or entity.name


def _enum_names(entities: list[Entity]) -> tuple[dict[tuple[str, str], str], dict[str, tuple[str, ...]]]:
    """An EnumType name per enum field (the catalogue keeps members, not the X++ enum's name)."""
    taken = {_fo_type(e) for e in entities}
    members: dict[str, tuple[str, ...]] = {}
    names: dict[tuple[str, str], str] = {}
    for e in entities:
        for f in e.fields:
            if f.type != "enum":
                continue
            name = "NoYes" if f.values == ("No", "Yes") else f.name
            if name in taken or members.get(name, f.values) != f.values:
                name = f"{_fo_type(e)}{f.name}"
            n = 2
            base = name
            while name in taken or members.get(name, f.values) != f.values:
                name, n = f"{base}{n}", n + 1
            members[name] = f.values
            names[(e.name, f.name)] = name
    return names, members


def _nav_name(f: Field, target: Entity, used: set[str]) -> str:
    name = _fo_type(target)
    if name in used:
        name = f"{f.name}_{name}"
    used.add(name)
    return name


def fo_metadata(entities: list[Entity]) -> str:
    """F&O's CSDL: entity types named by type_name, enum types, navigation for fields with a target."""
    by_set = {e.name: e for e in entities}
    enum_of, members = _enum_names(entities)
    root, schema = _document({"Namespace": FO_NAMESPACE})
    bindings: dict[str, list[tuple[str, str]]] = {}
    for e in entities:
        etype = ET.SubElement(schema, "EntityType", {"Name": _fo_type(e)})
        _key(etype, e)
        for f in e.fields:
            attrs = {"Name": f.name}
            if f.type == "enum":
                attrs["Type"] = f"{FO_NAMESPACE}.{enum_of[(e.name, f.name)]}"
            else:
                attrs["Type"] = _EDM_TYPES[f.type]
            if f.required or f.name in e.key:
                attrs["Nullable"] = "false"
            if f.max_length is not None and f.type == "string":
                attrs["MaxLength"] = str(f.max_length)
            if f.type == "decimal":
                attrs.update({"Precision": "32", "Scale": "6"})
            ET.SubElement(etype, "Property", attrs)
        used = {f.name for f in e.fields}
        for f in e.fields:
            target = by_set.get(f.target or "")
            if target is None:
                continue
            name = _nav_name(f, target, used)
            nav = ET.SubElement(
                etype, "NavigationProperty", {"Name": name, "Type": f"{FO_NAMESPACE}.{_fo_type(target)}"}
            )
            if e.company_field and target.company_field:
                ET.SubElement(
                    nav,
                    "ReferentialConstraint",
                    {"Property": e.company_field, "ReferencedProperty": target.company_field},
                )
            ET.SubElement(nav, "ReferentialConstraint", {"Property": f.name, "ReferencedProperty": target.key[-1]})
            bindings.setdefault(e.name, []).append((name, target.name))
    for name, values in members.items():
        enum = ET.SubElement(schema, "EnumType", {"Name": name})
        for i, value in enumerate(values):
            ET.SubElement(enum, "Member", {"Name": value, "Value": str(i)})
    container = ET.SubElement(schema, "EntityContainer", {"Name": "Resources"})
    for e in entities:
        entity_set = ET.SubElement(
            container, "EntitySet", {"Name": e.name, "EntityType": f"{FO_NAMESPACE}.{_fo_type(e)}"}
        )
        for path, target_set in bindings.get(e.name, []):
            ET.SubElement(entity_set, "NavigationPropertyBinding", {"Path": path, "Target": target_set})
    return _text(root)


# -- Dataverse ----------------------------------------------------------------------------------------
def dataverse_metadata(entities: list[Entity]) -> str:
    """Dataverse's CSDL: entity types named by logical name, lookups as `_<name>_value` plus navigation."""
    by_set = {e.name: e for e in entities}
    root, schema = _document({"Namespace": DV_NAMESPACE, "Alias": DV_ALIAS})
    ET.SubElement(schema, "EntityType", {"Name": "crmbaseentity", "Abstract": "true"})
    for e in entities:
        etype = ET.SubElement(schema, "EntityType", {"Name": e.logical_name, "BaseType": f"{DV_ALIAS}.crmbaseentity"})
        _key(etype, e)
        for f in e.fields:
            name = f"_{f.name}_value" if f.type == "lookup" else f.name
            attrs = {"Name": name, "Type": _EDM_TYPES[f.type]}
            if f.type == "string":
                attrs["Unicode"] = "false"
            ET.SubElement(etype, "Property", attrs)
        for f in e.fields:
            target = by_set.get(f.target or "") if f.type == "lookup" else None
            if target is None:
                continue
            nav = ET.SubElement(
                etype, "NavigationProperty", {"Name": f.name, "Type": f"{DV_ALIAS}.{target.logical_name}"}
            )
            ET.SubElement(
                nav, "ReferentialConstraint", {"Property": f"_{f.name}_value", "ReferencedProperty": target.key[0]}
            )
    container = ET.SubElement(schema, "EntityContainer", {"Name": "System"})
    for e in entities:
        ET.SubElement(container, "EntitySet", {"Name": e.name, "EntityType": f"{DV_NAMESPACE}.{e.logical_name}"})
    return _text(root)
