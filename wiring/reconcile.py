"""Reconcile: compare both sides of each map, report the rows apart, and repair them through the normal path.

Per map and company both sides are read in key order (F&O with its server paging, Dataverse in pages of
`reconcile.page_size`, only the columns of the map's change events) and merged by key: memory holds a page
of each side and the rows found apart, not the table. Each row becomes the change event its producer would
publish, and every field pair is compared in the canonical form of the consumer's merge rules
(`dualwrite.observe.canonical`). Rows found apart are read again by key (a change may have landed since),
then explained: a record with a change in flight (in a source topic past the consumer group's committed
offset) or dead-lettered (its key in a DLQ of the map's topics) is reported as such, not as drift.

`--repair` publishes, for each drifted row, the change event of the side that should win, to that side's
map topic (header `dualwrite.reconcile.run`): the consumer applies it with all its rules (pause, DLQ,
service protection, idempotence, counting). Which side wins (`decide`): the side that changed since the
sync state's agreed value (a change whose event was lost wins as it would have live); when the state
cannot tell, the conflict policy's source of truth, else the map's `initial_sync_master`. A row on one side
only is created on the other, unless the sync state says the other side had it: then that side deleted it
unseen, and its delete is published (one-way maps never delete). Once the consumer committed past the
repairs, they are read again: only a row equal on both sides counts as repaired.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

import schemas
from dualwrite import control, kafka, status
from dualwrite.config import Config
from dualwrite.dataverse import DataverseClient
from dualwrite.envelope import REPAIR_HEADER, ChangeEvent, Op, Origin, Side
from dualwrite.errors import CoercionError, MappingError, MissingReferenceError
from dualwrite.fo import FoClient
from dualwrite.mapping import passes_filter
from dualwrite.merge import RecordState, digest, other
from dualwrite.observe import canonical, carried, pairs, version_of
from dualwrite.order import dependency_order
from dualwrite.publish import Publisher
from dualwrite.state import read_states
from dualwrite.tablemap import TableMap
from wiring.initial_sync import DataverseSource, FoSource

RUN_HEADER = REPAIR_HEADER
DRIFT = status.DRIFT_KINDS  # only_fo, only_dataverse, differs: rows apart that nothing explains
FO, DATAVERSE = Side.FO.value, Side.DATAVERSE.value


# -- rows as compared (pure) ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Seen:
    """One side's row as reconcile compares it: its record key, natural key, field digests and version."""

    side: str
    key: str  # `company|natural key`, lower case (the Kafka key)
    natural: tuple[str, ...]  # the natural key as this side spells it
    values: Mapping[str, str]  # digest per field pair (observe.pairs), of the canonical value
    version: int | None = None
    row_id: str | None = None
    passes: bool = True  # the row passes the map's source filter
    event: ChangeEvent | None = None  # kept when read again by key (to repair from)

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(v.casefold() for v in self.natural)


def digests(m: TableMap, side: str, row: Mapping[str, Any], fo_types: Mapping[str, str]) -> dict[str, str]:
    """The digest of each field pair's canonical value; a value the map cannot translate gets one of its own."""
    out: dict[str, str] = {}
    for name, f in pairs(m).items():
        column = (f.fo if side == FO else f.dataverse) or ""
        if column in row:
            try:
                out[name] = digest(canonical(f, side, row[column], fo_types.get(f.fo or "")))
            except MappingError:
                out[name] = digest(["untranslatable", side, str(row[column])])
    return out


def seen(m: TableMap, event: ChangeEvent, fo_types: Mapping[str, str], keep: bool = False) -> Seen:
    """A change event as reconcile compares it (`keep`: with the event, to repair from)."""
    side = event.origin.side.value
    row = event.after or {}
    source_filter = m.fo.filter if side == FO else m.dataverse.filter
    return Seen(
        side,
        event.key.lower(),
        tuple(event.key.split("|")[1:]),
        digests(m, side, row, fo_types),
        version_of(event.source_version),
        event.source_id,
        passes_filter(source_filter, row),
        event if keep else None,
    )


