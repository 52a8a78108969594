"""Applying change events by the merge rules (`dualwrite/merge.py`), many records at a time.

Per record: plan from its sync state, read only what the plan needs (the target when dualwrite does
not know it, or after a 412), record the plan before writing (so a crash can be resolved), write
with the known ETag, write a conflict's winning values back to the source, settle the new state.
Reads and writes of all records of a round go out together: one query per table and one `$batch`
per side, so requests per change stay low.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import schemas
from consumers.target import Ident, Outcome, Target, Write, ident
from dualwrite import merge
from dualwrite.checkpoints import index_mark
from dualwrite.envelope import ChangeEvent, Op, record_key
from dualwrite.errors import DualWriteError, MissingReferenceError, RetryableError
from dualwrite.mapping import TargetWrite, map_event, natural_key
from dualwrite.merge import Ack, Observed, Plan, Policy, RecordState
from dualwrite.observe import carried, observe, pairs
from dualwrite.tablemap import TableMap

log = logging.getLogger("dualwrite.consumer.apply")
# Every decision per record, at DEBUG (`dualwrite -v` with DUALWRITE_TRACE=1): for finding out afterwards
# why a record ended as it did.
trace = logging.getLogger("dualwrite.trace")
MAX_CONFLICTS = 3  # 412s in a row for one record within one batch before it is retried later


class StateStoreLike(Protocol):
    """The part of `dualwrite.state.StateStore` used here."""

    def get_many(self, partition: int, keys: Iterable[str]) -> dict[str, RecordState]: ...

    def put(self, items: Iterable[tuple[int, str, RecordState | None]]) -> None: ...


@dataclass
class Change:
    """One change event to apply; `outcome` (applied, skipped_equal, stale) or `error` says how it went."""

    map: TableMap
    event: ChangeEvent
    partition: int
    outcome: str | None = None
    error: DualWriteError | None = None
    conflict: bool = False
    repair: bool = False  # published by `reconcile --repair`: read the target, assert the one-way values
    # Earlier changes of the same record from the same side in this batch, which this one may stand for
    # (`merge.coalesce`); `declined` when it could not: the caller then applies them one at a time.
    earlier: list[Change] = field(default_factory=list)
    declined: bool = False
    mapped: TargetWrite | None = None  # `map_event(map, event)`, when the caller worked it out already

    def target_write(self) -> TargetWrite | None:
        """The event mapped to the target (once: the loop's filter check maps it too)."""
        if self.mapped is None:
            self.mapped = map_event(self.map, self.event)
        return self.mapped

    @property
    def state_key(self) -> str:
        return state_key(self.map, self.event)

    @property
    def source(self) -> str:
        return self.event.origin.side.value

    @property
    def towards(self) -> str:
        return merge.other(self.source)


def state_key(m: TableMap, event: ChangeEvent) -> str:
    """The sync-state key of a record: the map and the record key, case-blind like both services."""
    return f"{m.name}|{event.key.lower()}"


@dataclass
class _Work:
    change: Change
    state: RecordState
    ev: ChangeEvent
    obs: Observed
    plan: Plan = merge.NOTHING
    target_ev: ChangeEvent | None = None
    target: Observed | None = None
    t_ack: Ack | None = None
    b_ack: Ack | None = None
    force_read: bool = False
    conflicts_left: int = MAX_CONFLICTS
    source_read: bool = False  # `ev` is the source's row as read now (NEEDS_SOURCE), not the change event
    coalesced: bool = False  # `obs` stands for the change and its `earlier` ones
    done: bool = False  # failed or retried: nothing more to do this batch
    wrote: bool = False

    @property
    def m(self) -> TableMap:
        return self.change.map

    @property
    def first_sight(self) -> bool:
        """dualwrite has never synced the record: no agreed field, the target row not known to exist."""
        return not self.state.fields and self.state.side(self.change.towards).exists is not True

    def key(self, side: str) -> tuple[str, dict[str, Any]]:
        """(company, key in that side's field names) of the record."""
        names = self.m.fo.key if side == "fo" else self.m.dataverse.key
        return self.ev.company, dict(zip(names, natural_key(self.ev), strict=True))


@dataclass
class Applier:
    maps: dict[str, TableMap]
    targets: dict[str, Target]
    store: StateStoreLike
    schemas_dir: Path | None = None
    # Names the record of each Dataverse row about to be created with an id chosen here, durably, before the
    # create (`dualwrite.checkpoints.put_index`): its delete event may come before the producer saw the row.
    index: Callable[[dict[str, str]], None] | None = None
    _fo_types: dict[str, dict[str, str]] = field(default_factory=dict)

    def fo_types(self, m: TableMap) -> dict[str, str]:
        if m.name not in self._fo_types:
            self._fo_types[m.name] = schemas.record_fields("fo", m.fo.entity_set, self.schemas_dir)
        return self._fo_types[m.name]

    def observe(self, m: TableMap, event: ChangeEvent) -> Observed:
        return observe(m, event, self.fo_types(m))

    def plan(self, w: _Work) -> None:
        m = w.m
        a, b = w.change.source, w.change.towards
        policy = Policy(m.conflict.source_of_truth if m.conflict.policy == "source-of-truth" else None)
        w.plan = merge.plan(
            w.state, w.obs, w.target, carried(m, b), carried(m, a), policy, w.change.repair, w.source_read
        )
        made_on = b if w.plan.target == "create" else a if w.plan.back == "create" else None
        if made_on is not None and getattr(self.targets[made_on], "client_ids", False):
            # The new row's id, chosen here and recorded with the plan: if a crash cuts the create short and a
            # person deletes the row before the restart, its delete event names a row dualwrite knows it made.
            w.plan = replace(w.plan, create_id=str(uuid.uuid4()))

    # -- one round: at most one change per record -------------------------------------------------------
    def apply(self, changes: list[Change]) -> None:
        """Apply changes of distinct records; each gets an outcome or an error (RetryableError: later)."""
        works = self._load(changes)
        self._resolve_pending(works)
        for w in works:
            if not w.done:
                w.obs = self.observe(w.m, w.ev)
                if w.change.earlier:
                    self._coalesce(w)
            if not w.done:
                self.plan(w)
        for _ in range(MAX_CONFLICTS + 2):
            self._read_sources(works)
            self._read_targets(works)
            if not self._write_targets(works):
                break
        self._write_back(works)
        self._settle(works)

    def _coalesce(self, w: _Work) -> None:
        """One plan and one write for a record's successive changes from one side, when `merge.coalesce`
        shows that applying only the newest decides as applying each in turn would."""
        try:
            seen = [self.observe(w.m, c.event) for c in w.change.earlier]
        except DualWriteError:
            self._decline(w, "an earlier change cannot be read")
            return
        merged = merge.coalesce(w.state, [*seen, w.obs], carried(w.m, w.change.towards))
        if merged is None:
            self._decline(w, "the changes could decide otherwise one by one")
        else:
            w.obs, w.coalesced = merged, True

    def _decline(self, w: _Work, why: str) -> None:
        """Not coalesced after all: no outcome, nothing written; the caller applies the changes one by one."""
        w.change.declined, w.done = True, True
        if trace.isEnabledFor(logging.DEBUG):
            trace.debug("%s: %d changes not coalesced (%s)", w.change.state_key, len(w.change.earlier) + 1, why)

    def _fail(self, w: _Work, error: DualWriteError) -> None:
        w.change.error = error
        w.done = True

    def _load(self, changes: list[Change]) -> list[_Work]:
        by_partition: dict[int, list[Change]] = defaultdict(list)
        for c in changes:
            by_partition[c.partition].append(c)
        works = []
        for partition, group in by_partition.items():
            states = self.store.get_many(partition, [c.state_key for c in group])
            for c in group:
                state = states.get(c.state_key, merge.EMPTY)
                works.append(_Work(c, state, c.event, Observed(c.source, False), force_read=c.repair))
        return works

    def _read(self, works: list[_Work], side_of: Callable[[_Work], str]) -> dict[int, ChangeEvent | None]:
        """The rows now there, one query per (side, table); by work index (None: no such row)."""
        wanted: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i, w in enumerate(works):
            wanted[(side_of(w), w.m.name)].append(i)
        out: dict[int, ChangeEvent | None] = {}
        for (side, name), idxs in wanted.items():
            m = self.maps[name]
            try:
                found = self.targets[side].read(m, [works[i].key(side) for i in idxs])
            except DualWriteError as exc:
                for i in idxs:
                    self._fail(works[i], exc)
                continue
            for i in idxs:
                company, key = works[i].key(side)
                out[i] = found.get(ident(company, key))
        return out

    def _observed(self, m: TableMap, side: str, row: ChangeEvent | None) -> Observed:
        return Observed(side, False) if row is None else self.observe(m, row)

    def _check_references(self, works: list[_Work]) -> None:
        """A record dualwrite has never synced is created with all its lookups: when one refers to a row the
        target does not have yet, the record waits (MissingReferenceError) before its own row is read."""
        by_side: dict[str, list[tuple[_Work, TargetWrite]]] = defaultdict(list)
        for w in works:
            if w.ev.op is Op.DELETE:
                continue
            mapped = map_event(w.m, w.ev)
            if mapped is not None:
                by_side[w.change.towards].append((w, mapped))
        for side, found in by_side.items():
            check = getattr(self.targets[side], "missing_references", None)
            if check is None:
                continue
            try:
                missing = check([mapped for _, mapped in found])
            except DualWriteError as exc:
                for w, _ in found:
                    self._fail(w, exc)
                continue
            for i, error in missing.items():
                self._fail(found[i][0], error)

    def _resolve_pending(self, works: list[_Work]) -> None:
        """Records whose last plan a crash cut short: what the two sides hold now tells what it did."""
        cut = [w for w in works if w.state.pending is not None]
        if not cut:
            return
        writer = {id(w): w.state.pending.ev.side for w in cut if w.state.pending is not None}
        sources = self._read(cut, lambda w: writer[id(w)])
        targets = self._read(cut, lambda w: merge.other(writer[id(w)]))
        for i, w in enumerate(cut):
            if w.done:
                continue
            side = writer[id(w)]
            resolved = merge.resolve(
                w.state,
                self._observed(w.m, merge.other(side), targets.get(i)),
                self._observed(w.m, side, sources.get(i)),
                carried(w.m, merge.other(side)) - carried(w.m, side),
                carried(w.m, side) - carried(w.m, merge.other(side)),
            )
            log.info("resolved the cut-short plan of %s after a restart", w.change.state_key)
            if trace.isEnabledFor(logging.DEBUG):
                trace.debug("%s resolved %s -> %s", w.change.state_key, w.state.to_json(), resolved.to_json())
            w.state = resolved
        # Recorded at once: a later restart must not resolve the same plan again against what the sides
        # hold by then (the change that came back may need nothing, and then nothing else is recorded).
        done = [w for w in cut if not w.done]
        if not done:
            return
        try:
            self.store.put((w.change.partition, w.change.state_key, w.state) for w in done)
        except RetryableError as exc:
            for w in done:
                self._fail(w, exc)

    def _read_sources(self, works: list[_Work]) -> None:
        """A change older than what dualwrite wrote to its side since: plan from the side's row as it is."""
        todo = [w for w in works if not w.done and w.plan.needs_source]
        for w in todo:
            if w.coalesced:
                self._decline(w, "older than the source row")
        todo = [w for w in todo if not w.done]
        rows = self._read(todo, lambda w: w.change.source)
        for i, w in enumerate(todo):
            if w.done:
                continue
            row = rows.get(i)
            if row is None:  # gone since: its delete event is on the way
                w.plan = replace(merge.NOTHING, stale=True)
                continue
            w.ev, w.obs, w.source_read = row, self.observe(w.m, row), True
            self.plan(w)

    def _read_targets(self, works: list[_Work]) -> None:
        todo = [w for w in works if not w.done and (w.plan.needs_target or w.force_read)]
        self._check_references([w for w in todo if w.first_sight])
        todo = [w for w in todo if not w.done]
        rows = self._read(todo, lambda w: w.change.towards)
        for i, w in enumerate(todo):
            if w.done:
                continue
            w.target_ev = rows.get(i)
            w.target = self._observed(w.m, w.change.towards, w.target_ev)
            w.force_read = False
            self.plan(w)
            if w.plan.needs_source:
                self._read_sources([w])

    # -- writes -------------------------------------------------------------------------------------------
    def _record(self, works: list[_Work]) -> None:
        """The plans about to be carried out, recorded first: a crash between write and settle is resolved."""
        marks = {}
        for w in works:
            made_on = w.change.towards if w.plan.target == "create" else w.change.source
            if w.plan.create_id and made_on == "dataverse":
                company, key = w.key("dataverse")
                marks[index_mark(w.m.dataverse.entity_set, w.plan.create_id)] = record_key(company, list(key.values()))
        if marks and self.index is not None:
            self.index(marks)
        self.store.put(
            (w.change.partition, w.change.state_key, merge.begin(w.state, w.obs, w.target, w.plan)) for w in works
        )

    def _write_targets(self, works: list[_Work]) -> bool:
        """One write round; True when some record met a conflict and must be read and planned again."""
        for w in works:
            if w.coalesced and not w.done and not merge.coalesced_ok(w.plan):
                self._decline(w, "the plan is no plain update")
        todo = [w for w in works if not w.done and w.plan.target != "none" and w.t_ack is None]
        todo = [w for w in todo if not (w.plan.needs_target or w.plan.needs_source)]
        if not todo:
            return False
        writes: dict[int, Write] = {}
        for i, w in enumerate(todo):
            try:
                writes[i] = self._target_write(w)
            except DualWriteError as exc:
                self._fail(w, exc)
        ready = [i for i in writes if not todo[i].done]
        if not ready:
            return False
        try:
            self._record([todo[i] for i in ready])
        except RetryableError as exc:
            for i in ready:
                self._fail(todo[i], exc)
            return False
        again = False
        refused: list[_Work] = []  # answered with an error: the recorded plan did not happen
        by_side: dict[str, list[int]] = defaultdict(list)
        for i in ready:
            by_side[todo[i].change.towards].append(i)
        for side, idxs in by_side.items():
            results = self.targets[side].write([writes[i] for i in idxs])
            for i, result in zip(idxs, results, strict=True):
                w = todo[i]
                if result.outcome is Outcome.DONE:
                    w.t_ack, w.wrote = result.ack or Ack(), True
                elif result.outcome is Outcome.CONFLICT and w.coalesced:
                    # The target changed meanwhile: its conflict is decided per change, with each one's time.
                    self._decline(w, "412")
                    refused.append(w)
                elif result.outcome is Outcome.CONFLICT:
                    w.conflicts_left -= 1
                    if w.conflicts_left <= 0:
                        self._fail(w, RetryableError(f"{w.change.state_key}: the target keeps changing (412)"))
                        refused.append(w)
                    else:
                        w.force_read, again = True, True
                else:
                    self._fail(w, result.error or RetryableError("write failed"))
                    if result.answered:
                        refused.append(w)
        if refused:  # no crash to resolve for these: a retry plans afresh, without reading both rows first
            try:
                self.store.put((w.change.partition, w.change.state_key, w.state) for w in refused)
            except RetryableError:
                log.warning("could not clear %d refused plan(s); they are resolved when retried", len(refused))
        return again

    def _target_write(self, w: _Work) -> Write:
        m, p = w.m, w.plan
        b = w.change.towards
        sb = w.state.side(b)
        row_id = (w.target.row_id if w.target is not None else None) or sb.row_id
        if p.target == "delete":
            change = TargetWrite(m.name, w.ev.origin.side.other, "delete", w.ev.company, dict(w.key(b)[1]))
            return Write(m, "delete", change, p.if_match, row_id)
        mapped = w.change.target_write() if w.ev is w.change.event else map_event(m, w.ev)
        if mapped is None:
            raise MissingReferenceError(f"{w.change.state_key}: the source row no longer passes the map's filter")
        if p.target == "create":
            return Write(m, "create", mapped, p.if_match, p.create_id)
        return Write(m, "update", _only(m, mapped, p.fields, b), p.if_match, row_id)

    def _write_back(self, works: list[_Work]) -> None:
        """A conflict the target won: its values go to the source side too (the target may have no event left)."""
        todo = [w for w in works if not w.done and w.plan.back != "none" and (w.plan.target == "none" or w.t_ack)]
        if not todo:
            return
        self._delete_back([w for w in todo if w.plan.back == "delete"])
        todo = [w for w in todo if w.plan.back != "delete"]
        missing = [w for w in todo if w.plan.back == "update" and w.plan.back_if_match is None]
        if missing:  # the source's change came without an ETag (F&O data events): read the row's
            rows = self._read(missing, lambda w: w.change.source)
            for i, w in enumerate(missing):
                row = rows.get(i)
                now = None if row is None else self.observe(w.m, row)
                if now is None or now.version != w.obs.version or now.etag is None:
                    w.plan = replace(w.plan, back_refused=True)  # changed again: its next event decides
                else:
                    w.plan = replace(w.plan, back_if_match=now.etag)
        todo = [w for w in todo if not w.done and not w.plan.back_refused and w.target_ev is not None]
        unrecorded = [w for w in todo if w.plan.back == "create" and w.plan.target == "none"]
        if unrecorded:  # (a plan with a target write was recorded before it)
            try:
                self._record(unrecorded)
            except RetryableError as exc:
                for w in unrecorded:
                    self._fail(w, exc)
                todo = [w for w in todo if not w.done]
        writes: list[tuple[_Work, Write]] = []
        for w in todo:
            assert w.target_ev is not None
            mapped = map_event(w.m, w.target_ev)
            if mapped is None:
                w.plan = replace(w.plan, back_refused=True)
                continue
            a = w.change.source
            change = mapped if w.plan.back == "create" else _only(w.m, mapped, w.plan.back_fields, a)
            row_id = w.state.side(a).row_id or w.obs.row_id
            if w.plan.back == "create":
                writes.append((w, Write(w.m, "create", change, row_id=w.plan.create_id)))
            else:
                writes.append((w, Write(w.m, "update", change, w.plan.back_if_match, row_id)))
        by_side: dict[str, list[tuple[_Work, Write]]] = defaultdict(list)
        for w, wr in writes:
            by_side[w.change.source].append((w, wr))
        self._write_source(by_side)

    def _delete_back(self, works: list[_Work]) -> None:
        """The row dualwrite made again on the source side after a person deleted the one it had made (a
        create a crash cut short, `merge.plan`): deleted too, with its ETag, or, when the state has none (a
        row made by CreateMultiple), when a read shows it as dualwrite made it."""
        missing = [w for w in works if not w.done and w.plan.back_if_match is None]
        rows = self._read(missing, lambda w: w.change.source)
        for i, w in enumerate(missing):
            if w.done:
                continue
            row = rows.get(i)
            now = self._observed(w.m, w.change.source, row)
            if not now.exists:
                w.b_ack = Ack()  # gone already
            elif merge.unchanged_since_written(w.state, now) and now.etag:
                w.plan = replace(w.plan, back_if_match=now.etag)
            else:
                w.plan = replace(w.plan, back_refused=True)  # changed since: that change is later than the delete
        todo = [w for w in works if not w.done and not w.plan.back_refused and w.b_ack is None]
        by_side: dict[str, list[tuple[_Work, Write]]] = defaultdict(list)
        for w in todo:
            a = w.change.source
            change = TargetWrite(w.m.name, w.ev.origin.side, "delete", w.ev.company, dict(w.key(a)[1]))
            by_side[a].append((w, Write(w.m, "delete", change, w.plan.back_if_match, w.state.side(a).row_id)))
        self._write_source(by_side)

    def _write_source(self, by_side: dict[str, list[tuple[_Work, Write]]]) -> None:
        """Writes back to the source side; a refused one (412/404) is left for the source's next change."""
        for side, group in by_side.items():
            results = self.targets[side].write([wr for _, wr in group])
            for (w, _), result in zip(group, results, strict=True):
                if result.outcome is Outcome.DONE:
                    w.b_ack, w.wrote = result.ack or Ack(), True
                elif result.outcome is Outcome.CONFLICT:
                    w.plan = replace(w.plan, back_refused=True)
                else:
                    self._fail(w, result.error or RetryableError("write back failed"))

    def _settle(self, works: list[_Work]) -> None:
        settled: list[tuple[int, str, RecordState]] = []
        for w in works:
            if w.done or w.plan.needs_target or w.plan.needs_source:
                if not w.done:
                    self._fail(w, RetryableError(f"{w.change.state_key}: could not read what the plan needs"))
                continue
            if w.plan.target != "none" and w.t_ack is None:
                continue
            new = merge.settle(w.state, w.obs, w.target, w.plan, w.t_ack, w.b_ack)
            if trace.isEnabledFor(logging.DEBUG):
                trace.debug(
                    "%s p%d from %s v%s %s | target %s | plan %s %s back %s %s stale=%s conflicts=%s | "
                    "acks %s %s | state %s",
                    w.change.state_key,
                    w.change.partition,
                    w.change.source,
                    w.obs.version,
                    dict(w.obs.values),
                    None if w.target is None else (w.target.exists, w.target.version, dict(w.target.values)),
                    w.plan.target,
                    sorted(w.plan.fields),
                    w.plan.back,
                    sorted(w.plan.back_fields),
                    w.plan.stale,
                    sorted(w.plan.conflicts),
                    w.t_ack,
                    w.b_ack,
                    new.to_json(),
                )
            if new != w.state:  # (the echo of dualwrite's own write changes nothing: no changelog record)
                settled.append((w.change.partition, w.change.state_key, new))
            w.change.conflict = bool(w.plan.conflicts)
            w.change.outcome = "stale" if w.plan.stale else "applied" if w.wrote else "skipped_equal"
        try:
            self.store.put(settled)
        except RetryableError as exc:
            for w in works:
                if w.change.outcome is not None:
                    w.change.outcome = None
                    self._fail(w, exc)


def _only(m: TableMap, change: TargetWrite, names: frozenset[str], towards: str) -> TargetWrite:
    """The mapped change reduced to the field pairs `names` (an update writes only what changed)."""
    fm = pairs(m)
    columns = {(fm[n].dataverse if towards == "dataverse" else fm[n].fo) for n in names if n in fm}
    return replace(
        change,
        values={k: v for k, v in change.values.items() if k in columns},
        lookups={k: v for k, v in change.lookups.items() if k in columns},
        defaults={},
    )


__all__ = ["Applier", "Change", "Ident", "state_key"]
