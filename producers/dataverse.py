"""Dataverse producer: polls Web API change tracking per table and publishes the changes.

Each cycle first asks every table with a delta link whether it changed, all in one `$batch`
request, and then reads only the tables that did: the service-protection budget (6,000 requests
per user per 5 minutes, shared with the consumer's writes) is spent per cycle, not per table.

The delta link is checkpointed (in Kafka) only after the broker acknowledged every change it
covers, so a crash replays and never skips. Rows last modified by the integration user are
dropped (no echo). Deleted rows come back only as an id, so the producer keeps an id -> key index.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import schemas
from dualwrite import metrics, odata
from dualwrite.checkpoints import CheckpointStore
from dualwrite.config import Config
from dualwrite.dataverse import COMPANY_CODE, COMPANY_SET, DataverseClient, LookupCache
from dualwrite.envelope import ChangeEvent, Op, Origin, Side, record_key
from dualwrite.errors import DualWriteError, TargetRejectedError, ThrottledError
from dualwrite.order import dependency_order
from dualwrite.tablemap import TableMap
from producers.publish import Publisher

log = logging.getLogger("dualwrite.producer.dataverse")
LINK_REFRESH_S = 60.0


def _parse_time(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
    return datetime.now(UTC)


class DataverseProducer:
    def __init__(self, cfg: Config, maps: dict[str, TableMap]) -> None:
        self.cfg = cfg
        self.maps = maps
        # A one-way F&O -> Dataverse map has nothing to read here.
        self.order = [n for n in dependency_order(maps) if maps[n].writes_to("fo")]
        self.client = DataverseClient(cfg.dataverse)
        self.lookups = LookupCache(self.client)
        self.publisher = Publisher(cfg, "dataverse", maps)
        self.checkpoints = CheckpointStore(cfg.kafka)
        self.integration_user_id = (cfg.dataverse.integration_user_id or "").lower() or None
        self.fields = {m.name: schemas.record_fields("dataverse", m.dataverse.entity_set) for m in maps.values()}
        self._stop = threading.Event()
        self.ready = threading.Event()
        self._last_poll: dict[str, float] = {}
        self._link_saved: dict[str, float] = {}

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        self.checkpoints.load()
        while self.integration_user_id is None and not self._stop.is_set():
            try:
                self.integration_user_id = self.client.whoami().lower()
            except DualWriteError as exc:
                log.warning("WhoAmI failed, retrying: %s", exc)
                self._stop.wait(2)
        self.ready.set()
        interval = self.cfg.dataverse_producer.poll_interval_s
        while not self._stop.is_set():
            try:
                due = self.changed()
            except ThrottledError as exc:
                log.warning("throttled by Dataverse, waiting %.1fs", exc.retry_after or 5)
                self._stop.wait(exc.retry_after or 5)
                continue
            except DualWriteError as exc:  # the probe failed: read every table the slow way
                log.warning("change probe failed, polling every table: %s", exc)
                due = list(self.order)
            for name in due:
                if self._stop.is_set():
                    break
                try:
                    self.poll(self.maps[name])
                except ThrottledError as exc:
                    log.warning("throttled by Dataverse, waiting %.1fs", exc.retry_after or 5)
                    self._stop.wait(exc.retry_after or 5)
                except DualWriteError as exc:
                    metrics.SOURCE_ERRORS.labels("dataverse", type(exc).__name__).inc()
                    log.warning("polling %s failed: %s", name, exc)
                    self._stop.wait(1)
            now = time.monotonic()
            for entity_set, at in self._last_poll.items():
                metrics.CHECKPOINT_AGE.labels(entity_set).set(now - at)
            self._stop.wait(interval)
        self.publisher.close()
        self.checkpoints.close()
        self.client.close()

    def changed(self) -> list[str]:
        """The maps (in dependency order) whose table must be read this cycle.

        A table with a delta link is probed inside one `$batch` (one page of one row); it is read
        only when the probe shows a change, fails, or its link is due for a refresh. A table
        without a link yet is read (its first, full read)."""
        now = time.monotonic()
        due: set[str] = set()
        probes: list[tuple[str, str]] = []
        prefix = self.client.base + "/"
        for name in self.order:
            entity_set = self.maps[name].dataverse.entity_set
            link = self.checkpoints.get(f"dataverse|delta|{entity_set}")
            stale = now - self._link_saved.get(entity_set, 0.0) > LINK_REFRESH_S
            if link is None or stale or not link.startswith(prefix):
                due.add(name)
            else:
                probes.append((name, link[len(prefix) :]))
        if probes:
            parts = [
                odata.BatchPart("GET", path, headers={"Prefer": "odata.track-changes,odata.maxpagesize=1"})
                for _, path in probes
            ]
            for (name, _), result in zip(probes, self.client.batch(parts), strict=True):
                if result.status != 200 or _has_changes(result.text):
                    due.add(name)
                else:
                    self._last_poll[self.maps[name].dataverse.entity_set] = now
        return [n for n in self.order if n in due]

    def _select(self, m: TableMap) -> list[str]:
        return select_columns(m, self.fields[m.name])

    def poll(self, m: TableMap) -> int:
        """Publish what changed in one table since its checkpoint; returns the number of events."""
        dv = m.dataverse
        link_key = f"dataverse|delta|{dv.entity_set}"
        delta = self.checkpoints.get(link_key)
        published = 0
        pages = self.client.track_changes(dv.entity_set, self._select(m), delta, self.cfg.dataverse_producer.page_size)
        try:
            for page in pages:
                events, index = self._events(m, page.rows, page.deleted_ids)
                self.publisher.publish(events)
                published += len(events)
                marks: dict[str, str | None] = dict(index)
                changed = bool(page.rows or page.deleted_ids)
                stale = time.monotonic() - self._link_saved.get(dv.entity_set, 0.0) > LINK_REFRESH_S
                if page.delta_link and (changed or stale or delta is None):
                    # An unchanged table needs no new checkpoint, only one now and then to keep the token fresh.
                    marks[link_key] = page.delta_link
                    self._link_saved[dv.entity_set] = time.monotonic()
                if marks:
                    self.checkpoints.put_many(marks)
        except TargetRejectedError as exc:
            if delta and exc.status in (400, 410):
                log.warning("delta token for %s refused (%s); reading the table afresh", dv.entity_set, exc)
                self.checkpoints.put_many({link_key: None})
                return published
            raise
        self._last_poll[dv.entity_set] = time.monotonic()
        return published

    def _events(
        self, m: TableMap, rows: list[dict[str, Any]], deleted: list[str]
    ) -> tuple[list[ChangeEvent], dict[str, str | None]]:
        dv = m.dataverse
        index: dict[str, str | None] = {}
        events: list[ChangeEvent] = []
        resolved = resolve_lookups(self.lookups, m, rows)
        for row in rows:
            after = source_row(self.fields[m.name], row, resolved)
            company = row_company(m, after)
            if (m.company_specific and not company) or any(after.get(k) in (None, "") for k in dv.key):
                metrics.PRODUCED.labels("dataverse", dv.entity_set, "filtered").inc()
                continue
            key = record_key(company, [after[k] for k in dv.key])
            guid = str(row[dv.primary_key])
            index[f"dataverse|index|{dv.entity_set}|{guid}"] = key
            if m.company_specific and company not in self.cfg.companies:
                metrics.PRODUCED.labels("dataverse", dv.entity_set, "filtered").inc()
                continue
            user = str(row.get("_modifiedby_value") or "").lower() or None
            if user is not None and user == self.integration_user_id:
                metrics.PRODUCED.labels("dataverse", dv.entity_set, "echo_dropped").inc()
                continue
            events.append(
                ChangeEvent(
                    op=Op.UPDATE,
                    entity=dv.entity_set,
                    company=company,
                    key=key,
                    source_time=_parse_time(row.get("modifiedon")),
                    source_version=row.get("@odata.etag"),
                    origin=Origin(Side.DATAVERSE, False, user),
                    after=self.publisher.coerce(dv.entity_set, after),
                )
            )
        for guid in deleted:
            mark = f"dataverse|index|{dv.entity_set}|{guid}"
            known = self.checkpoints.get(mark)
            if known is None:
                continue  # a row we never published (other company, or deleted before we saw it)
            index[mark] = None
            company = known.split("|", 1)[0]
            events.append(
                ChangeEvent(Op.DELETE, dv.entity_set, company, known, datetime.now(UTC), Origin(Side.DATAVERSE), None)
            )
        return events, index


def _has_changes(text: str) -> bool:
    """Whether a change-tracking answer holds any change (or more pages); unreadable counts as yes."""
    try:
        body = json.loads(text)
    except ValueError:
        return True
    return not isinstance(body, dict) or bool(body.get("value")) or "@odata.nextLink" in body


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
        source_time=_parse_time(raw.get("modifiedon")),
        source_version=raw.get("@odata.etag"),
        origin=Origin(Side.DATAVERSE, False, raw.get("_modifiedby_value"), correlation_id),
        after=after,
    )
