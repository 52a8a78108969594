"""Dataverse as a target: rows read in batched queries, writes in one `$batch` with ETags, creates in bulk.

An update is a PATCH of the row (by its GUID when known) with `If-Match`; a create is a PATCH of the id
dualwrite chose for the row (or an upsert on the alternate key) with `If-None-Match: *`, so it never
overwrites a row made meanwhile (a row with the same alternate key answers 412 as well). Every write asks
for `return=representation` of the primary key only, which gives the new ETag (version) at no cost.

Creates may go as one `CreateMultiple` per table instead (when that takes no more requests than the
`$batch`): it fails on a row that exists as `If-None-Match: *` does, so it is as safe. The bulk messages
take no per-record precondition (the Web API action has only `Targets`; no `If-Match` per record), so
updates and deletes, which carry the row's known ETag against lost updates, stay in the `$batch`.
`UpdateMultiple`/`UpsertMultiple` would overwrite a person's concurrent edit and are not used here.
A created row's answer is its id only: its version and ETag are learnt from its change-tracking echo or
a read, as for a write whose answer did not say them.
"""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import schemas
from consumers.target import Ident, ODataTarget, Outcome, Result, Write, from_error, ident
from dualwrite import odata
from dualwrite.dataverse import COMPANY_LOOKUP, MAX_BULK, DataverseClient, LookupCache, logical_name_of
from dualwrite.envelope import ChangeEvent, Op
from dualwrite.errors import DualWriteError, MissingReferenceError, RetryableError
from dualwrite.mapping import LookupRef, TargetWrite
from dualwrite.rows import resolve_lookups, row_event, select_columns, source_row
from dualwrite.tablemap import TableMap

_CHUNK = 40