def merge(fo: Iterable[Seen], dv: Iterable[Seen]) -> Iterator[tuple[Seen | None, Seen | None]]:
    """Pairs of the rows with the same key from two key-ordered streams; a row with no partner pairs with None.

    A row that looks unpartnered waits until the end, so two services that sort some keys differently from
    us (a collation) still pair up: memory holds a page of each stream plus those rows."""
    left, right = iter(fo), iter(dv)
    waiting: dict[str, dict[str, Seen]] = {FO: {}, DATAVERSE: {}}
    a, b = next(left, None), next(right, None)
    while a is not None or b is not None:
        if a is not None and b is not None and a.key == b.key:
            yield a, b
            a, b = next(left, None), next(right, None)
        elif b is None or (a is not None and a.order <= b.order):
            assert a is not None
            partner = waiting[DATAVERSE].pop(a.key, None)
            if partner is not None:
                yield a, partner
            else:
                waiting[FO][a.key] = a
            a = next(left, None)
        else:
            partner = waiting[FO].pop(b.key, None)
            if partner is not None:
                yield partner, b
            else:
                waiting[DATAVERSE][b.key] = b
            b = next(right, None)
    for row in waiting[FO].values():
        yield row, None
    for row in waiting[DATAVERSE].values():
        yield None, row


def differing(m: TableMap, fo: Seen, dv: Seen) -> list[str]:
    """The field pairs whose canonical values differ."""
    return sorted(name for name in pairs(m) if fo.values.get(name) != dv.values.get(name))


def classify(m: TableMap, fo: Seen | None, dv: Seen | None) -> tuple[str, list[str]] | None:
    """(kind, differing fields) of a record, or None when both sides agree (or neither has it).

    Kinds: differs, only_fo, only_dataverse (drift) and not_synced: a row the map does not sync (outside the
    other side's filter, or on the target side of a one-way map only)."""
    fo_in, dv_in = fo is not None and fo.passes, dv is not None and dv.passes
    if fo_in and dv_in:
        assert fo is not None and dv is not None
        fields = differing(m, fo, dv)
        return ("differs", fields) if fields else None
    if fo_in:
        return ("only_fo", []) if m.writes_to(DATAVERSE) and dv is None else ("not_synced", [])
    if dv_in:
        return ("only_dataverse", []) if m.writes_to(FO) and fo is None else ("not_synced", [])
    return None


# -- which side wins (pure) ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Repair:
    """What `--repair` publishes for a drifted row: the `side` whose row (op `row`) or delete (op `delete`)
    goes to that side's map topic; op `none` publishes nothing. `reason` says why, for the report."""

    op: str
    side: str | None = None
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "side": self.side, "reason": self.reason}


def decide(
    m: TableMap, kind: str, fields: list[str], fo: Seen | None, dv: Seen | None, state: RecordState | None
) -> Repair:
    """The repair of a drifted row, by the sync state, the conflict policy and the map's master side."""
    if kind in ("only_fo", "only_dataverse"):
        here = FO if kind == "only_fo" else DATAVERSE
        there = other(here)
        if state is not None and state.side(there).exists is True:
            if m.writes_to(here):
                return Repair("delete", there, f"{_name(there)} deleted the row after dualwrite saw it there")
            return Repair("row", here, f"one-way map: {_name(there)} gets the row again (the map never deletes)")
        if m.writes_to(there):
            return Repair("row", here, f"missing in {_name(there)}: {_name(here)}'s row is created there")
        return Repair("none", None, f"the map does not write to {_name(there)}")
    sot = m.conflict.source_of_truth if m.conflict.policy == "source-of-truth" else None
    changed = _changed_since_agreed(fields, fo, dv, state)
    if changed == {FO} or changed == {DATAVERSE}:
        winner, reason = changed.pop(), "changed since both sides agreed (its change never arrived)"
    elif changed:
        winner = sot or m.initial_sync_master
        reason = "both sides changed since they agreed: the conflict policy decides"
    else:
        winner = sot or m.initial_sync_master
        reason = "source of truth" if sot else "no sync state: the map's initial_sync_master"
    if not set(fields) & carried(m, other(winner)):
        # The winner's values of these fields never travel (one-way fields): the other side's are the right ones.
        winner, reason = other(winner), "the map carries these fields one way only"
    return Repair("row", winner, f"{_name(winner)} wins: {reason}")


