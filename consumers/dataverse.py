"""Writes mapped changes to Dataverse: batched reads for the convergence check, then one $batch of upserts."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime
from typing import Any

from consumers.target import APPLIED, Ident, ODataTarget, Result, from_error, parse_time
from dualwrite import odata
from dualwrite.dataverse import COMPANY_LOOKUP, DataverseClient, LookupCache
from dualwrite.envelope import ChangeEvent, Op
from dualwrite.errors import MissingReferenceError
from dualwrite.mapping import LookupRef, TargetWrite, changed_fields
from dualwrite.tablemap import TableMap
from producers.dataverse import resolve_lookups, row_event, source_row

_CHUNK = 40


class DataverseTarget(ODataTarget):
    system = "Dataverse"

    def __init__(
        self,
        client: DataverseClient,
        maps: dict[str, TableMap],
        lookups: LookupCache,
        integration_user_id: str | None = None,
    ) -> None:
        super().__init__(maps, integration_user_id)
        self.client = client
        self.lookups = lookups

    def modified(self, m: TableMap, row: dict[str, Any]) -> tuple[datetime | None, str | None]:
        return parse_time(row.get("modifiedon")), row.get("_modifiedby_value")

    def close(self) -> None:
        self.client.close()

    def send(self, parts: list[odata.BatchPart]) -> list[odata.PartResult]:
        return self.client.batch(parts)

    def _company_guid(self, company: str) -> str:
        guid = self.lookups.company_id(company)
        if guid is None:
            raise MissingReferenceError(f"company {company!r} is not in cdm_companies yet")
        return guid

    def kept_event(self, m: TableMap, row: dict[str, Any], fields: list[str]) -> ChangeEvent | None:
        after = source_row(fields, row, resolve_lookups(self.lookups, m, [row]))
        return row_event(m, row, after, Op.UPDATE)

    def current_rows(self, m: TableMap, writes: list[TargetWrite]) -> dict[Ident, dict[str, Any]]:
        """The target rows the writes address, by (company, lower-cased key)."""
        dv = m.dataverse
        lookups = {f.dataverse for f in m.fields if f.dataverse and f.lookup is not None}
        if dv.company_lookup is not None:
            lookups.add(dv.company_lookup)
        plain = {f.dataverse for f in m.fields if f.dataverse and f.lookup is None}
        select = [
            dv.primary_key,
            *sorted(plain | {f"_{nav}_value" for nav in lookups}),
            "modifiedon",
            "_modifiedby_value",
        ]
        found: dict[Ident, dict[str, Any]] = {}
        by_company: dict[str, list[TargetWrite]] = defaultdict(list)
        for w in writes:
            by_company[w.company].append(w)
        for company, group in by_company.items():
            scope = ""
            if dv.company_lookup is not None:
                scope = f" and _{dv.company_lookup}_value eq {self._company_guid(company)}"
            for start in range(0, len(group), _CHUNK):
                chunk = group[start : start + _CHUNK]
                keys = " or ".join(
                    "(" + " and ".join(f"{k} eq {odata.literal(v)}" for k, v in w.key.items()) + ")" for w in chunk
                )
                for row in self.client.query(dv.entity_set, f"({keys}){scope}", select):
                    found[(company, tuple(str(row.get(k, "")).lower() for k in dv.key))] = row
        return found

    def _resolve(self, ref: LookupRef) -> str:
        company_id = self._company_guid(ref.company) if ref.company else None
        guid = self.lookups.resolve(ref.entity_set, ref.key_field, [ref.value], company_id).get(ref.value)
        if guid is None:
            where = f" in company {ref.company}" if ref.company else ""
            raise MissingReferenceError(f"{ref.entity_set} row {ref.key_field}={ref.value!r}{where} does not exist yet")
        return guid

    def plan(self, m: TableMap, w: TargetWrite, row: dict[str, Any] | None) -> odata.BatchPart | None:
        dv = m.dataverse
        if w.op == "delete":
            if row is None:
                return None
            return odata.BatchPart("DELETE", f"{dv.entity_set}({row[dv.primary_key]})")
        desired: dict[str, Any] = dict(w.values)
        binds: dict[str, str | None] = {}
        for nav, ref in w.lookups.items():
            guid = None if ref is None else self._resolve(ref)
            desired[f"_{nav}_value"] = guid
            binds[nav] = guid
        if row is None:
            desired = {**w.defaults, **desired}
        changed = changed_fields(desired, row or {})
        if row is not None and not changed:
            return None
        body: dict[str, Any] = {}
        for name, value in (changed if row is not None else desired).items():
            if name.startswith("_") and name.endswith("_value"):
                nav = name[1:-6]
                target_set = dv.entity_set if nav not in w.lookups else _set_of(w.lookups[nav], nav)
                body[f"{nav}@odata.bind"] = None if value is None else f"/{target_set}({value})"
            else:
                body[name] = value
        if row is not None:
            return odata.BatchPart(
                "PATCH", f"{dv.entity_set}({row[dv.primary_key]})", body, {"If-Match": row.get("@odata.etag", "*")}
            )
        key = dict(w.key)
        raw: frozenset[str] = frozenset()
        if dv.company_lookup is not None:
            key[dv.company_lookup] = self._company_guid(w.company)
            raw = frozenset({dv.company_lookup})
        return odata.BatchPart("PATCH", odata.key_segment(dv.entity_set, key, raw), body, {"If-None-Match": "*"})

    def judge(self, w: TargetWrite, part: odata.BatchPart, answer: odata.PartResult) -> Result:
        if answer.status == 404 and part.method != "DELETE":
            # A bound row vanished since we cached its GUID; resolve afresh next time.
            for ref in w.lookups.values():
                if ref is not None:
                    self.lookups.drop_table(ref.entity_set)
            what = f"Dataverse {part.method} {part.url}"
            return from_error(MissingReferenceError(f"{what}: a lookup target is missing ({answer.text[:200]})"))
        result = super().judge(w, part, answer)
        entity_id = answer.headers.get("odata-entityid")
        if result is APPLIED and entity_id and "If-None-Match" in part.headers:
            _remember_created(self.lookups, part.url, entity_id, w)
        return result


def _set_of(ref: LookupRef | None, nav: str) -> str:
    return ref.entity_set if ref is not None else nav


def _remember_created(cache: LookupCache, url: str, entity_id: str, w: TargetWrite) -> None:
    guid = entity_id.rsplit("(", 1)[-1].rstrip(")")
    try:
        uuid.UUID(guid)
    except ValueError:
        return
    entity_set = url.split("(", 1)[0]
    if len(w.key) == 1:
        ((field, value),) = w.key.items()
        company_id = None
        if entity_set != "cdm_companies" and w.company:
            company_id = cache.company_id(w.company)
        cache.remember(entity_set, field, value, guid, company_id)


__all__ = ["COMPANY_LOOKUP", "DataverseTarget"]
