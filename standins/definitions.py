"""Dataverse table definitions (`EntityDefinitions`, with Attributes and Keys) served from the entity catalogue."""

from __future__ import annotations

import uuid
from typing import Any

from schemas.catalogue import Entity, Field
from standins.odata import (
    ODataError,
    ODataRequest,
    ODataResponse,
    QueryError,
    json_response,
    literal,
    parse_key,
    parse_select,
    split_resource_path,
    tokenize,
)

CRM = "Microsoft.Dynamics.CRM"
NOT_FOUND = "0x80040217"
_IDS = uuid.UUID("5d3c1b7a-2f4e-4a6b-9c8d-7e6f5a4b3c2d")
# catalogue type -> (AttributeType, AttributeTypeName, metadata type)
_TYPES = {
    "string": ("String", "StringType", "StringAttributeMetadata"),
    "enum": ("String", "StringType", "StringAttributeMetadata"),
    "int": ("Integer", "IntegerType", "IntegerAttributeMetadata"),
    "decimal": ("Decimal", "DecimalType", "DecimalAttributeMetadata"),
    "bool": ("Boolean", "BooleanType", "BooleanAttributeMetadata"),
    "datetime": ("DateTime", "DateTimeType", "DateTimeAttributeMetadata"),
    "guid": ("Uniqueidentifier", "UniqueidentifierType", "UniqueIdentifierAttributeMetadata"),
    "lookup": ("Lookup", "LookupType", "LookupAttributeMetadata"),
    "choice": ("Picklist", "PicklistType", "PicklistAttributeMetadata"),
}
_STATE = ("State", "StateType", "StateAttributeMetadata")  # statecode is a choice of its own kind
_OPTION_SETS = ("PicklistAttributeMetadata", "StateAttributeMetadata")


def metadata_id(*parts: str) -> str:
    """A stable MetadataId, so every start (and every stand-in) answers the same ids."""
    return str(uuid.uuid5(_IDS, "/".join(parts)))


def _not_found(message: str) -> ODataError:
    return ODataError(404, message, NOT_FOUND)


