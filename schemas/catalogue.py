"""The entity catalogue: every entity set's fields, types and keys, one YAML file per set.

`schemas/entities/<side>/<entity set>.yaml` (side `fo` or `dataverse`) is imported from the
service's metadata (`schemas/metadata.py`) and may be edited by hand; production code and the
stand-ins both read it through `load_catalogue`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field as dc_field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from dualwrite.errors import ConfigError

SIDES = ("fo", "dataverse")
FIELD_TYPES = frozenset({"string", "int", "decimal", "bool", "enum", "choice", "datetime", "guid", "lookup"})
HEADER = (
    "# Entity set {name}: imported from the service's metadata ($metadata, EntityDefinitions) by\n"
    "# schemas/metadata.py; you may edit it. A new import keeps what metadata does not carry\n"
    "# (event_name, labels, defaults, ...).\n"
)


@dataclass(frozen=True)
class Field:
    """One field. `values` lists an enum's names or a choice's integers; `target` names an entity set."""

    name: str
    type: str = "string"
    max_length: int | None = None
    values: tuple[Any, ...] = ()
    target: str | None = None
    required: bool = False
    default: Any = None
    label: str = ""

    def __post_init__(self) -> None:
        if self.type not in FIELD_TYPES:
            raise ConfigError(
                f"field {self.name}: unknown type {self.type!r} (one of {', '.join(sorted(FIELD_TYPES))})"
            )


@dataclass(frozen=True)
class Entity:
    """An entity set; a single guid key is the row id itself (Dataverse style)."""

    name: str
    key: tuple[str, ...]
    fields: tuple[Field, ...]
    alternate_keys: tuple[tuple[str, ...], ...] = ()
    company_field: str | None = None
    event_name: str | None = None
    logical_name: str = ""
    type_name: str = ""
    primary_name: str | None = None
    by_name: dict[str, Field] = dc_field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {f.name.lower(): f for f in self.fields})
        for name in (*self.key, *(n for k in self.alternate_keys for n in k)):
            if name.lower() not in self.by_name:
                raise ConfigError(f"entity {self.name}: key field {name} is not declared")

    def field(self, name: str) -> Field | None:
        return self.by_name.get(name.lower())

    @property
    def guid_key(self) -> str | None:
        """The name of the primary key when it is one guid field (then it is stored as the row id)."""
        if len(self.key) == 1 and self.by_name[self.key[0].lower()].type == "guid":
            return self.by_name[self.key[0].lower()].name
        return None


@dataclass(frozen=True)
class Catalogue:
    """The entity sets of both sides, as loaded from one directory."""

    directory: Path
    sides: dict[str, tuple[Entity, ...]]

    def entities(self, side: str) -> tuple[Entity, ...]:
        """Every entity set of a side, by file name."""
        if side not in SIDES:
            raise ConfigError(f"unknown side {side!r} (fo or dataverse)")
        return self.sides.get(side, ())

    def entity(self, side: str, entity_set: str) -> Entity:
        """One entity set by its (case-sensitive) OData name."""
        for entity in self.entities(side):
            if entity.name == entity_set:
                return entity
        raise ConfigError(
            f"{side} entity set {entity_set!r} is not in the entity catalogue "
            f"(expected {self.directory / side / (entity_set + '.yaml')})"
        )


def builtin_entities_dir() -> Path:
    return Path(str(resources.files("schemas").joinpath("entities")))


def load_catalogue(directory: Path | None = None) -> Catalogue:
    """Load every `<side>/*.yaml` in `directory` (the built-in catalogue by default)."""
    if directory is None:
        return _builtin()
    return _load(Path(directory))


@cache
def _builtin() -> Catalogue:
    return _load(builtin_entities_dir())


def _load(directory: Path) -> Catalogue:
    if not directory.is_dir():
        raise ConfigError(f"entities: {directory} is not a directory")
    sides = {side: tuple(load_entity(p) for p in sorted((directory / side).glob("*.yaml"))) for side in SIDES}
    return Catalogue(directory, sides)


# -- reading ------------------------------------------------------------------------------------------
_ENTITY_KEYS = (
    "name",
    "logical_name",
    "type_name",
    "event_name",
    "primary_name",
    "key",
    "alternate_keys",
    "company_field",
    "fields",
)
_FIELD_KEYS = ("name", "type", "max_length", "values", "target", "required", "default", "label")


def load_entity(path: Path) -> Entity:
    """One catalogue file; a ConfigError names the file and the field at fault."""
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    try:
        entity = entity_from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if entity.name != path.stem:
        raise ConfigError(f"{path}: name {entity.name!r} differs from the file name (the entity set name)")
    return entity


def entity_from_dict(raw: Any) -> Entity:
    """An entity from its parsed-YAML form, validated."""
    if not isinstance(raw, dict):
        raise ConfigError("an entity file is a YAML mapping")
    _unknown_keys(raw, _ENTITY_KEYS, "")
    name = _text(raw, "name", required=True)
    fields_raw = raw.get("fields")
    if not isinstance(fields_raw, list) or not fields_raw:
        raise ConfigError("fields: a non-empty list of fields is required")
    fields = tuple(_field(item, i) for i, item in enumerate(fields_raw))
    seen: set[str] = set()
    for f in fields:
        if f.name.lower() in seen:
            raise ConfigError(f"field {f.name}: declared twice")
        seen.add(f.name.lower())
    key = _names(raw.get("key"), "key")
    if not key:
        raise ConfigError("key: a non-empty list of field names is required")
    alternate = raw.get("alternate_keys") or []
    if not isinstance(alternate, list):
        raise ConfigError("alternate_keys: a list of lists of field names is expected")
    alternate_keys = tuple(_names(k, f"alternate_keys[{i}]") for i, k in enumerate(alternate))
    company = _text(raw, "company_field")
    primary = _text(raw, "primary_name")
    for what, names in (("key", key), *((f"alternate_keys[{i}]", k) for i, k in enumerate(alternate_keys))):
        for n in names:
            if n.lower() not in seen:
                raise ConfigError(f"{what}: field {n} is not declared")
    for what, optional in (("company_field", company), ("primary_name", primary)):
        if optional is not None and optional.lower() not in seen:
            raise ConfigError(f"{what}: field {optional} is not declared")
    return Entity(
        name=name or "",
        key=key,
        fields=fields,
        alternate_keys=alternate_keys,
        company_field=company,
        event_name=_text(raw, "event_name"),
        logical_name=_text(raw, "logical_name") or "",
        type_name=_text(raw, "type_name") or "",
        primary_name=primary,
    )


def _field(raw: Any, index: int) -> Field:
    if not isinstance(raw, dict):
        raise ConfigError(f"fields[{index}]: a field is a mapping with at least a name")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"fields[{index}]: name is required")
    where = f"field {name}"
    _unknown_keys(raw, _FIELD_KEYS, where + ": ")
    typ = raw.get("type", "string")
    if typ not in FIELD_TYPES:
        raise ConfigError(f"{where}: type {typ!r} is not one of {', '.join(sorted(FIELD_TYPES))}")
    max_length = raw.get("max_length")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise ConfigError(f"{where}: max_length must be a positive integer, not {max_length!r}")
    values = raw.get("values") or []
    if not isinstance(values, list):
        raise ConfigError(f"{where}: values must be a list")
    if typ == "enum" and (not values or not all(isinstance(v, str) for v in values)):
        raise ConfigError(f'{where}: an enum needs its values as a list of names (quote "No"/"Yes")')
    if typ == "choice" and not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{where}: a choice's values are integers")
    if values and typ not in ("enum", "choice"):
        raise ConfigError(f"{where}: only enum and choice fields have values")
    target = raw.get("target")
    if target is not None and (not isinstance(target, str) or typ not in ("string", "lookup")):
        raise ConfigError(f"{where}: target (an entity set name) is for string and lookup fields")
    required = raw.get("required", False)
    if not isinstance(required, bool):
        raise ConfigError(f"{where}: required must be true or false")
    label = raw.get("label", "")
    if not isinstance(label, str):
        raise ConfigError(f"{where}: label must be a string")
    f = Field(name, typ, max_length, tuple(values), target, required, raw.get("default"), label)
    if f.default is not None and not _default_fits(f):
        raise ConfigError(f"{where}: default {f.default!r} is not a valid {typ} value")
    return f


def _default_fits(f: Field) -> bool:
    value = f.default
    if f.type == "enum":
        return value in f.values
    if f.type == "choice":  # a choice whose values are not known takes any integer
        return isinstance(value, int) and not isinstance(value, bool) and (not f.values or value in f.values)
    if f.type == "bool":
        return isinstance(value, bool)
    if f.type == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if f.type == "decimal":
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, str)


def _unknown_keys(raw: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in raw if k not in known)
    if unknown:
        raise ConfigError(f"{where}unknown key(s) {', '.join(unknown)} (known: {', '.join(known)})")


def _text(raw: dict[str, Any], key: str, required: bool = False) -> str | None:
    value = raw.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{key} is required")
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be a non-empty string, not {value!r}")
    return value


def _names(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(n, str) and n for n in value):
        raise ConfigError(f"{where}: a list of field names is expected, not {value!r}")
    return tuple(value)


# -- writing ------------------------------------------------------------------------------------------
class _Quoted(str):
    """A data value written double-quoted, so no YAML 1.1 reader takes "No" or "on" for a boolean."""


class _Flow(dict):  # type: ignore[type-arg]
    """A mapping written on one line (a field)."""


class _FlowList(list):  # type: ignore[type-arg]
    """A list written on one line (a key)."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Quoted, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", str(v), style='"'))