@dataclass
class DataverseTarget(ODataTarget):
    client: DataverseClient = field(kw_only=True)
    lookups: LookupCache = field(kw_only=True)
    schemas_dir: Path | None = field(default=None, kw_only=True)
    bulk: bool = field(default=True, kw_only=True)  # creates by CreateMultiple when it takes fewer requests
    side: str = field(default="dataverse", init=False)
    # Creates carry the id dualwrite chose (`Write.row_id`, from the recorded plan): Dataverse takes a
    # client's primary key on create, so the row a crash cut short is known by its delete event.
    client_ids: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        self.system = "Dataverse"

    def close(self) -> None:
        self.client.close()

    def send(self, parts: list[odata.BatchPart]) -> list[odata.PartResult]:
        return self.client.batch(parts)

    def _company_guid(self, company: str) -> str:
        guid = self.lookups.company_id(company)
        if guid is None:
            raise MissingReferenceError(f"company {company!r} is not in cdm_companies yet")
        return guid

    # -- reads ---------------------------------------------------------------------------------------
    def read(self, m: TableMap, keys: list[tuple[str, dict[str, Any]]]) -> dict[Ident, ChangeEvent]:
        dv = m.dataverse
        fields = list(schemas.record_fields("dataverse", dv.entity_set, self.schemas_dir))
        select = select_columns(m, fields)
        by_company: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for company, key in keys:
            by_company[company].append(key)
        raw: list[dict[str, Any]] = []
        for company, group in by_company.items():
            scope = f" and _{dv.company_lookup}_value eq {self._company_guid(company)}" if dv.company_lookup else ""
            for start in range(0, len(group), _CHUNK):
                chunk = group[start : start + _CHUNK]
                ors = " or ".join(
                    "(" + " and ".join(f"{k} eq {odata.literal(v)}" for k, v in key.items()) + ")" for key in chunk
                )
                raw.extend(self.client.query(dv.entity_set, f"({ors}){scope}", select))
        resolved = resolve_lookups(self.lookups, m, raw)
        found: dict[Ident, ChangeEvent] = {}
        for row in raw:
            after = source_row(fields, row, resolved)
            event = row_event(m, row, after, Op.UPDATE)
            if event is not None:
                found[ident(event.company, {k: after.get(k) for k in dv.key})] = event
        return found

    # -- writes --------------------------------------------------------------------------------------
    def _resolve(self, ref: LookupRef) -> str:
        company_id = self._company_guid(ref.company) if ref.company else None
        guid = self.lookups.resolve(ref.entity_set, ref.key_field, [ref.value], company_id).get(ref.value)
        if guid is None:
            where = f" in company {ref.company}" if ref.company else ""
            raise MissingReferenceError(f"{ref.entity_set} row {ref.key_field}={ref.value!r}{where} does not exist yet")
        return guid

    def missing_references(self, changes: list[TargetWrite]) -> dict[int, MissingReferenceError]:
        """Companies and lookup rows asked for in one query per table (cached, a miss for a second): a
        record that waits for a row not synced yet then costs no read of its own row on every retry."""
        wanted: dict[tuple[str, str, str | None], set[Any]] = defaultdict(set)
        out: dict[int, MissingReferenceError] = {}
        for i, c in enumerate(changes):
            try:
                for ref in c.lookups.values():
                    if ref is not None:
                        company_id = self._company_guid(ref.company) if ref.company else None
                        wanted[(ref.entity_set, ref.key_field, company_id)].add(ref.value)
                if self.maps[c.map_name].dataverse.company_lookup:
                    self._company_guid(c.company)
            except MissingReferenceError as exc:
                out[i] = exc
        for (entity_set, key_field, company_id), values in wanted.items():
            self.lookups.resolve(entity_set, key_field, sorted(values, key=str), company_id)
        for i, c in enumerate(changes):
            if i in out:
                continue
            try:
                for ref in c.lookups.values():
                    if ref is not None:
                        self._resolve(ref)  # from the cache now
            except MissingReferenceError as exc:
                out[i] = exc
        return out

    def _body(self, w: Write) -> dict[str, Any]:
        c = w.change
        body: dict[str, Any] = dict(c.values) if w.action == "update" else {**c.defaults, **c.values}
        for nav, ref in c.lookups.items():
            body[f"{nav}@odata.bind"] = None if ref is None else f"/{ref.entity_set}({self._resolve(ref)})"
        return body

    def part(self, w: Write) -> odata.BatchPart:
        dv = w.map.dataverse
        prefer = {"Prefer": "return=representation"}
        select = f"?$select={dv.primary_key}"
        if w.action == "delete":
            return odata.BatchPart("DELETE", self._url(w), headers={"If-Match": w.if_match or "*"})
        if w.action == "update":
            body = self._body(w)
            return odata.BatchPart("PATCH", self._url(w) + select, body, {"If-Match": w.if_match or "*", **prefer})
        if w.row_id:  # the id chosen for it: a create at that id, with its key and company in the body
            url = f"{dv.entity_set}({w.row_id})"
            return odata.BatchPart("PATCH", url + select, self.record(w), {"If-None-Match": "*", **prefer})
        return odata.BatchPart("PATCH", self._key_url(w) + select, self._body(w), {"If-None-Match": "*", **prefer})

    def record(self, w: Write) -> dict[str, Any]:
        """A create as a record of CreateMultiple: its values, binds, key and company (the key URL's part)."""
        dv = w.map.dataverse
        body = {**self._body(w), **w.change.key}
        if w.row_id:
            body[dv.primary_key] = w.row_id
        if dv.company_lookup is not None:
            body[f"{dv.company_lookup}@odata.bind"] = f"/cdm_companies({self._company_guid(w.change.company)})"
        return body

    def write(self, writes: list[Write]) -> list[Result]:
        """Creates by CreateMultiple per table when that takes no more requests than the `$batch`; the rest
        (and every create when it would take more) in the `$batch` as `ODataTarget.write`."""
        creates: dict[str, list[int]] = defaultdict(list)
        for i, w in enumerate(writes):
            if w.action == "create":
                creates[w.map.dataverse.entity_set].append(i)
        n_rest = len(writes) - sum(len(v) for v in creates.values())
        by_batch = math.ceil(len(writes) / self.client.max_batch)
        by_bulk = sum(math.ceil(len(v) / MAX_BULK) for v in creates.values()) + math.ceil(
            n_rest / self.client.max_batch
        )
        if not self.bulk or not creates or by_bulk > by_batch:
            return super().write(writes)
        results: list[Result | None] = [None] * len(writes)
        bulked = {i for idxs in creates.values() for i in idxs}
        rest = [i for i in range(len(writes)) if i not in bulked]
        if rest:
            for i, r in zip(rest, super().write([writes[i] for i in rest]), strict=True):
                results[i] = r
        for entity_set, idxs in creates.items():
            for i, r in zip(idxs, self._create_multiple(entity_set, [writes[i] for i in idxs]), strict=True):
                results[i] = r
        return [r if r is not None else from_error(MissingReferenceError("not sent")) for r in results]

    def _create_multiple(self, entity_set: str, writes: list[Write]) -> list[Result]:
        results: list[Result | None] = [None] * len(writes)
        sent: list[int] = []
        records: list[dict[str, Any]] = []
        for i, w in enumerate(writes):
            try:
                records.append(self.record(w))
                sent.append(i)
            except DualWriteError as exc:
                results[i] = from_error(exc)
        if records:
            logical = logical_name_of(writes[sent[0]].map.dataverse.primary_key)
            answers = self.client.bulk(entity_set, logical, "CreateMultiple", records)
            url = f"{entity_set}/Microsoft.Dynamics.CRM.CreateMultiple"
            for i, record, answer in zip(sent, records, answers, strict=True):
                if answer is None:
                    lost = RetryableError(f"Dataverse POST {url}: not answered")
                    results[i] = replace(from_error(lost), answered=False)
                else:
                    results[i] = self.judge(writes[i], odata.BatchPart("POST", url, record), answer)
        return [r if r is not None else from_error(MissingReferenceError("not sent")) for r in results]

    def _url(self, w: Write) -> str:
        if w.row_id:
            return f"{w.map.dataverse.entity_set}({w.row_id})"
        return self._key_url(w)

    def _key_url(self, w: Write) -> str:
        dv = w.map.dataverse
        key = dict(w.change.key)
        raw: frozenset[str] = frozenset()
        if dv.company_lookup is not None:
            key[dv.company_lookup] = self._company_guid(w.change.company)
            raw = frozenset({dv.company_lookup})
        return odata.key_segment(dv.entity_set, key, raw)

    def row_id(self, w: Write, body: dict[str, Any], headers: dict[str, str]) -> str | None:
        pk = body.get(w.map.dataverse.primary_key)
        if pk:
            return str(pk)
        entity_id = headers.get("odata-entityid", "")
        guid = entity_id.rsplit("(", 1)[-1].rstrip(")") if entity_id else ""
        try:
            return str(uuid.UUID(guid))
        except ValueError:
            return w.row_id

    def judge(self, w: Write, part: odata.BatchPart, answer: odata.PartResult) -> Result:
        if answer.status == 404 and w.action == "create":
            # The only rows a create names besides itself are its binds: a bound row vanished since
            # its GUID was cached. Resolve afresh next time.
            for ref in w.change.lookups.values():
                if ref is not None:
                    self.lookups.drop_table(ref.entity_set)
            what = f"Dataverse {part.method} {part.url}"
            return from_error(MissingReferenceError(f"{what}: a lookup target is missing ({answer.text[:200]})"))
        if answer.status == 404 and w.action == "update":
            for ref in w.change.lookups.values():  # the row, or a bound row, is gone: look both up again
                if ref is not None:
                    self.lookups.drop_table(ref.entity_set)
        result = super().judge(w, part, answer)
        if result.outcome is Outcome.DONE and w.action == "create" and result.ack and result.ack.row_id:
            _remember_created(self.lookups, w, result.ack.row_id)
        return result


def _remember_created(cache: LookupCache, w: Write, guid: str) -> None:
    """A created row's GUID, so lookups to it resolve without a query."""
    entity_set = w.map.dataverse.entity_set
    if len(w.change.key) == 1:
        ((name, value),) = w.change.key.items()
        company_id = None
        if entity_set != "cdm_companies" and w.change.company and w.map.dataverse.company_lookup:
            company_id = cache.company_id(w.change.company)
        cache.remember(entity_set, name, value, guid, company_id)


__all__ = ["COMPANY_LOOKUP", "DataverseTarget"]