def _changed_since_agreed(fields: list[str], fo: Seen | None, dv: Seen | None, state: RecordState | None) -> set[str]:
    """The sides whose value of some differing field is not the value both last agreed on (empty: unknown)."""
    if state is None or fo is None or dv is None:
        return set()
    agreed = {n: state.fields[n].value for n in fields if n in state.fields}
    if not agreed:
        return set()
    return {s.side for s in (fo, dv) for n, v in agreed.items() if s.values.get(n) != v}


def _name(side: str) -> str:
    return "F&O" if side == FO else "Dataverse"


# -- the report ----------------------------------------------------------------------------------------------
@dataclass
class Finding:
    """A record found apart, with what explains it and what was done about it."""

    kind: str
    company: str
    key: str
    fields: list[dict[str, Any]] = field(default_factory=list)  # name, and the canonical value of each side
    explained: str | None = None  # in_flight or dlq
    repair: Repair | None = None
    repaired: bool | None = None  # None: not attempted (no --repair, nothing to publish, or the map is paused)
    note: str = ""

    @property
    def drift(self) -> bool:
        return self.kind in DRIFT and self.explained is None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "company": self.company, "key": self.key, "fields": self.fields}
        out["explained"] = self.explained
        out["repair"] = self.repair.to_json() if self.repair else None
        out["repaired"] = self.repaired
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class MapReport:
    name: str
    companies: list[str]
    fo_rows: int = 0
    dataverse_rows: int = 0
    equal: int = 0
    counts: Counter[str] = field(default_factory=Counter)  # drift kinds, in_flight, dlq, not_synced, unreadable
    repairs_published: int = 0
    repaired: int = 0
    findings: list[Finding] = field(default_factory=list)  # the first `report_rows` of them
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    finished: float | None = None

    @property
    def drift(self) -> int:
        return sum(self.counts[k] for k in DRIFT)

    @property
    def remaining(self) -> int:
        """Drift found and not (verifiably) repaired by this run."""
        return self.drift - self.repaired

    @property
    def duration_s(self) -> float:
        return (self.finished or time.time()) - self.started

    def add(self, f: Finding, keep: int) -> None:
        self.counts[f.explained or f.kind] += 1
        if len(self.findings) < keep:
            self.findings.append(f)

    def to_json(self) -> dict[str, Any]:
        return {
            "map": self.name,
            "companies": self.companies,
            "fo_rows": self.fo_rows,
            "dataverse_rows": self.dataverse_rows,
            "equal": self.equal,
            **{k: self.counts[k] for k in (*DRIFT, *status.EXPLAINED_KINDS, "not_synced", "unreadable")},
            "drift": self.drift,
            "repairs_published": self.repairs_published,
            "repaired": self.repaired,
            "remaining": self.remaining,
            "seconds": round(self.duration_s, 3),
            "rows": [f.to_json() for f in self.findings],
            "notes": self.notes,
        }


@dataclass
class Report:
    run_id: str
    repair: bool
    maps: list[MapReport] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)  # HTTP requests reconcile made, per side
    started: float = field(default_factory=time.time)
    finished: float | None = None

    @property
    def drift(self) -> int:
        return sum(r.drift for r in self.maps)

    @property
    def remaining(self) -> int:
        return sum(r.remaining for r in self.maps)

    def per_thousand(self, side: str) -> float | None:
        """Requests per 1,000 rows read from a side."""
        rows = sum(r.fo_rows if side == FO else r.dataverse_rows for r in self.maps)
        return round(self.requests[side] * 1000 / rows, 2) if rows else None

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "repair": self.repair,
            "started_at": datetime.fromtimestamp(self.started, UTC).isoformat(),
            "seconds": round((self.finished or time.time()) - self.started, 3),
            "drift": self.drift,
            "remaining": self.remaining,
            "requests": {
                "fo": self.requests[FO],
                "dataverse": self.requests[DATAVERSE],
                "dataverse_per_1000_rows": self.per_thousand(DATAVERSE),
            },
            "maps": [r.to_json() for r in self.maps],
        }


