"""Writes mapped changes to F&O: batched reads for the convergence check, then one $batch of writes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from consumers.target import Ident, ODataTarget, parse_time
from dualwrite import odata
from dualwrite.envelope import ChangeEvent, Op, Origin, Side, record_key
from dualwrite.errors import MissingReferenceError
from dualwrite.fo import FoClient
from dualwrite.mapping import TargetWrite, changed_fields
from dualwrite.tablemap import TableMap
from producers.fo import fo_company

_CHUNK = 25


class FoTarget(ODataTarget):
    system = "F&O"

    def __init__(self, client: FoClient, maps: dict[str, TableMap], integration_user_id: str | None = None) -> None:
        super().__init__(maps, integration_user_id)
        self.client = client
        self._known_refs: set[tuple[str, str, str]] = set()

    def close(self) -> None:
        self.client.close()

    def send(self, parts: list[odata.BatchPart]) -> list[odata.PartResult]:
        return self.client.batch(parts)

    def _key(self, m: TableMap, w: TargetWrite) -> dict[str, Any]:
        key = dict(w.key)
        if m.fo.company_field is not None and m.fo.company_field not in key:
            key = {m.fo.company_field: w.company, **key}
        return key

    def modified(self, m: TableMap, row: dict[str, Any]) -> tuple[datetime | None, str | None]:
        """From the entity's modified-time and modified-by fields, when the map names them."""
        if m.fo.modified_on is None or m.fo.modified_by is None:
            return None, None
        return parse_time(row.get(m.fo.modified_on)), row.get(m.fo.modified_by)

    def kept_event(self, m: TableMap, row: dict[str, Any], fields: list[str]) -> ChangeEvent | None:
        when, who = self.modified(m, row)
        company = fo_company(m, row)
        if any(row.get(k) in (None, "") for k in m.fo.key):
            return None
        return ChangeEvent(
            op=Op.UPDATE,
            entity=m.fo.entity_set,
            company=company,
            key=record_key(company, [row[k] for k in m.fo.key]),
            source_time=when or datetime.now(UTC),
            source_version=row.get("@odata.etag"),
            origin=Origin(Side.FO, False, who),
            after={name: row.get(name) for name in fields},
        )

    def current_rows(self, m: TableMap, writes: list[TargetWrite]) -> dict[Ident, dict[str, Any]]:
        fo = m.fo
        extra = {c for c in (fo.company_field, fo.modified_on, fo.modified_by) if c}
        select = sorted({f.fo for f in m.fields if f.fo} | {*fo.key} | extra)
        found: dict[Ident, dict[str, Any]] = {}
        for start in range(0, len(writes), _CHUNK):
            chunk = writes[start : start + _CHUNK]
            flt = " or ".join(
                "(" + " and ".join(f"{k} eq {odata.literal(v)}" for k, v in self._key(m, w).items()) + ")"
                for w in chunk
            )
            for row in self.client.query(fo.entity_set, flt, select):
                company = str(row.get(fo.company_field, "")).lower() if fo.company_field else ""
                found[(company, tuple(str(row.get(k, "")).lower() for k in fo.key))] = row
        return found

    def _check_references(self, m: TableMap, w: TargetWrite) -> None:
        """F&O answers a bad reference with a plain 400; check first so it can be retried as missing."""
        for f in m.fields_towards("fo"):
            if f.lookup is None or f.lookup.map is None or f.fo is None or f.lookup.map not in self.maps:
                continue
            value = w.values.get(f.fo)
            if value in (None, ""):
                continue
            ref_map = self.maps[f.lookup.map]
            marker = (ref_map.fo.entity_set, w.company, str(value).lower())
            if marker in self._known_refs:
                continue
            key = {ref_map.fo.key[0]: value}
            if ref_map.fo.company_field is not None:
                key = {ref_map.fo.company_field: w.company, **key}
            flt = " and ".join(f"{k} eq {odata.literal(v)}" for k, v in key.items())
            if not any(True for _ in self.client.query(ref_map.fo.entity_set, flt, [ref_map.fo.key[0]], top=1)):
                raise MissingReferenceError(
                    f"{ref_map.fo.entity_set} {ref_map.fo.key[0]}={value!r} does not exist in {w.company} yet"
                )
            self._known_refs.add(marker)

    def plan(self, m: TableMap, w: TargetWrite, row: dict[str, Any] | None) -> odata.BatchPart | None:
        url = odata.key_segment(m.fo.entity_set, self._key(m, w))
        if w.op == "delete":
            return None if row is None else odata.BatchPart("DELETE", url)
        if row is not None:
            changed = changed_fields(w.values, row, no_nulls=True)
            if not changed:
                return None
            self._check_references(m, w)
            return odata.BatchPart("PATCH", url, changed, {"If-Match": row.get("@odata.etag", "*")})
        self._check_references(m, w)
        body = {**w.defaults, **w.values, **self._key(m, w)}
        return odata.BatchPart("POST", m.fo.entity_set, body)
