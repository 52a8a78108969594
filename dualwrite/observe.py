"""A change event, or a row read from a side, in the merge rules' terms: digests of each field pair's
value in one canonical form (F&O's), the row's version, ETag and id. Pure: no I/O."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from dualwrite.envelope import ChangeEvent, Op
from dualwrite.mapping import as_datetime, normalize, translate
from dualwrite.merge import Observed, digest
from dualwrite.tablemap import FieldMap, TableMap, derived

_NUMERIC = frozenset({"long", "int", "decimal", "double", "float"})
_VERSION = re.compile(r'^(?:W/)?"?(\d+)"?$')


def pairs(m: TableMap) -> dict[str, FieldMap]:
    """The map's field pairs that are not part of the record's identity, by name (the F&O field). Shared:
    never mutate it."""

    def build() -> dict[str, FieldMap]:
        keys = {*m.fo.key, m.fo.company_field}
        return {f.fo: f for f in m.fields if f.fo and f.dataverse and f.fo not in keys}

    return derived(m, "pairs", build)


def carried(m: TableMap, towards: str) -> frozenset[str]:
    """The pairs the map writes towards a side ('fo' or 'dataverse')."""
    return derived(
        m, f"carried {towards}", lambda: frozenset(n for n, f in pairs(m).items() if f.dir.carries(towards))
    )


def version_of(text: Any) -> int | None:
    """A row version from an ETag (`W/"123"`) or a row-version number; None when it is not a number."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = _VERSION.match(str(text or "").strip())
    return int(match.group(1)) if match else None


def etag_of(text: Any) -> str | None:
    """The ETag to send as If-Match (a bare row-version number is not one)."""
    value = str(text or "").strip()
    return value if value.startswith(('W/"', '"')) else None


def canonical(f: FieldMap, side: str, value: Any, fo_type: str | None) -> Any:
    """A field pair's value as comparable from either side: in F&O's terms (value maps reversed, no
    nulls where F&O has none), numbers as Decimal, date-times as UTC instants, lookups case-blind."""
    if side == "dataverse":
        value = translate(f, value, forward=False)
    value = normalize(value)
    if value is None and fo_type in _NUMERIC:
        value = Decimal(0)  # F&O stores 0 where Dataverse has null
    if isinstance(value, str):
        instant = as_datetime(value)
        if instant is not None:
            return instant.isoformat()
        if f.lookup is not None:
            return value.lower()
    if isinstance(value, Decimal):
        return str(value)
    return value


def observe(m: TableMap, event: ChangeEvent, fo_types: dict[str, str]) -> Observed:
    """What a change event shows of its side's row."""
    side = event.origin.side.value
    values: dict[str, str] = {}
    row = event.after
    if row is not None and event.op is not Op.DELETE:
        for name, f in pairs(m).items():
            column = f.fo if side == "fo" else f.dataverse
            if column in row:
                values[name] = digest(canonical(f, side, row[column], fo_types.get(f.fo or "")))
    return Observed(
        side,
        event.op is not Op.DELETE and row is not None,
        values,
        version_of(event.source_version),
        etag_of(event.source_version),
        event.source_id,
        event.source_time,
    )