# -- query options -------------------------------------------------------------------------------
def _split_top(text: str, sep: str) -> list[str]:
    """`text` split at `sep` outside parentheses and quotes."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        elif not quoted and depth == 0 and ch == sep:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_expand(text: str) -> dict[str, dict[str, str]]:
    """`A,B($select=x;$expand=C)` as {name: {option: value}}."""
    out: dict[str, dict[str, str]] = {}
    for item in _split_top(text, ","):
        name, paren, rest = item.partition("(")
        options: dict[str, str] = {}
        if paren:
            if not rest.endswith(")"):
                raise QueryError(f"Syntax error in $expand '{text}'.")
            for option in _split_top(rest[:-1], ";"):
                key, eq, value = option.partition("=")
                if not eq:
                    raise QueryError(f"Syntax error in $expand option '{option}'.")
                options[key.strip()] = value.strip()
        out[name.strip()] = options
    return out


def _matches(item: dict[str, Any], text: str) -> bool:
    """An in-memory $filter: comparisons (eq, ne) joined by and / or, as metadata queries use them."""
    tokens = tokenize(text)
    alternatives: list[list[tuple[str, str, Any]]] = [[]]
    i = 0
    while i < len(tokens):
        if i + 2 >= len(tokens) or tokens[i][0] != "ident" or tokens[i + 1][1].lower() not in ("eq", "ne"):
            raise QueryError(f"The $filter '{text}' is not supported on table definitions (use eq/ne, and, or).")
        lit = literal(*tokens[i + 2])
        if lit is None:
            raise QueryError(f"The $filter '{text}' compares with something that is not a literal.")
        alternatives[-1].append((tokens[i][1], tokens[i + 1][1].lower(), lit.value))
        i += 3
        if i < len(tokens):
            joiner = tokens[i][1].lower()
            if joiner == "or":
                alternatives.append([])
            elif joiner != "and":
                raise QueryError(f"Syntax error in $filter '{text}' at '{tokens[i][1]}'.")
            i += 1
    return any(all((_value(item, n) == v) == (op == "eq") for n, op, v in conj) for conj in alternatives)


def _value(item: dict[str, Any], path: str) -> Any:
    value: Any = item
    for part in path.split("/"):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _project(item: dict[str, Any], select: str | None, type_name: str) -> dict[str, Any]:
    if not select:
        return item
    names = parse_select(select)
    for name in names:
        if name not in item:
            raise QueryError(f"Could not find a property named '{name}' on type '{CRM}.{type_name}'.")
    keep = {"@odata.type", "MetadataId", *names}
    return {k: v for k, v in item.items() if k in keep}


# -- the definitions ------------------------------------------------------------------------------
class EntityDefinitions:
    """GET EntityDefinitions[(key)][/Attributes[(key)][/<cast>] | /Keys[(key)]] with $select/$filter/$expand."""

    def __init__(self, entities: list[Entity]) -> None:
        self.entities = [e for e in entities if e.logical_name]

    def handle(self, req: ODataRequest, key_text: str | None, rest: str) -> ODataResponse:
        if req.method != "GET":
            raise ODataError(405, "Table definitions are read here with GET.", "0x80060888")
        _check_options(req.query)
        root = f"{req.service_root}$metadata#EntityDefinitions"
        if key_text is None:
            if rest:
                raise ODataError(404, f"Resource not found for the segment '{rest}'.", "0x8006088a")
            entities = [e for e in self.entities if _kept(entity_json(e), req.query)]
            return json_response(200, {"@odata.context": root, "value": [self.entity(e, req.query) for e in entities]})
        entity = self.find(key_text)
        if not rest:
            return json_response(200, {"@odata.context": f"{root}/$entity", **self.entity(entity, req.query)})
        segment, item_key, cast = split_resource_path(rest)
        context = f"{root}('{entity.logical_name}')/{segment}"
        if segment == "Attributes":
            return self.attributes(req, entity, item_key, cast, context)
        if segment == "Keys" and not cast:
            keys = [key_json(entity, k) for k in entity.alternate_keys]
            if item_key is not None:
                found = [k for k in keys if _is(k, item_key)]
                if not found:
                    raise _not_found(f"The key {item_key} of '{entity.logical_name}' does not exist.")
                body = _project(found[0], req.query.get("$select"), "EntityKeyMetadata")
                return json_response(200, {"@odata.context": f"{context}/$entity", **body})
            keys = [_project(k, req.query.get("$select"), "EntityKeyMetadata") for k in keys if _kept(k, req.query)]
            return json_response(200, {"@odata.context": context, "value": keys})
        raise ODataError(404, f"Resource not found for the segment '{rest}'.", "0x8006088a")

    def find(self, key_text: str) -> Entity:
        """The table a key segment names: `LogicalName='account'` or its MetadataId."""
        parsed = parse_key(key_text)
        if set(parsed) - {None, "LogicalName"}:
            raise QueryError(f"The key '{key_text}' is neither a MetadataId nor LogicalName='...'.")
        for entity in self.entities:
            if None in parsed and parsed[None].value == metadata_id(entity.logical_name):
                return entity
            if "LogicalName" in parsed and parsed["LogicalName"].value == entity.logical_name:
                return entity
        name = parsed["LogicalName"].value if "LogicalName" in parsed else parsed[None].value
        raise _not_found(
            f"The entity with a name = '{name}' with namemapping = 'Logical' was not found in the MetadataCache."
        )

    def entity(self, entity: Entity, query: dict[str, str]) -> dict[str, Any]:
        """A table's definition with $select and $expand (Attributes, Keys) applied."""
        out = _project(entity_json(entity), query.get("$select"), "EntityMetadata")
        for name, options in parse_expand(query.get("$expand", "")).items():
            _check_options(options)
            if name == "Attributes":
                out[name] = [
                    self.attribute(entity, f, None, options)
                    for f in entity.fields
                    if _kept(self.attribute_full(entity, f), options)
                ]
            elif name == "Keys":
                keys = [key_json(entity, k) for k in entity.alternate_keys]
                out[name] = [
                    _project(k, options.get("$select"), "EntityKeyMetadata") for k in keys if _kept(k, options)
                ]
            else:
                raise QueryError(f"Could not find a navigation property named '{name}' on '{CRM}.EntityMetadata'.")
        return out

    def attributes(
        self, req: ODataRequest, entity: Entity, item_key: str | None, cast: str, context: str
    ) -> ODataResponse:
        """`Attributes`, `Attributes(key)`, and either followed by a cast to a derived metadata type."""
        type_name = None
        if cast:
            type_name = cast.removeprefix(f"{CRM}.")
            if type_name == cast or not type_name.endswith("AttributeMetadata") or "/" in type_name:
                raise ODataError(404, f"Resource not found for the segment '{cast}'.", "0x8006088a")
        fields = [f for f in entity.fields if type_name is None or attribute_type(f)[2] == type_name]
        if item_key is not None:
            found = [f for f in entity.fields if _is(self.attribute_full(entity, f), item_key)]
            if not found:
                raise _not_found(f"Could not find attribute {item_key} of entity '{entity.logical_name}'.")
            if found[0] not in fields:
                raise QueryError(f"The attribute {found[0].name} is not a {type_name}.")
            body = self.attribute(entity, found[0], type_name, req.query)
            return json_response(200, {"@odata.context": f"{context}/$entity", **body})
        items = [
            self.attribute(entity, f, type_name, req.query)
            for f in fields
            if _kept(self.attribute_full(entity, f), req.query)
        ]
        suffix = f"/{CRM}.{type_name}" if type_name else ""
        return json_response(200, {"@odata.context": context + suffix, "value": items})

    # -- attributes -----------------------------------------------------------------------------
    def attribute_full(self, entity: Entity, f: Field) -> dict[str, Any]:
        base, derived = self.attribute_parts(entity, f)
        return {**base, **derived}

    def attribute_parts(self, entity: Entity, f: Field) -> tuple[dict[str, Any], dict[str, Any]]:
        """AttributeMetadata's own properties, and those of its derived type (MaxLength, Targets)."""
        kind, type_name, odata_type = attribute_type(f)
        pk = f.name == entity.guid_key
        is_name = f.name == entity.primary_name
        # SystemRequired is what the API enforces; a primary name is ApplicationRequired (forms only)
        level = "SystemRequired" if f.required or pk else "ApplicationRequired" if is_name else "None"
        base: dict[str, Any] = {
            "@odata.type": f"#{CRM}.{odata_type}",
            "MetadataId": metadata_id(entity.logical_name, f.name),
            "LogicalName": f.name,
            "SchemaName": f.name,
            "EntityLogicalName": entity.logical_name,
            "AttributeType": kind,
            "AttributeTypeName": {"Value": type_name},
            "AttributeOf": None,
            "IsPrimaryId": pk,
            "IsPrimaryName": is_name,
            "IsValidForCreate": True,
            "IsValidForRead": True,
            "IsValidForUpdate": not pk,
            "RequiredLevel": {
                "Value": level,
                "CanBeChanged": not pk,
                "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings",
            },
        }
        derived: dict[str, Any] = {}
        if kind == "String":
            derived = {"MaxLength": f.max_length, "Format": "Text"}
        elif kind == "Lookup":
            target = next((e.logical_name for e in self.entities if e.name == f.target), None)
            derived = {"Targets": [target] if target else []}
        return base, derived

    def attribute(self, entity: Entity, f: Field, cast: str | None, query: dict[str, str]) -> dict[str, Any]:
        """One attribute as served: $select reaches derived properties only after a cast."""
        base, derived = self.attribute_parts(entity, f)
        select = query.get("$select")
        if not select:
            out = {**base, **derived}
        else:
            out = _project({**base, **derived} if cast else base, select, cast or "AttributeMetadata")
        for name, options in parse_expand(query.get("$expand", "")).items():
            if name not in ("OptionSet", "GlobalOptionSet") or cast not in _OPTION_SETS:
                raise QueryError(
                    f"Could not find a navigation property named '{name}' on '{CRM}.{cast or 'AttributeMetadata'}'."
                )
            out[name] = option_set_json(entity, f, options.get("$select")) if name == "OptionSet" else None
        return out