_Dumper.add_representer(_Flow, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v, flow_style=True))
_Dumper.add_representer(_FlowList, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def _quoted(value: Any) -> Any:
    return _Quoted(value) if isinstance(value, str) else value


def entity_to_dict(entity: Entity) -> dict[str, Any]:
    """The YAML form of an entity: attributes at their defaults are left out."""
    out: dict[str, Any] = {"name": entity.name}
    for key in ("logical_name", "type_name", "event_name", "primary_name"):
        if getattr(entity, key):
            out[key] = getattr(entity, key)
    out["key"] = list(entity.key)
    if entity.alternate_keys:
        out["alternate_keys"] = [list(k) for k in entity.alternate_keys]
    if entity.company_field:
        out["company_field"] = entity.company_field
    out["fields"] = [_field_to_dict(f) for f in entity.fields]
    return out


def _field_to_dict(f: Field) -> dict[str, Any]:
    out: dict[str, Any] = {"name": f.name, "type": f.type}
    if f.max_length is not None:
        out["max_length"] = f.max_length
    if f.values:
        out["values"] = list(f.values)
    if f.target is not None:
        out["target"] = f.target
    if f.required:
        out["required"] = True
    if f.default is not None:
        out["default"] = f.default
    if f.label:
        out["label"] = f.label
    return out


def _field_line(f: dict[str, Any]) -> _Flow:
    line = _Flow(f)
    if "values" in line:
        line["values"] = _FlowList(_quoted(v) for v in line["values"])
    for key in ("default", "label"):
        if key in line:
            line[key] = _quoted(line[key])
    return line


def dump_entity(entity: Entity) -> str:
    """The catalogue file of an entity: a header, the entity's attributes, one field a line."""
    raw = entity_to_dict(entity)
    raw["key"] = _FlowList(raw["key"])
    if "alternate_keys" in raw:
        raw["alternate_keys"] = [_FlowList(k) for k in raw["alternate_keys"]]
    raw["fields"] = [_field_line(f) for f in raw["fields"]]
    body = yaml.dump(raw, Dumper=_Dumper, default_flow_style=False, sort_keys=False, width=10**6, allow_unicode=True)
    return HEADER.format(name=entity.name) + body


def write_entity(directory: Path, side: str, entity: Entity) -> Path:
    """Write `<directory>/<side>/<entity set>.yaml`; returns its path."""
    if side not in SIDES:
        raise ConfigError(f"unknown side {side!r} (fo or dataverse)")
    path = Path(directory) / side / f"{entity.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_entity(entity))
    return path


def entity_sets_by_logical_name(entities: Iterable[Entity]) -> dict[str, str]:
    """Logical name -> entity set name (Dataverse lookups name their targets by logical name)."""
    return {e.logical_name: e.name for e in entities if e.logical_name}
