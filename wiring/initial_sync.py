"""Initial sync: copy the rows that exist on each map's master side to the other side.

Maps run in dependency order. Rows are read in key order and published as `snapshot` change events
(tagged with the run id) to the master side's topic, so the consumers apply them exactly like live
changes: batched, convergence-checked, failures to the DLQ. After each acknowledged page the last
key is checkpointed, so a crashed run resumes after it; rows re-sent from the last page find the
target already equal and are not written twice. A map starts only when the consumer has applied
every map it refers to. The sources (`FoSource`, `DataverseSource`) serve `dualwrite reconcile` too.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import schemas
from dualwrite import kafka, odata
from dualwrite.checkpoints import CheckpointStore
from dualwrite.config import Config
from dualwrite.dataverse import DataverseClient, LookupCache
from dualwrite.envelope import ChangeEvent, Op, Side
from dualwrite.errors import MissingReferenceError
from dualwrite.fo import FoClient
from dualwrite.order import dependency_order
from dualwrite.publish import Publisher
from dualwrite.rows import resolve_lookups, row_event, select_columns, snapshot_event, source_filter, source_row
from dualwrite.status import committed_past
from dualwrite.tablemap import TableMap

RUN_HEADER = "dualwrite.sync.run"
PAGE = 1000


@dataclass
class MapProgress:
    name: str
    total: int | None = None
    done: int = 0
    resumed_at: int = 0
    dead_lettered: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def rate(self) -> float:
        elapsed = (self.finished or time.monotonic()) - self.started
        return (self.done - self.resumed_at) / elapsed if elapsed > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        if self.total is None or self.rate <= 0:
            return None
        return max(0.0, (self.total - self.done) / self.rate)


def _after_key(fields: list[str], last: list[str]) -> str:
    """OData filter for rows whose (fields) tuple sorts after `last`."""
    ors = []
    for i in range(len(fields)):
        eqs = [f"{fields[j]} eq {odata.literal(last[j])}" for j in range(i)]
        ors.append("(" + " and ".join([*eqs, f"{fields[i]} gt {odata.literal(last[i])}"]) + ")")
    return "(" + " or ".join(ors) + ")"


def _any_key(fields: list[str], keys: list[list[str]]) -> str:
    """OData filter for the rows whose (fields) tuple is one of `keys`."""
    ands = [" and ".join(f"{f} eq {odata.literal(v)}" for f, v in zip(fields, key, strict=True)) for key in keys]
    return "(" + " or ".join(f"({a})" for a in ands) + ")"


def _and(*parts: str | None) -> str | None:
    return " and ".join(p for p in parts if p) or None


class Source(Protocol):
    """One side of a map: its rows in key order, resumable after a position (the master side in an initial sync,
    both sides in a reconcile)."""

    side: Side

    def count(self) -> int | None: ...

    def rows(self, last: list[str] | None) -> Iterator[tuple[dict[str, Any], list[str]]]: ...

    def event(self, publisher: Publisher, raw: dict[str, Any]) -> ChangeEvent | None: ...


class FoSource:
    """F&O as a source: the map's rows of the enabled companies, company first, then in key order (server paging).
    `select`: only these fields (default all)."""

    side = Side.FO

    def __init__(
        self, client: FoClient, m: TableMap, companies: list[str], run_id: str, select: list[str] | None = None
    ) -> None:
        self.client, self.m, self.companies, self.run_id, self.select = client, m, companies, run_id, select

    def count(self) -> int | None:
        return self.client.count(self.m.fo.entity_set, source_filter(self.m, self.companies))

    def rows(self, last: list[str] | None) -> Iterator[tuple[dict[str, Any], list[str]]]:
        fields = _key_fields(self.m)
        flt = source_filter(self.m, self.companies)
        if last:
            flt = _and(flt, _after_key(fields, last))
        for raw in self.client.query(self.m.fo.entity_set, flt, self.select, orderby=fields):
            yield raw, [str(raw.get(k, "")) for k in fields]

    def find(self, company: str, keys: list[list[str]]) -> list[dict[str, Any]]:
        """The rows with these natural keys in `company`, whether or not they pass the map's source filter."""
        fo = self.m.fo
        names = [k for k in fo.key if k != fo.company_field]
        if fo.company_field in fo.key:  # the company is the key (legal entities)
            keys = [[v for k, v in zip(fo.key, key, strict=True) if k != fo.company_field] for key in keys]
        company_clause = f"{fo.company_field} eq {odata.literal(company)}" if fo.company_field else None
        flt = _and(company_clause, _any_key(names, keys) if names else None)
        return list(self.client.query(fo.entity_set, flt, self.select))

    def event(self, publisher: Publisher, raw: dict[str, Any]) -> ChangeEvent | None:
        return snapshot_event(publisher, self.m, raw, self.companies, self.run_id)


