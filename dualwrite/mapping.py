"""The table-map engine: a change event in, the write it asks of the other side out. Pure: no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from dualwrite.envelope import ChangeEvent, Op, Side
from dualwrite.errors import MappingError
from dualwrite.tablemap import FieldMap, TableMap

COMPANY_TABLE = "cdm_companies"
COMPANY_KEY = "cdm_companycode"


@dataclass(frozen=True)
class LookupRef:
    """A Dataverse row referred to by alternate key: `entity_set(key_field=value[, company])`."""

    entity_set: str
    key_field: str
    value: Any
    company: str | None = None


@dataclass(frozen=True)
class TargetWrite:
    """What one change event asks of the target: an upsert of `values` (and `lookups`) or a delete."""

    map_name: str
    towards: Side
    op: Literal["upsert", "delete"]
    company: str
    key: dict[str, Any]
    values: dict[str, Any] = field(default_factory=dict)
    lookups: dict[str, LookupRef | None] = field(default_factory=dict)
    # One-sided constants of the map: set when the target row is created, never overwritten after.
    defaults: dict[str, Any] = field(default_factory=dict)
    # When the source changed the record (for conflicts with a change made on the target meanwhile).
    source_time: datetime | None = None

    @property
    def identity(self) -> tuple[str, tuple[Any, ...]]:
        return self.company, tuple(self.key.values())


def natural_key(event: ChangeEvent) -> list[str]:
    """The natural-key values of an event (its Kafka key without the company)."""
    return event.key.split("|")[1:]


def source_side(event: ChangeEvent) -> Side:
    return event.origin.side


def passes_filter(filter_: dict[str, Any], row: dict[str, Any]) -> bool:
    return all(_same(row.get(name), wanted) for name, wanted in filter_.items())


def map_event(table_map: TableMap, event: ChangeEvent) -> TargetWrite | None:
    """Translate `event` for the other side; None when the source filter leaves the row out."""
    write = _map_event(table_map, event)
    return None if write is None else replace(write, source_time=event.source_time)


def _map_event(table_map: TableMap, event: ChangeEvent) -> TargetWrite | None:
    towards = source_side(event).other
    if towards is Side.DATAVERSE:
        target_keys, source_filter = table_map.dataverse.key, table_map.fo.filter
    else:
        target_keys, source_filter = table_map.fo.key, table_map.dataverse.filter
    parts = natural_key(event)
    if len(parts) != len(target_keys):
        raise MappingError(f"key {event.key!r} does not have the {len(target_keys)} part(s) of map {table_map.name}")
    key = dict(zip(target_keys, parts, strict=True))
    if event.op is Op.DELETE or event.after is None:
        return TargetWrite(table_map.name, towards, "delete", event.company, key)
    if not passes_filter(source_filter, event.after):
        return None
    if towards is Side.DATAVERSE:
        return _to_dataverse(table_map, event, key)
    return _to_fo(table_map, event, key)


def _to_dataverse(table_map: TableMap, event: ChangeEvent, key: dict[str, Any]) -> TargetWrite:
    row = event.after or {}
    values: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    lookups: dict[str, LookupRef | None] = {}
    for f in table_map.fields_towards("dataverse"):
        assert f.dataverse is not None
        if f.fo is None:
            defaults[f.dataverse] = f.default
            continue
        value = translate(f, row.get(f.fo), forward=True)
        if f.lookup is not None:
            lookups[f.dataverse] = (
                None
                if _blank(value)
                else LookupRef(f.lookup.entity_set, f.lookup.key, value, event.company if f.lookup.company else None)
            )
        else:
            values[f.dataverse] = value
    dv = table_map.dataverse
    if dv.company_lookup is not None:
        lookups[dv.company_lookup] = LookupRef(COMPANY_TABLE, COMPANY_KEY, event.company)
    for k, v in key.items():
        if not _same(values.get(k), v):
            raise MappingError(f"key field {k}={values.get(k)!r} differs from the event key {v!r}")
    return TargetWrite(table_map.name, Side.DATAVERSE, "upsert", event.company, key, values, lookups, defaults)


def _to_fo(table_map: TableMap, event: ChangeEvent, key: dict[str, Any]) -> TargetWrite:
    row = event.after or {}
    values: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    for f in table_map.fields_towards("fo"):
        assert f.fo is not None
        if f.dataverse is None:
            defaults[f.fo] = f.default
            continue
        values[f.fo] = translate(f, row.get(f.dataverse), forward=False)
    company_field = table_map.fo.company_field
    if company_field is not None and company_field not in table_map.fo.key:
        values[company_field] = event.company
    for k, v in key.items():
        if not _same(values.get(k), v):
            raise MappingError(f"key field {k}={values.get(k)!r} differs from the event key {v!r}")
    return TargetWrite(table_map.name, Side.FO, "upsert", event.company, key, values, defaults=defaults)


def translate(f: FieldMap, value: Any, forward: bool) -> Any:
    """Apply the field's value map (F&O -> Dataverse when forward), refusing values it does not know."""
    if f.values is None:
        return value
    if value is None:
        # F&O enums have no null: an empty Dataverse value is the one mapped to false, else the first.
        return None if forward else next((k for k, v in f.values.items() if v is False), next(iter(f.values)))
    if forward:
        for fo_value, dv_value in f.values.items():
            if _same(fo_value, value):
                return dv_value
        known = ", ".join(repr(v) for v in f.values)
        raise MappingError(f"{f.fo}: value {value!r} has no Dataverse counterpart in the value map ({known})")
    for fo_value, dv_value in f.values.items():
        if _same(dv_value, value):
            return fo_value
    known = ", ".join(repr(v) for v in f.values.values())
    raise MappingError(f"{f.dataverse}: value {value!r} has no F&O counterpart in the value map ({known})")


def _blank(value: Any) -> bool:
    return value is None or value == ""


def normalize(value: Any) -> Any:
    """One comparable form: '' and None alike, numbers as Decimal, strings as they are."""
    if _blank(value):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float | Decimal):
        try:
            return Decimal(str(value)).normalize()
        except InvalidOperation:
            return value
    return value


_ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?$")


def as_datetime(value: Any) -> datetime | None:
    """An ISO 8601 date-time string as a datetime (UTC when no offset); None for anything else."""
    if not isinstance(value, str) or not _ISO_DATETIME.match(value):
        return None
    t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _same(a: Any, b: Any) -> bool:
    na, nb = normalize(a), normalize(b)
    if isinstance(na, str) and isinstance(nb, str) and na != nb:
        ta, tb = as_datetime(na), as_datetime(nb)  # '...Z' and '...+00:00' are the same instant
        if ta is not None and tb is not None:
            return ta == tb
    if isinstance(na, str) and isinstance(nb, Decimal | bool) or isinstance(nb, str) and isinstance(na, Decimal):
        return str(na) == str(nb)
    return bool(na == nb)


def changed_fields(desired: dict[str, Any], current: dict[str, Any], no_nulls: bool = False) -> dict[str, Any]:
    """The fields of `desired` whose values differ from `current` (the convergence check).

    `no_nulls`: the target stores no nulls (F&O writes 0 or '' instead), so None equals those.
    """

    def same(want: Any, have: Any) -> bool:
        if no_nulls and want is None and (have is None or have == "" or (have == 0 and not isinstance(have, bool))):
            return True
        return _same(want, have)

    return {k: v for k, v in desired.items() if not same(v, current.get(k))}
