"""F&O as a target: rows read in batched cross-company queries, writes in one `$batch` (each in its own
change set) with ETags: PATCH with `If-Match` for an update, POST for a new row, DELETE with `If-Match`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import schemas
from consumers.target import Ident, ODataTarget, Result, Write, from_error, ident
from dualwrite import odata
from dualwrite.envelope import ChangeEvent, Op, Origin, Side, record_key
from dualwrite.errors import ConcurrencyError, MissingReferenceError
from dualwrite.fo import FoClient
from dualwrite.rows import fo_company, parse_time
from dualwrite.tablemap import TableMap

_CHUNK = 25


@dataclass
class FoTarget(ODataTarget):
    client: FoClient = field(kw_only=True)
    schemas_dir: Path | None = field(default=None, kw_only=True)
    side: str = field(default="fo", init=False)
    _known_refs: set[tuple[str, str, str]] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self.system = "F&O"

    def close(self) -> None:
        self.client.close()

    def send(self, parts: list[odata.BatchPart]) -> list[odata.PartResult]:
        return self.client.batch(parts)

    def judge(self, w: Write, part: odata.BatchPart, answer: odata.PartResult) -> Result:
        # F&O answers a create of a key that exists with 400 and the infolog "... The record already exists."
        # (no 412): the row is there (an earlier create whose answer was lost, or someone made it), so it is
        # read and planned again like any conflict, never dead-lettered.
        if w.action == "create" and answer.status == 400 and "record already exists" in answer.text:
            return from_error(ConcurrencyError(f"F&O POST {part.url}: the row exists already"))
        return super().judge(w, part, answer)

    def _key(self, m: TableMap, company: str, key: dict[str, Any]) -> dict[str, Any]:
        if m.fo.company_field is not None and m.fo.company_field not in key:
            return {m.fo.company_field: company, **key}
        return dict(key)

    # -- reads ---------------------------------------------------------------------------------------
    def read(self, m: TableMap, keys: list[tuple[str, dict[str, Any]]]) -> dict[Ident, ChangeEvent]:
        fo = m.fo
        fields = list(schemas.record_fields("fo", fo.entity_set, self.schemas_dir))
        extra = [c for c in (fo.company_field, fo.modified_on) if c]
        select = sorted({*fields, *fo.key, *extra})
        found: dict[Ident, ChangeEvent] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            flt = " or ".join(
                "(" + " and ".join(f"{k} eq {odata.literal(v)}" for k, v in self._key(m, c, key).items()) + ")"
                for c, key in chunk
            )
            for row in self.client.query(fo.entity_set, flt, select):
                event = self.row_event(m, row, fields)
                if event is not None:
                    found[ident(event.company, {k: row.get(k) for k in fo.key})] = event
        return found

    def row_event(self, m: TableMap, row: dict[str, Any], fields: list[str]) -> ChangeEvent | None:
        """An F&O row read over OData as a change event of F&O (None when it has no key)."""
        company = fo_company(m, row)
        if any(row.get(k) in (None, "") for k in m.fo.key):
            return None
        when = parse_time(row.get(m.fo.modified_on)) if m.fo.modified_on else None
        after = {name: row.get(name) for name in fields}
        if m.fo.company_field is not None:
            after[m.fo.company_field] = company
        return ChangeEvent(
            op=Op.UPDATE,
            entity=m.fo.entity_set,
            company=company,
            key=record_key(company, [row[k] for k in m.fo.key]),
            source_time=when or datetime.now(UTC),
            source_version=row.get("@odata.etag"),
            origin=Origin(Side.FO, False, row.get(m.fo.modified_by) if m.fo.modified_by else None),
            after=after,
        )

    # -- writes --------------------------------------------------------------------------------------
    def _check_references(self, m: TableMap, w: Write) -> None:
        """F&O answers a bad reference with a plain 400; check first so it can be retried as missing."""
        for f in m.fields_towards("fo"):
            if f.lookup is None or f.lookup.map is None or f.fo is None or f.lookup.map not in self.maps:
                continue
            value = w.change.values.get(f.fo)
            if value in (None, ""):
                continue
            ref_map = self.maps[f.lookup.map]
            marker = (ref_map.fo.entity_set, w.change.company, str(value).lower())
            if marker in self._known_refs:
                continue
            key = {ref_map.fo.key[0]: value}
            if ref_map.fo.company_field is not None:
                key = {ref_map.fo.company_field: w.change.company, **key}
            flt = " and ".join(f"{k} eq {odata.literal(v)}" for k, v in key.items())
            if not any(True for _ in self.client.query(ref_map.fo.entity_set, flt, [ref_map.fo.key[0]], top=1)):
                raise MissingReferenceError(
                    f"{ref_map.fo.entity_set} {ref_map.fo.key[0]}={value!r} does not exist in {w.change.company} yet"
                )
            self._known_refs.add(marker)

    def part(self, w: Write) -> odata.BatchPart:
        m, c = w.map, w.change
        key = self._key(m, c.company, c.key)
        url = odata.key_segment(m.fo.entity_set, key)
        if w.action == "delete":
            return odata.BatchPart("DELETE", url, headers={"If-Match": w.if_match or "*"})
        self._check_references(m, w)
        prefer = {"Prefer": "return=representation"}
        if w.action == "update":
            return odata.BatchPart("PATCH", url, dict(c.values), {"If-Match": w.if_match or "*", **prefer})
        return odata.BatchPart("POST", m.fo.entity_set, {**c.defaults, **c.values, **key}, prefer)