def summary(previous: dict[str, Any] | None, report: Report, enabled: Iterable[str]) -> dict[str, Any]:
    """The status-topic record of a run: per map the counts, time, duration and runs in a row with drift; maps
    this run did not cover keep what the previous run said (maps no longer enabled are dropped)."""
    names = set(enabled)
    maps = {k: v for k, v in ((previous or {}).get("maps") or {}).items() if k in names}
    for r in report.maps:
        before = maps.get(r.name, {})
        maps[r.name] = {
            "run_id": report.run_id,
            "time": r.finished or time.time(),
            "duration_s": round(r.duration_s, 3),
            "companies": r.companies,
            "counts": {k: r.counts[k] for k in (*DRIFT, *status.EXPLAINED_KINDS, "not_synced", "unreadable")},
            "drift": r.drift,
            "drift_runs": int(before.get("drift_runs", 0)) + 1 if r.drift else 0,
        }
    return {"run_id": report.run_id, "time": report.finished or time.time(), "maps": maps}


# -- Kafka: what explains a difference -------------------------------------------------------------------
def keys_in_flight(cfg: Config, topics: list[str], limit: int, idle_s: float = 0.5) -> set[str] | None:
    """Record keys of what the consumer group has not committed yet in `topics` (a bounded read of its lag);
    None when the lag is more than `limit` records (then every difference may be in flight)."""
    group = kafka.consumer(cfg.kafka, kafka.group_id(cfg.kafka.topic_prefix))
    try:
        meta = group.list_topics(timeout=10).topics
        parts = [TopicPartition(t, p) for t in topics if t in meta for p in meta[t].partitions]
        committed = {(tp.topic, tp.partition): tp.offset for tp in group.committed(parts, timeout=10)} if parts else {}
        starts, lag = [], 0
        for tp in parts:
            low, high = group.get_watermark_offsets(tp, timeout=10, cached=False)
            done = committed.get((tp.topic, tp.partition), -1)
            lag += max(0, high - (done if done >= 0 else low))
            starts.append(TopicPartition(tp.topic, tp.partition, done if done >= 0 else OFFSET_BEGINNING))
    finally:
        group.close()
    if lag > limit:
        return None
    keys: set[str] = set()
    reader = kafka.consumer(cfg.kafka, f"{cfg.kafka.topic_prefix}.reader.{uuid.uuid4().hex}")
    try:
        if not starts:
            return keys
        reader.assign(starts)
        last, read = time.monotonic(), 0
        # Read until nothing comes for idle_s: tansu's watermarks stop short of the last batch.
        while time.monotonic() - last < idle_s and read <= limit:
            msg = reader.poll(0.05)
            if msg is None or msg.error():
                continue
            last, read = time.monotonic(), read + 1
            keys.add((msg.key() or b"").decode("utf-8", "replace").lower())
    finally:
        reader.close()
    return keys if read <= limit else None


def dead_lettered_keys(cfg: Config, topics: list[str]) -> set[str]:
    """Record keys in the DLQs of `topics`."""
    keys: set[str] = set()
    for msg in kafka.read_topics_to_end(cfg.kafka, [kafka.dlq_topic(t) for t in topics], idle_s=0.5):
        if msg.key():
            keys.add((msg.key() or b"").decode("utf-8", "replace").lower())
    return keys


def sync_states(cfg: Config, wanted: set[str]) -> dict[str, RecordState]:
    """The consumer's sync state of the `wanted` state keys (`map|record key`), read from the changelog topic."""
    if not wanted:
        return {}
    return read_states(
        cfg.kafka, wanted
    )  # as a restore gives them: records of a consumer that lost its partition do not count