class DataverseSource:
    """Dataverse as a source: one enabled company after the other, each in alternate-key order, `page_size`
    rows per page (Prefer: odata.maxpagesize), only the columns of the map's change events."""

    side = Side.DATAVERSE
    CACHE_ROWS = 50_000  # lookups resolved for this many rows are forgotten: memory stays bounded on big tables

    def __init__(
        self,
        client: DataverseClient,
        m: TableMap,
        companies: list[str],
        run_id: str,
        schemas_dir: Path | None,
        page_size: int = 5000,
    ) -> None:
        self.client, self.m, self.run_id, self.page_size = client, m, run_id, page_size
        self.companies = sorted(companies) if m.company_specific else [""]
        self.lookups = LookupCache(client)
        self._resolved_rows = 0
        self.fields = list(schemas.record_fields("dataverse", m.dataverse.entity_set, schemas_dir))

    def _company(self, company: str) -> str | None:
        dv = self.m.dataverse
        if dv.company_lookup is not None:
            guid = self.lookups.company_id(company)
            if guid is None:
                raise MissingReferenceError(f"company {company!r} is not in cdm_companies; sync companies first")
            return f"_{dv.company_lookup}_value eq {guid}"
        if dv.company_field is not None:
            return f"{dv.company_field} eq {odata.literal(company)}"
        return None

    def _filter(self, company: str) -> str | None:
        parts = [f"{name} eq {odata.literal(value)}" for name, value in self.m.dataverse.filter.items()]
        return _and(self._company(company), *parts)

    def count(self) -> int | None:
        counts = [self.client.count(self.m.dataverse.entity_set, self._filter(c)) for c in self.companies]
        return None if any(n is None for n in counts) else sum(n or 0 for n in counts)

    def rows(self, last: list[str] | None) -> Iterator[tuple[dict[str, Any], list[str]]]:
        dv = self.m.dataverse
        select = select_columns(self.m, self.fields)
        for company in self.companies:
            if last and company < last[0]:
                continue
            flt = self._filter(company)
            if last and company == last[0]:
                flt = _and(flt, _after_key(dv.key, last[1:]))
            for raw in self.client.query(dv.entity_set, flt, select, self.page_size, orderby=dv.key):
                yield raw, [company, *(str(raw.get(k, "")) for k in dv.key)]

    def find(self, company: str, keys: list[list[str]]) -> list[dict[str, Any]]:
        """The rows with these alternate keys in `company`, whether or not they pass the map's source filter."""
        dv = self.m.dataverse
        flt = _and(self._company(company), _any_key(dv.key, keys))
        return list(self.client.query(dv.entity_set, flt, select_columns(self.m, self.fields), self.page_size))

    def event(self, publisher: Publisher, raw: dict[str, Any]) -> ChangeEvent | None:
        return self.event_of(publisher, raw, self.resolve([raw]))

    def resolve(self, raws: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The lookups of rows read together, resolved in one query per table (for `event_of`)."""
        self._resolved_rows += len(raws)
        if self._resolved_rows > self.CACHE_ROWS:
            self.lookups, self._resolved_rows = LookupCache(self.client), len(raws)
        return resolve_lookups(self.lookups, self.m, raws)

    def event_of(
        self, publisher: Publisher, raw: dict[str, Any], resolved: dict[str, dict[str, Any]]
    ) -> ChangeEvent | None:
        """The change event of a row (None when not ours); CoercionError for a value its schema cannot take."""
        after = source_row(self.fields, raw, resolved)
        event = row_event(self.m, raw, after, Op.SNAPSHOT, self.run_id)
        return None if event is None else replace(event, after=publisher.coerce(event.entity, after))


def _key_fields(m: TableMap) -> list[str]:
    """The F&O read order: company first (unless global), then the key."""
    company = [m.fo.company_field] if m.fo.company_field else []
    return [*company, *[k for k in m.fo.key if k != m.fo.company_field]]


class InitialSync:
    def __init__(self, cfg: Config, maps: dict[str, TableMap], run_id: str | None = None, page: int = PAGE) -> None:
        self.cfg = cfg
        self.page = page
        self.maps = maps
        self.checkpoints = CheckpointStore(cfg.kafka)
        self.checkpoints.load()
        current = self.checkpoints.get("sync|current-run")
        self.run_id = run_id or current or uuid.uuid4().hex[:12]
        self.fo = FoClient(cfg.fo)
        self._dv: DataverseClient | None = None

    def _mark(self, map_name: str, what: str) -> str:
        return f"sync|{self.run_id}|{map_name}|{what}"

    def order(self, names: list[str] | None) -> list[str]:
        order = dependency_order(self.maps)
        return [n for n in order if names is None or n in names]

    def run(self, names: list[str] | None, on_progress: Callable[[MapProgress], None]) -> list[MapProgress]:
        self.checkpoints.put_many({"sync|current-run": self.run_id})
        results = []
        try:
            for name in self.order(names):
                results.append(self._sync_map(self.maps[name], on_progress))
        finally:
            self.fo.close()
            if self._dv is not None:
                self._dv.close()
        self.checkpoints.put_many({"sync|current-run": None})
        return results

    def _source(self, m: TableMap) -> Source:
        if m.initial_sync_master == "fo":
            return FoSource(self.fo, m, self.cfg.companies, self.run_id)
        if self._dv is None:
            self._dv = DataverseClient(self.cfg.dataverse)
        return DataverseSource(self._dv, m, self.cfg.companies, self.run_id, self.cfg.schemas_dir)

    def _sync_map(self, m: TableMap, on_progress: Callable[[MapProgress], None]) -> MapProgress:
        progress = MapProgress(m.name)
        if self.checkpoints.get(self._mark(m.name, "done")):
            progress.done = progress.resumed_at = int(self.checkpoints.get(self._mark(m.name, "count")) or 0)
            progress.total = progress.done
            progress.finished = time.monotonic()
            on_progress(progress)
            return progress
        source = self._source(m)
        progress.total = source.count()
        last_text = self.checkpoints.get(self._mark(m.name, "last"))
        last = last_text.split("|") if last_text else None
        progress.done = progress.resumed_at = int(self.checkpoints.get(self._mark(m.name, "count")) or 0)
        publisher = Publisher(self.cfg, source.side.value, {m.name: m}, headers=[(RUN_HEADER, self.run_id)])
        topic = kafka.map_topics(self.cfg.kafka.topic_prefix, m)[source.side.value]
        page: list[ChangeEvent] = []
        position: list[str] | None = None
        try:
            for raw, position in source.rows(last):
                event = source.event(publisher, raw)
                if event is not None:
                    page.append(event)
                if len(page) >= self.page:
                    self._flush(publisher, m, page, position, progress)
                    page = []
                    on_progress(progress)
            self._flush(publisher, m, page, position, progress)
            on_progress(progress)
            self._wait_applied(source.side.other, publisher.max_offsets, on_progress, progress)
        finally:
            publisher.close()
        progress.dead_lettered = self._dead_letters(kafka.dlq_topic(topic))
        progress.finished = time.monotonic()
        self.checkpoints.put_many({self._mark(m.name, "done"): "1"})
        on_progress(progress)
        return progress

    def _flush(
        self,
        publisher: Publisher,
        m: TableMap,
        page: list[ChangeEvent],
        position: list[str] | None,
        progress: MapProgress,
    ) -> None:
        publisher.publish(page)
        progress.done += len(page)
        if position is not None:
            self.checkpoints.put_many(
                {self._mark(m.name, "last"): "|".join(position), self._mark(m.name, "count"): str(progress.done)}
            )

    def _wait_applied(
        self,
        towards: Side,
        offsets: dict[tuple[str, int], int],
        on_progress: Callable[[MapProgress], None],
        progress: MapProgress,
    ) -> None:
        """Block until the consumer group committed past everything this run published for the map."""
        if not offsets:
            return
        c = kafka.consumer(self.cfg.kafka, kafka.group_id(self.cfg.kafka.topic_prefix))
        try:
            while not committed_past(c, offsets):
                on_progress(progress)
                time.sleep(0.2)
        finally:
            c.close()

    def _dead_letters(self, dlq: str) -> int:
        count = 0
        for msg in kafka.read_to_end(self.cfg.kafka, dlq, idle_s=0.5):
            if dict(msg.headers() or []).get(RUN_HEADER) == self.run_id.encode():  # type: ignore[arg-type]
                count += 1
        return count
