"""Dataverse producer: polls Web API change tracking per table and publishes the changes.

Each cycle first asks every table with a delta link whether it changed, all in one `$batch`
request, and then reads only the tables that did: the service-protection budget (6,000 requests
per user per 5 minutes, shared with the consumer's writes) is spent per cycle, not per table.

The delta link is checkpointed (in Kafka) only after the broker acknowledged every change it
covers, so a crash replays and never skips. Rows last modified by the integration user are
dropped (no echo). Deleted rows come back only as an id, so the producer keeps an id -> key index;
a full read (after Dataverse refused an expired delta token) publishes the deletes of indexed rows it
no longer returns.
A row with a value its schema cannot take goes to the table topic's DLQ on its own (acknowledged
before the checkpoint too), and the rest of the page is published.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import schemas
from dualwrite import dlq, kafka, metrics, odata
from dualwrite.checkpoints import CheckpointStore, index_mark, indexed_key
from dualwrite.config import Config
from dualwrite.dataverse import DataverseClient, LookupCache
from dualwrite.envelope import ChangeEvent, Op, Origin, Side, record_key
from dualwrite.errors import AuthError, CoercionError, DualWriteError, TargetRejectedError, ThrottledError
from dualwrite.order import dependency_order
from dualwrite.publish import Publisher
from dualwrite.rows import resolve_lookups, row_company, select_columns, source_row
from dualwrite.tablemap import TableMap

log = logging.getLogger("dualwrite.producer.dataverse")
LINK_REFRESH_S = 60.0
EXPIRED_TOKEN = "0x80044352"  # ExpiredVersionStamp: the delta token is older than Dataverse can track from
DIRECTION = "dataverse->fo"


def _parse_time(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
    return datetime.now(UTC)


@dataclass
class PageEvents:
    """What one page of changes turns into: events to publish, id -> key marks, and rows to dead-letter."""

    events: list[ChangeEvent] = field(default_factory=list)
    index: dict[str, str | None] = field(default_factory=dict)
    dead: list[kafka.Record] = field(default_factory=list)


class DataverseProducer:
    def __init__(self, cfg: Config, maps: dict[str, TableMap]) -> None:
        self.cfg = cfg
        self.maps = maps
        # A one-way F&O -> Dataverse map has nothing to read here.
        self.order = [n for n in dependency_order(maps) if maps[n].writes_to("fo")]
        self.client = DataverseClient(cfg.dataverse, "dataverse-producer")
        self.lookups = LookupCache(self.client)
        self.publisher = Publisher(cfg, "dataverse", maps)
        self.dlq_producer = kafka.producer(cfg.kafka, linger_ms=0)
        self.checkpoints = CheckpointStore(cfg.kafka)
        # The users dualwrite writes as (`integration_user_id`, else WhoAmI of `auth`; and each of `more_users`).
        self.integration_users: set[str] | None = None
        self.fields = {
            m.name: schemas.record_fields("dataverse", m.dataverse.entity_set, cfg.schemas_dir) for m in maps.values()
        }
        self._stop = threading.Event()
        self.ready = threading.Event()
        self._last_poll: dict[str, float] = {}
        self._link_saved: dict[str, float] = {}

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        self.checkpoints.load()
        while self.integration_users is None and not self._stop.is_set():
            try:
                first = self.cfg.dataverse.integration_user_id or self.client.whoami("auth")
                more = [self.client.whoami(name) for name in self.cfg.dataverse.more_users]
                self.integration_users = {i.lower() for i in (first, *more)}
            except DualWriteError as exc:
                log.warning("WhoAmI failed, retrying: %s", exc)
                self._stop.wait(2)
        self.ready.set()
        pc = self.cfg.dataverse_producer
        interval = pc.poll_interval_s
        while not self._stop.is_set():
            try:
                due = self.changed()
            except (ThrottledError, AuthError) as exc:
                self._wait_out(exc)
                continue
            except DualWriteError as exc:  # the probe failed: read every table the slow way
                log.warning("change probe failed, polling every table: %s", exc)
                due = list(self.order)
            for name in due:
                if self._stop.is_set():
                    break
                try:
                    self.poll(self.maps[name])
                except (ThrottledError, AuthError) as exc:
                    self._wait_out(exc)
                except DualWriteError as exc:
                    metrics.SOURCE_ERRORS.labels("dataverse", type(exc).__name__).inc()
                    log.warning("polling %s failed: %s", name, exc)
                    self._stop.wait(1)
            # Nothing changed: poll less often, up to the idle interval; a change brings it back at once.
            idle = max(pc.idle_poll_interval_s, pc.poll_interval_s)
            interval = min(idle, interval * 2) if not due else pc.poll_interval_s
            self._stop.wait(self._next_poll_in(interval))
        for entity_set in self._last_poll:
            metrics.CHECKPOINT_AGE.remove(entity_set)  # a stopped producer's checkpoints age no more
        self.publisher.close()
        self.dlq_producer.flush(10)
        self.checkpoints.close()
        self.client.close()

    def _next_poll_in(self, interval: float) -> float:
        """The interval, or longer while the producer is over its share of the request limit."""
        budget = self.client.budget
        wait = 0.0 if budget is None else budget.wait_s()
        if wait > interval:
            metrics.BUDGET_WAIT.labels("dataverse-producer").inc(wait - interval)
        return max(interval, wait)

    def _wait_out(self, exc: ThrottledError | AuthError) -> None:
        """Wait as long as the service (or the token endpoint) asks; a whole cycle would only spend the budget."""
        why = "throttled by Dataverse" if isinstance(exc, ThrottledError) else f"no token ({exc})"
        log.warning("%s, waiting %.1fs", why, exc.retry_after or 5)
        self._stop.wait(exc.retry_after or 5)

    def _mark_polled(self, entity_set: str) -> None:
        """The table's checkpoint is current as of now; the age gauge is computed when scraped, so it keeps
        growing while the producer waits (throttled, no token) instead of freezing."""
        if entity_set not in self._last_poll:
            metrics.CHECKPOINT_AGE.labels(entity_set).set_function(
                lambda: time.monotonic() - self._last_poll[entity_set]
            )
        self._last_poll[entity_set] = time.monotonic()

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
                    self._mark_polled(self.maps[name].dataverse.entity_set)
        return [n for n in self.order if n in due]

    def _select(self, m: TableMap) -> list[str]:
        return select_columns(m, self.fields[m.name])

    def poll(self, m: TableMap) -> int:
        """Publish what changed in one table since its checkpoint; returns the number of events.

        Without a delta link (the first read, or after Dataverse refused the link) the whole table is read, and
        every indexed row it did not return was deleted meanwhile: those deletes are published before the new
        link is checkpointed, so no deletion of the gap is lost."""
        dv = m.dataverse
        link_key = f"dataverse|delta|{dv.entity_set}"
        delta = self.checkpoints.get(link_key)
        published = 0
        returned: set[str] | None = None if delta else set()  # a full read: the ids it returned
        pages = self.client.track_changes(dv.entity_set, self._select(m), delta, self.cfg.dataverse_producer.page_size)
        try:
            for page in pages:
                out = self._events(m, page.rows, page.deleted_ids)
                if returned is not None:
                    returned.update(str(r[dv.primary_key]).lower() for r in page.rows if r.get(dv.primary_key))
                    if page.delta_link:
                        self._deletes_of_the_gap(m, returned, out)
                self.publisher.publish(out.events)
                kafka.deliver(self.dlq_producer, out.dead)  # the checkpoint below covers these rows too
                published += len(out.events)
                marks: dict[str, str | None] = dict(out.index)
                changed = bool(page.rows or page.deleted_ids)
                stale = time.monotonic() - self._link_saved.get(dv.entity_set, 0.0) > LINK_REFRESH_S
                if page.delta_link and (changed or stale or delta is None):
                    # An unchanged table needs no new checkpoint, only one now and then to keep the token fresh.
                    marks[link_key] = page.delta_link
                    self._link_saved[dv.entity_set] = time.monotonic()
                if marks:
                    self.checkpoints.put_many(marks)
        except TargetRejectedError as exc:
            # 0x80044352 (ExpiredVersionStamp) is what Dataverse answers for an expired token; any refusal of a
            # delta link (another 400, OData's 410 Gone) is handled alike: a full read costs more, loses nothing.
            if delta and exc.status in (400, 410):
                why = "expired" if exc.service_code == EXPIRED_TOKEN else f"refused ({exc.service_code or exc.status})"
                log.warning("delta token for %s %s (%s); reading the table afresh", dv.entity_set, why, exc)
                metrics.DELTA_RESYNCS.labels(dv.entity_set, "full_read").inc()
                self.checkpoints.put_many({link_key: None})
                return published
            raise
        self._mark_polled(dv.entity_set)
        return published

    def _deletes_of_the_gap(self, m: TableMap, returned: set[str], out: PageEvents) -> None:
        """Add to the last page of a full read the deletes of the indexed rows it did not return."""
        prefix = index_mark(m.dataverse.entity_set, "")
        # (a row only the consumer's mark names may never have been made: no delete is made up for it)
        gone = [
            key[len(prefix) :]
            for key, value in list(self.checkpoints.values.items())
            if key.startswith(prefix)
            and key[len(prefix) :].lower() not in returned
            and key not in out.index
            and indexed_key(value)[1]
        ]
        if not gone:
            return
        log.warning("%s: %d row(s) deleted while change tracking could not say so", m.dataverse.entity_set, len(gone))
        metrics.DELTA_RESYNCS.labels(m.dataverse.entity_set, "gap_deletes").inc(len(gone))
        deletes = self._events(m, [], gone)
        out.events.extend(deletes.events)
        out.index.update(deletes.index)

    def _events(self, m: TableMap, rows: list[dict[str, Any]], deleted: list[str]) -> PageEvents:
        dv = m.dataverse
        out = PageEvents()
        index, events = out.index, out.events
        resolved = resolve_lookups(self.lookups, m, rows)
        for row in rows:
            after = source_row(self.fields[m.name], row, resolved)
            company = row_company(m, after)
            if (m.company_specific and not company) or any(after.get(k) in (None, "") for k in dv.key):
                metrics.PRODUCED.labels("dataverse", dv.entity_set, "filtered").inc()
                continue
            key = record_key(company, [after[k] for k in dv.key])
            guid = str(row[dv.primary_key])
            index[index_mark(dv.entity_set, guid)] = key
            if m.company_specific and company not in self.cfg.companies:
                metrics.PRODUCED.labels("dataverse", dv.entity_set, "filtered").inc()
                continue
            # A row dualwrite wrote last is published too: change tracking gives the latest state only,
            # so it may also hold a person's earlier edit. The consumer's sync state tells which is which.
            user = str(row.get("_modifiedby_value") or "").lower() or None
            by_dualwrite = user is not None and user in (self.integration_users or ())
            try:
                typed = self.publisher.coerce(dv.entity_set, after)
            except CoercionError as exc:
                out.dead.append(self._dead_row(m, key, row, exc))
                continue
            events.append(
                ChangeEvent(
                    op=Op.UPDATE,
                    entity=dv.entity_set,
                    company=company,
                    key=key,
                    source_time=_parse_time(row.get("modifiedon")),
                    source_version=row.get("@odata.etag"),
                    origin=Origin(Side.DATAVERSE, by_dualwrite, user),
                    after=typed,
                    source_id=guid,
                )
            )
        if any(self.checkpoints.get(index_mark(dv.entity_set, guid)) is None for guid in deleted):
            self.checkpoints.load(idle_s=0.2)  # the consumer may have named a row it made since (`put_index`)
        for guid in deleted:
            mark = index_mark(dv.entity_set, guid)
            value = self.checkpoints.get(mark)
            if value is None:
                continue  # a row of no record of ours (another company's), or deleted before anyone saw it
            index[mark] = None
            known = indexed_key(value)[0]
            company = known.split("|", 1)[0]
            events.append(
                ChangeEvent(
                    Op.DELETE,
                    dv.entity_set,
                    company,
                    known,
                    datetime.now(UTC),
                    Origin(Side.DATAVERSE),
                    None,
                    source_id=guid,  # which row went: a row re-created since has another id
                )
            )
        return out

    def _dead_row(self, m: TableMap, key: str, row: dict[str, Any], error: CoercionError) -> kafka.Record:
        """A DLQ record of the table topic for one row: the row as read, as JSON, and why."""
        log.warning("row %s of %s dead-lettered: %s", key, m.dataverse.entity_set, error)
        metrics.PRODUCED.labels("dataverse", m.dataverse.entity_set, "dead_lettered").inc()
        topic = kafka.map_topics(self.cfg.kafka.topic_prefix, m)["dataverse"]
        value = json.dumps(row, default=str).encode()
        return dlq.source_letter(topic, value, error, m.name, DIRECTION, key.encode(), entity=m.dataverse.entity_set)


def _has_changes(text: str) -> bool:
    """Whether a change-tracking answer holds any change (or more pages); unreadable counts as yes."""
    try:
        body = json.loads(text)
    except ValueError:
        return True
    return not isinstance(body, dict) or bool(body.get("value")) or "@odata.nextLink" in body