# -- the run ---------------------------------------------------------------------------------------------
@dataclass
class Progress:
    map: str
    compared: int = 0  # records compared so far
    total: int | None = None  # F&O rows of the map (its $count), for a progress bar
    finished: bool = False


@dataclass
class _Candidate:
    kind: str
    company: str
    key: str
    natural: tuple[str, ...]


READ_RETRIES = 8


class Reconciler:
    """One reconcile run over some maps (all enabled ones by default), optionally restricted to some companies."""

    def __init__(
        self,
        cfg: Config,
        maps: dict[str, TableMap],
        companies: list[str] | None = None,
        repair: bool = False,
        run_id: str | None = None,
        on_progress: Callable[[Progress], None] = lambda p: None,
    ) -> None:
        self.cfg, self.maps, self.repair = cfg, maps, repair
        self.companies = sorted(companies or cfg.companies)
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.on_progress = on_progress
        self.report = Report(self.run_id, repair)
        # A batch job with no other retry: transient read failures (5xx, 429, dropped connections) are tried again.
        self.fo = FoClient(cfg.fo, read_retries=READ_RETRIES)
        self.dv = DataverseClient(cfg.dataverse, "reconcile", read_retries=READ_RETRIES)
        for side, client in ((FO, self.fo.http), (DATAVERSE, self.dv.http)):
            client.event_hooks["request"].append(self._counter(side))
        self._publishers: dict[str, Publisher] = {}  # per side, for the map being reconciled
        self._fo_types: dict[str, dict[str, str]] = {}

    def _counter(self, side: str) -> Callable[[httpx.Request], None]:
        def count(request: httpx.Request) -> None:
            self.report.requests[side] += 1

        return count

    def order(self, names: list[str] | None) -> list[str]:
        return [n for n in dependency_order(self.maps) if names is None or n in names]

    def run(self, names: list[str] | None = None) -> Report:
        """Reconcile the maps (in dependency order, so repaired rows find the rows they refer to) and keep the
        run's summary in the status topic."""
        try:
            for name in self.order(names):
                try:
                    self.report.maps.append(self._map(self.maps[name]))
                finally:
                    self._close_publishers()
        finally:
            self.fo.close()
            self.dv.close()
        self.report.finished = time.time()
        previous = status.read_reconcile(self.cfg.kafka)
        status.publish_reconcile(self.cfg.kafka, summary(previous, self.report, self.maps))
        return self.report

    # -- one map ----------------------------------------------------------------------------------------
    def _map(self, m: TableMap) -> MapReport:
        r = MapReport(m.name, self.companies if m.company_specific else [])
        progress = Progress(m.name)
        candidates: list[_Candidate] = []
        for company in self._companies(m):
            fo_src, dv_src = self._sources(m, company)
            progress.total = (progress.total or 0) + (fo_src.count() or 0)
            for fo, dv in merge(self._fo_rows(m, fo_src, r), self._dv_rows(m, dv_src, r)):
                found = classify(m, fo, dv)
                progress.compared += 1
                if progress.compared % 1000 == 0:
                    self.on_progress(progress)
                if found is None:
                    r.equal += 1
                elif found[0] == "not_synced":
                    r.counts["not_synced"] += 1
                else:
                    row = fo or dv
                    assert row is not None
                    candidates.append(_Candidate(found[0], company, row.key, row.natural))
        if candidates:
            self._settle(m, candidates, r)
        r.finished = time.time()
        progress.finished = True
        self.on_progress(progress)
        return r

    def _companies(self, m: TableMap) -> list[str]:
        return self.companies if m.company_specific else [""]

    def _sources(self, m: TableMap, company: str) -> tuple[FoSource, DataverseSource]:
        companies = [company] if m.company_specific else self.cfg.companies
        select = sorted({*self.fo_types(m), *(f for f in (m.fo.modified_on, m.fo.modified_by) if f)})
        fo = FoSource(self.fo, m, companies, self.run_id, select)
        dv = DataverseSource(self.dv, m, companies, self.run_id, self.cfg.schemas_dir, self.cfg.reconcile.page_size)
        return fo, dv

    def fo_types(self, m: TableMap) -> dict[str, str]:
        if m.name not in self._fo_types:
            self._fo_types[m.name] = schemas.record_fields("fo", m.fo.entity_set, self.cfg.schemas_dir)
        return self._fo_types[m.name]

    def publisher(self, m: TableMap, side: str) -> Publisher:
        """The map's publisher of one side (to its topic only, a delete too), its records tagged with the run id."""
        if side not in self._publishers:
            self._publishers[side] = Publisher(self.cfg, side, {m.name: m}, headers=[(RUN_HEADER, self.run_id)])
        return self._publishers[side]

    def _close_publishers(self) -> None:
        for p in self._publishers.values():
            p.close()
        self._publishers.clear()

    def _fo_rows(self, m: TableMap, src: FoSource, r: MapReport, keep: bool = False) -> Iterator[Seen]:
        for raw, _ in src.rows(None):
            r.fo_rows += 1
            s = self._fo_seen(m, src, raw, r, keep)
            if s is not None:
                yield s

    def _fo_seen(self, m: TableMap, src: FoSource, raw: dict[str, Any], r: MapReport, keep: bool) -> Seen | None:
        try:
            event = src.event(self.publisher(m, FO), raw)
        except CoercionError as exc:
            self._unreadable(r, FO, exc)
            return None
        return None if event is None else seen(m, event, self.fo_types(m), keep)

    def _dv_rows(self, m: TableMap, src: DataverseSource, r: MapReport) -> Iterator[Seen]:
        page: list[dict[str, Any]] = []
        try:
            for raw, _ in src.rows(None):
                r.dataverse_rows += 1
                page.append(raw)
                if len(page) >= self.cfg.reconcile.page_size:
                    yield from self._dv_seen(m, src, page, r)
                    page = []
        except MissingReferenceError as exc:  # the company is not in Dataverse (yet): nothing of it there
            r.notes.append(str(exc))
        yield from self._dv_seen(m, src, page, r)

    def _dv_seen(
        self, m: TableMap, src: DataverseSource, raws: list[dict[str, Any]], r: MapReport, keep: bool = False
    ) -> Iterator[Seen]:
        if not raws:
            return
        resolved = src.resolve(raws)
        for raw in raws:
            try:
                event = src.event_of(self.publisher(m, DATAVERSE), raw, resolved)
            except CoercionError as exc:
                self._unreadable(r, DATAVERSE, exc)
                continue
            if event is not None:
                yield seen(m, event, self.fo_types(m), keep)

    def _unreadable(self, r: MapReport, side: str, exc: CoercionError) -> None:
        """A row its schema cannot take: its producer dead-letters it too; counted, not compared."""
        r.counts["unreadable"] += 1
        if len(r.notes) < 20:
            r.notes.append(f"{_name(side)} row not comparable: {exc}")

    # -- rows found apart ---------------------------------------------------------------------------------
    def _settle(self, m: TableMap, candidates: list[_Candidate], r: MapReport) -> None:
        """Read each record found apart again, explain it, decide and publish its repair; then verify."""
        topics = self._consumed_topics(m)
        in_flight = keys_in_flight(self.cfg, topics, self.cfg.reconcile.max_lag_read)
        if in_flight is None:
            r.notes.append(f"more than {self.cfg.reconcile.max_lag_read:,} records in flight: not read")
        dead = dead_lettered_keys(self.cfg, list(kafka.map_topics(self.cfg.kafka.topic_prefix, m).values()))
        states = sync_states(self.cfg, {f"{m.name}|{c.key}" for c in candidates})
        published: list[_Candidate] = []
        for company, chunk in self._chunks(candidates):
            events: dict[str, list[ChangeEvent]] = defaultdict(list)
            for c, (fo, dv) in zip(chunk, self._reread(m, company, chunk, r), strict=True):
                f = self._finding(m, c, fo, dv)
                if f is None:
                    r.equal += 1  # it agrees now: a change landed since the scan
                    continue
                if f.kind in DRIFT:
                    if in_flight is None or c.key in in_flight:
                        f.explained = "in_flight"
                    elif c.key in dead:
                        f.explained = "dlq"
                if f.drift:
                    state = states.get(f"{m.name}|{c.key}")
                    f.repair = decide(m, f.kind, [x["name"] for x in f.fields], fo, dv, state)
                    event = self._repair_event(m, f, fo, dv, state)
                    if self.repair and event is not None:
                        events[event.origin.side.value].append(event)
                        published.append(c)
                        f.repaired = False
                r.add(f, self.cfg.reconcile.report_rows)
            for side, evs in events.items():
                self.publisher(m, side).publish(evs)
                r.repairs_published += len(evs)
        if published:
            self._verify(m, published, r)

    def _consumed_topics(self, m: TableMap) -> list[str]:
        """The map topics the consumer reads: a side's topic when the map writes to the other side."""
        topics = kafka.map_topics(self.cfg.kafka.topic_prefix, m)
        return [topics[s] for s in (FO, DATAVERSE) if m.writes_to(other(s))]

    def _chunks(self, candidates: list[_Candidate]) -> Iterator[tuple[str, list[_Candidate]]]:
        by_company: dict[str, list[_Candidate]] = defaultdict(list)
        for c in candidates:
            by_company[c.company].append(c)
        n = self.cfg.reconcile.keys_per_request
        for company, group in sorted(by_company.items()):
            for i in range(0, len(group), n):
                yield company, group[i : i + n]

    def _reread(
        self, m: TableMap, company: str, chunk: list[_Candidate], r: MapReport
    ) -> list[tuple[Seen | None, Seen | None]]:
        """Each candidate's rows on both sides as they are now, read by key (whatever the map's filters)."""
        fo_src, dv_src = self._sources(m, company)
        keys = [list(c.natural) for c in chunk]
        fo_seen = [self._fo_seen(m, fo_src, raw, r, keep=True) for raw in fo_src.find(company, keys)]
        try:
            dv_seen = list(self._dv_seen(m, dv_src, dv_src.find(company, keys), r, keep=True))
        except MissingReferenceError:
            dv_seen = []
        fo_by = {s.key: s for s in fo_seen if s is not None}
        dv_by = {s.key: s for s in dv_seen}
        return [(fo_by.get(c.key), dv_by.get(c.key)) for c in chunk]

    def _finding(self, m: TableMap, c: _Candidate, fo: Seen | None, dv: Seen | None) -> Finding | None:
        found = classify(m, fo, dv)
        if found is None:
            return None
        kind, names = found
        f = Finding(kind, c.company, c.key, [self._shown(m, n, fo, dv) for n in names])
        if kind == "not_synced":
            f.note = "the other side's row is outside the map's filter, or the map is one-way"
        return f

    def _shown(self, m: TableMap, name: str, fo: Seen | None, dv: Seen | None) -> dict[str, Any]:
        """A differing field with each side's canonical value (F&O's terms), for the report."""
        f = pairs(m)[name]
        out: dict[str, Any] = {"name": name}
        for side, s in ((FO, fo), (DATAVERSE, dv)):
            row = (s.event.after if s is not None and s.event is not None else None) or {}
            value = row.get((f.fo if side == FO else f.dataverse) or "")
            try:
                out[side] = canonical(f, side, value, self.fo_types(m).get(name))
            except MappingError:
                out[side] = value
        return out

    def _repair_event(
        self, m: TableMap, f: Finding, fo: Seen | None, dv: Seen | None, state: RecordState | None
    ) -> ChangeEvent | None:
        """The change event `f.repair` asks for (None: nothing to publish)."""
        repair = f.repair
        if repair is None or repair.op == "none" or repair.side is None:
            return None
        if repair.op == "row":
            row = fo if repair.side == FO else dv
            return row.event if row is not None else None
        present = fo or dv
        if present is None or present.event is None:
            return None
        gone = state.side(repair.side).row_id if state is not None else None
        entity = m.fo.entity_set if repair.side == FO else m.dataverse.entity_set
        return ChangeEvent(
            Op.DELETE,
            entity,
            present.event.company,
            present.event.key,
            datetime.now(UTC),
            Origin(Side(repair.side), correlation_id=self.run_id),
            None,
            source_id=gone,  # which row went: the consumer leaves a row made again since alone
        )

    # -- after the repairs --------------------------------------------------------------------------------
    def _verify(self, m: TableMap, published: list[_Candidate], r: MapReport) -> None:
        """Wait until the consumer applied the repairs, then count the rows that now agree."""
        by_key = {f.key: f for f in r.findings}
        if m.name in control.paused_maps(self.cfg.kafka):
            r.notes.append("the map is paused: its repairs wait in Kafka until it is resumed")
            return
        offsets = {tp: o for p in self._publishers.values() for tp, o in p.max_offsets.items()}
        if not _wait_committed(self.cfg, offsets, self.cfg.reconcile.apply_timeout_s):
            r.notes.append(f"the consumer did not apply the repairs within {self.cfg.reconcile.apply_timeout_s:g} s")
            return
        for company, chunk in self._chunks(published):
            for c, (fo, dv) in zip(chunk, self._reread(m, company, chunk, r), strict=True):
                agrees = classify(m, fo, dv) is None
                r.repaired += int(agrees)
                if c.key in by_key:
                    by_key[c.key].repaired = agrees
                    if not agrees:
                        by_key[c.key].note = "still apart after the consumer applied the repair"


