"""Writes mapped changes to F&O: batched reads for the convergence check, then one $batch of writes."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from consumers.target import APPLIED, SKIPPED, Result, from_error
from dualwrite import odata
from dualwrite.errors import DualWriteError, MissingReferenceError
from dualwrite.fo import FoClient
from dualwrite.mapping import TargetWrite, changed_fields
from dualwrite.tablemap import TableMap

log = logging.getLogger("dualwrite.consumer.target")

_CHUNK = 25


class FoTarget:
    def __init__(self, client: FoClient, maps: dict[str, TableMap]) -> None:
        self.client = client
        self.maps = maps
        self._known_refs: set[tuple[str, str, str]] = set()

    def close(self) -> None:
        self.client.close()

    def apply_batch(self, writes: list[TargetWrite]) -> list[Result]:
        results: list[Result | None] = [None] * len(writes)
        parts: list[odata.BatchPart] = []
        owners: list[int] = []
        by_map: dict[str, list[int]] = defaultdict(list)
        for i, w in enumerate(writes):
            by_map[w.map_name].append(i)
        for map_name, idxs in by_map.items():
            m = self.maps[map_name]
            try:
                current = self._current_rows(m, [writes[i] for i in idxs])
            except DualWriteError as exc:
                for i in idxs:
                    results[i] = from_error(exc)
                continue
            for i in idxs:
                w = writes[i]
                try:
                    part = self._plan(m, w, current.get(_ident(w)))
                except DualWriteError as exc:
                    results[i] = from_error(exc)
                    continue
                if part is None:
                    results[i] = SKIPPED
                else:
                    parts.append(part)
                    owners.append(i)
        for part in parts:
            log.debug("%s %s %s %s", "F&O", part.method, part.url, sorted((part.body or {}).keys()))
        if parts:
            try:
                answers = self.client.batch(parts)
            except DualWriteError as exc:
                answers = []
                for i in owners:
                    results[i] = from_error(exc)
            for i, part, answer in zip(owners, parts, answers, strict=False):
                if answer.status == 404 and part.method == "DELETE":
                    results[i] = SKIPPED
                    continue
                error = answer.error(f"F&O {part.method} {part.url}")
                results[i] = APPLIED if error is None else from_error(error)
        return [r if r is not None else SKIPPED for r in results]

    def _key(self, m: TableMap, w: TargetWrite) -> dict[str, Any]:
        key = dict(w.key)
        if m.fo.company_field not in key:
            key = {m.fo.company_field: w.company, **key}
        return key

    def _current_rows(
        self, m: TableMap, writes: list[TargetWrite]
    ) -> dict[tuple[str, tuple[str, ...]], dict[str, Any]]:
        fo = m.fo
        select = sorted({f.fo for f in m.fields if f.fo} | {fo.company_field, *fo.key})
        found: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
        for start in range(0, len(writes), _CHUNK):
            chunk = writes[start : start + _CHUNK]
            flt = " or ".join(
                "(" + " and ".join(f"{k} eq {odata.literal(v)}" for k, v in self._key(m, w).items()) + ")"
                for w in chunk
            )
            for row in self.client.query(fo.entity_set, flt, select):
                company = str(row.get(fo.company_field, "")).lower()
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
            key = {ref_map.fo.company_field: w.company, ref_map.fo.key[0]: value}
            flt = " and ".join(f"{k} eq {odata.literal(v)}" for k, v in key.items())
            if not any(True for _ in self.client.query(ref_map.fo.entity_set, flt, [ref_map.fo.key[0]], top=1)):
                raise MissingReferenceError(
                    f"{ref_map.fo.entity_set} {ref_map.fo.key[0]}={value!r} does not exist in {w.company} yet"
                )
            self._known_refs.add(marker)

    def _plan(self, m: TableMap, w: TargetWrite, row: dict[str, Any] | None) -> odata.BatchPart | None:
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


def _ident(w: TargetWrite) -> tuple[str, tuple[str, ...]]:
    return w.company.lower(), tuple(str(v).lower() for v in w.key.values())
