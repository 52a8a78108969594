"""Turning a source row into a change event: the row's company and key, the columns to read, lookups
as the related rows' keys. Shared by the producers, the consumers (rows read from a target) and the
initial sync."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from dualwrite import odata
from dualwrite.dataverse import COMPANY_CODE, COMPANY_SET, LookupCache
from dualwrite.envelope import ChangeEvent, Op, Origin, Side, record_key
from dualwrite.publish import Publisher
from dualwrite.tablemap import TableMap


def parse_time(value: Any) -> datetime | None:
    """An OData datetime (ISO 8601, 'Z' allowed); None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


# -- F&O ----------------------------------------------------------------------------------------------
def fo_company(m: TableMap, row: dict[str, Any]) -> str:
    """The row's legal entity, lower case; '' for a global entity."""
    return str(row.get(m.fo.company_field) or "").lower() if m.fo.company_field else ""


def source_filter(m: TableMap, companies: list[str]) -> str | None:
    """OData filter for the map's F&O rows: the enabled companies (unless global) and the map's source filter."""
    parts = [f"{name} eq {odata.literal(value)}" for name, value in m.fo.filter.items()]
    if m.fo.company_field is not None:
        parts.insert(0, "(" + " or ".join(f"{m.fo.company_field} eq {odata.literal(c)}" for c in companies) + ")")
    return " and ".join(parts) or None


def snapshot_event(
    publisher: Publisher, m: TableMap, raw: dict[str, Any], companies: list[str], correlation_id: str | None = None
) -> ChangeEvent | None:
    """A `snapshot` change event for one F&O row read over OData (None when not ours to sync)."""
    row = publisher.coerce(m.fo.entity_set, raw)
    company = fo_company(m, row)
    if (m.company_specific and company not in companies) or any(row.get(k) in (None, "") for k in m.fo.key):
        return None
    if m.fo.company_field is not None and m.fo.company_field not in m.fo.key:
        row[m.fo.company_field] = company
    modified = parse_time(raw.get(m.fo.modified_on)) if m.fo.modified_on else None
    return ChangeEvent(
        op=Op.SNAPSHOT,
        entity=m.fo.entity_set,
        company=company,
        key=record_key(company, [row[k] for k in m.fo.key]),
        source_time=modified or datetime.now(UTC),
        source_version=raw.get("@odata.etag"),
        origin=Origin(Side.FO, correlation_id=correlation_id),
        after=row,
    )


# -- Dataverse ----------------------------------------------------------------------------------------
def resolve_lookups(cache: LookupCache, m: TableMap, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """GUID -> alternate-key value for every lookup column (and the company) in these rows."""
    out: dict[str, dict[str, Any]] = {}
    columns: list[tuple[str, str, str]] = []
    if m.dataverse.company_lookup:
        columns.append((m.dataverse.company_lookup, COMPANY_SET, COMPANY_CODE))
    for f in m.fields:
        if f.lookup is not None and f.dataverse:
            columns.append((f.dataverse, f.lookup.entity_set, f.lookup.key))
    for column, entity_set, key_field in columns:
        ids = sorted({str(r[f"_{column}_value"]) for r in rows if r.get(f"_{column}_value")})
        found = cache.keys_of(entity_set, key_field, ids, company_scoped=False) if ids else {}
        out[column] = {guid: value for guid, (value, _) in found.items()}
    return out


def source_row(fields: Iterable[str], row: dict[str, Any], resolved: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The event row of a Dataverse row: the schema's fields, lookups as the related rows' keys."""
    after: dict[str, Any] = {}
    for name in fields:
        if name in resolved:
            guid = row.get(f"_{name}_value")
            after[name] = resolved[name].get(str(guid)) if guid else None
        else:
            after[name] = row.get(name)
    return after


def row_company(m: TableMap, after: dict[str, Any]) -> str:
    dv = m.dataverse
    return str(after.get(dv.company_lookup or dv.company_field or "") or "").lower()


def select_columns(m: TableMap, fields: Iterable[str]) -> list[str]:
    """The Web API columns to read for a map's event rows (lookups as `_<column>_value` GUIDs)."""
    lookups = {f.dataverse for f in m.fields if f.lookup is not None and f.dataverse}
    cols = {m.dataverse.primary_key, "_modifiedby_value", "modifiedon"}
    for name in fields:
        if name == m.dataverse.company_lookup or name in lookups:
            cols.add(f"_{name}_value")
        elif not name.startswith("_"):
            cols.add(name)
    return sorted(cols)


def row_event(
    m: TableMap, raw: dict[str, Any], after: dict[str, Any], op: Op, correlation_id: str | None = None
) -> ChangeEvent | None:
    """A change event of a Dataverse row read outside change tracking (None when it has no key)."""
    company = row_company(m, after)
    if (m.company_specific and not company) or any(after.get(k) in (None, "") for k in m.dataverse.key):
        return None
    return ChangeEvent(
        op=op,
        entity=m.dataverse.entity_set,
        company=company,
        key=record_key(company, [after[k] for k in m.dataverse.key]),
        source_time=parse_time(raw.get("modifiedon")) or datetime.now(UTC),
        source_version=raw.get("@odata.etag"),
        origin=Origin(Side.DATAVERSE, False, raw.get("_modifiedby_value"), correlation_id),
        after=after,
        source_id=str(raw[m.dataverse.primary_key]) if raw.get(m.dataverse.primary_key) else None,
    )