def _wait_committed(cfg: Config, offsets: dict[tuple[str, int], int], timeout_s: float) -> bool:
    """Whether the consumer group committed past every given offset within `timeout_s`."""
    c = kafka.consumer(cfg.kafka, kafka.group_id(cfg.kafka.topic_prefix))
    deadline = time.monotonic() + timeout_s
    try:
        while not status.committed_past(c, offsets):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True
    finally:
        c.close()


__all__ = ["RUN_HEADER", "Finding", "MapReport", "Reconciler", "Repair", "Report", "decide", "merge"]


def table(report: Report, name_w: int = 16) -> list[str]:
    """The report as the lines of a table, then each listed row apart and the totals."""
    head = ("F&O", "Dataverse", "equal", "only F&O", "only DV", "differ", "in flight", "dlq", "repaired", "seconds")
    lines = [f"{'map':<{name_w}}" + "".join(f"{h:>11}" for h in head)]
    for r in report.maps:
        cells = (r.fo_rows, r.dataverse_rows, r.equal, *(r.counts[k] for k in (*DRIFT, "in_flight", "dlq")), r.repaired)
        lines.append(f"{r.name:<{name_w}}" + "".join(f"{c:>11,}" for c in cells) + f"{r.duration_s:>11.1f}")
    for r in report.maps:
        for f in r.findings:
            if f.kind == "not_synced":
                continue
            what = ", ".join(f"{x['name']} (F&O {x['fo']!r}, Dataverse {x['dataverse']!r})" for x in f.fields)
            how = f" -> {f.repair.reason}" if f.repair is not None and f.drift else ""
            done = {True: " [repaired]", False: " [still apart]", None: ""}[f.repaired]
            lines.append(f"  {r.name} {f.key}: {f.explained or f.kind}{': ' + what if what else ''}{how}{done}")
        lines.extend(f"  {r.name}: {note}" for note in r.notes)
    per = report.per_thousand(DATAVERSE)
    lines.append(
        f"drift: {report.drift:,} row(s), {report.remaining:,} left; requests: Dataverse "
        f"{report.requests[DATAVERSE]:,}"
        + (f" ({per:g} per 1,000 rows)" if per is not None else "")
        + f", F&O {report.requests[FO]:,}; run {report.run_id}"
    )
    return lines