def attribute_type(f: Field) -> tuple[str, str, str]:
    """(AttributeType, AttributeTypeName, metadata type) of a catalogue field."""
    return _STATE if f.name == "statecode" and f.type == "choice" else _TYPES[f.type]


def entity_json(entity: Entity) -> dict[str, Any]:
    return {
        "MetadataId": metadata_id(entity.logical_name),
        "LogicalName": entity.logical_name,
        "SchemaName": entity.logical_name,
        "EntitySetName": entity.name,
        "LogicalCollectionName": entity.name,
        "PrimaryIdAttribute": entity.key[0],
        "PrimaryNameAttribute": entity.primary_name,
        "IsCustomEntity": False,
        "ChangeTrackingEnabled": True,
        "TableType": "Standard",
    }


def key_json(entity: Entity, key: tuple[str, ...]) -> dict[str, Any]:
    name = f"{entity.logical_name}_{'_'.join(key)}"
    return {
        "MetadataId": metadata_id(entity.logical_name, "key", *key),
        "LogicalName": name,
        "SchemaName": name,
        "EntityLogicalName": entity.logical_name,
        "KeyAttributes": list(key),
        "EntityKeyIndexStatus": "Active",
    }


def option_set_json(entity: Entity, f: Field, select: str | None) -> dict[str, Any]:
    out = {
        "MetadataId": metadata_id(entity.logical_name, f.name, "options"),
        "Name": f"{entity.logical_name}_{f.name}",
        "IsGlobal": False,
        "OptionSetType": attribute_type(f)[0],
        "Options": [
            {"Value": v, "Label": {"LocalizedLabels": [{"Label": str(v), "LanguageCode": 1033}]}} for v in f.values
        ],
    }
    return _project(out, select, "OptionSetMetadata")


def _check_options(query: dict[str, str]) -> None:
    for name in query:
        if name.startswith("$") and name not in ("$select", "$filter", "$expand"):
            raise QueryError(f"The query parameter {name} is not supported on table definitions.")


def _kept(item: dict[str, Any], query: dict[str, str]) -> bool:
    return not query.get("$filter") or _matches(item, query["$filter"])


def _is(item: dict[str, Any], key_text: str) -> bool:
    """Whether a metadata item is the one a key segment names (MetadataId or LogicalName='...')."""
    parsed = parse_key(key_text)
    if None in parsed:
        return bool(item["MetadataId"] == parsed[None].value)
    return all(item.get(name) == lit.value for name, lit in parsed.items() if name is not None)
