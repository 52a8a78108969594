"""A model of the sync protocol, run over every interleaving hypothesis finds.

Two in-memory sides hold one record. People create, edit and delete it on either side; F&O raises
one data event per write (dualwrite's own are dropped, as the producer does), Dataverse change
tracking is polled and gives the latest state only (dualwrite's own writes included). The
processor takes events from either topic in any order, plans with `dualwrite.merge.plan`, writes
with If-Match (a 412 or 404 makes it read and plan again), writes back a target's winning values,
and records `dualwrite.merge.settle`. It may crash between its steps (losing what it had not
committed), and old events may be replayed. After the queues drain, both sides must be equal, no
edit may be lost that no later edit had seen, and the writes must stop.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dualwrite.merge import (
    DATAVERSE,
    EMPTY,
    FO,
    NOTHING,
    Ack,
    Observed,
    Plan,
    Policy,
    RecordState,
    begin,
    coalesce,
    coalesced_ok,
    digest,
    other,
    plan,
    resolve,
    settle,
    unchanged_since_written,
)

TWO_WAY = ("x", "y")
ONE_WAY = ("z",)  # F&O -> Dataverse only
CARRIED = {DATAVERSE: frozenset(TWO_WAY + ONE_WAY), FO: frozenset(TWO_WAY)}  # towards each side
VALUES = st.sampled_from(["a", "b", "c", None])
_ids = itertools.count(1)


@dataclass
class Cell:
    value: Any
    edit: int  # the edit that produced this value


@dataclass
class Row:
    cells: dict[str, Cell]
    version: int
    row_id: str
    time: int


@dataclass
class Side:
    name: str
    row: Row | None = None
    version: int = 0
    exists_edit: int = 0

    def bump(self) -> int:
        self.version += 1
        return self.version


@dataclass
class Event:
    side: str
    exists: bool
    values: dict[str, Cell]  # the value, and (for the oracle only) the edit that produced it
    version: int | None
    etag: str | None
    row_id: str | None
    time: int | None
    exists_edit: int = 0  # (for the oracle only) the edit that made the row exist or not, as this event saw it


class Conflict(Exception):
    """The target refused a write (412, or 404 on an update)."""


@dataclass
class Edits:
    """Causality: each edit knows the edits it saw (the value it replaced, and what that one saw)."""

    seen: dict[int, set[int]] = field(default_factory=dict)
    by_field: dict[str, set[int]] = field(default_factory=dict)
    values: dict[int, Any] = field(default_factory=dict)

    def new(self, name: str, replaced: int | None, value: Any = None) -> int:
        e = next(_ids)
        self.seen[e] = ({replaced} | self.seen.get(replaced, set())) if replaced else set()
        self.by_field.setdefault(name, set()).add(e)
        self.values[e] = value
        return e

    def latest_values(self, name: str) -> list[Any]:
        """The values of the edits of a field that no other edit had seen (one of them must win)."""
        edits = self.by_field.get(name, set())
        return [self.values[e] for e in edits if not any(e in self.seen[o] for o in edits)]


class Protocol(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sides = {FO: Side(FO), DATAVERSE: Side(DATAVERSE)}
        self.topics: dict[str, list[Event]] = {FO: [], DATAVERSE: []}
        self.committed = {FO: 0, DATAVERSE: 0}  # next offset to process, per topic
        self.state: RecordState = EMPTY
        self.polled: tuple[int, bool] = (0, False)  # Dataverse version and existence the last poll saw
        self.clock = 0
        self.edits = Edits()
        self.writes = 0
        self.policy = Policy()
        self.last_id: dict[str, str] = {}  # the id of each side's last deleted row
        # Dataverse rows deleted since the last poll, with the person's delete edit (None: dualwrite's delete)
        self.deleted_ids: list[tuple[str, int | None]] = []
        self.deleted_at = 0
        self.deleted_once = False
        self.bulk_creates = True  # Dataverse creates go by CreateMultiple: the answer has no version

    # -- the two systems ----------------------------------------------------------------------------
    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def observe(self, side: str) -> Observed:
        row = self.sides[side].row
        if row is None:
            return Observed(side, False)
        values = {n: digest(c.value) for n, c in row.cells.items() if n in CARRIED[other(side)] or side == DATAVERSE}
        return Observed(side, True, values, row.version, f'W/"{row.version}"', _read_id(row), _time(row.time))

    def emit(self, side: str) -> None:
        """F&O raises a data event for each write by a person."""
        s = self.sides[side]
        row = s.row
        if row is None:  # F&O's delete event has the pre-image's version; Dataverse's delta only the id
            version = self.deleted_at if side == FO else None
            self.topics[side].append(Event(side, False, {}, version, None, self.last_id.get(side), None, s.exists_edit))
        else:
            values = {n: Cell(c.value, c.edit) for n, c in row.cells.items()}
            etag = f'W/"{row.version}"' if side == DATAVERSE else None  # F&O events carry no ETag
            self.topics[side].append(Event(side, True, values, row.version, etag, row.row_id, row.time, s.exists_edit))

    def person_writes(self, side: str, changes: dict[str, Any] | None, create: bool = False) -> None:
        s = self.sides[side]
        fields = TWO_WAY + (ONE_WAY if side == FO else ())
        if changes is None:  # delete
            assert s.row is not None
            self.deleted_once = True
            self.last_id[side], self.deleted_at = s.row.row_id, s.row.version
            s.exists_edit = self.edits.new("exists", s.exists_edit, False)
            if side == DATAVERSE:
                self.deleted_ids.append((s.row.row_id, s.exists_edit))
            s.row = None
            s.bump()
        elif create:
            assert s.row is None
            s.exists_edit = self.edits.new("exists", s.exists_edit, True)
            cells = {n: Cell(changes.get(n), self.edits.new(n, None, changes.get(n))) for n in fields}
            cells.update({n: Cell(None, 0) for n in ONE_WAY if n not in cells})
            s.row = Row(cells, s.bump(), f"{side}-{next(_ids)}", self.tick())
        else:
            assert s.row is not None
            for n, v in changes.items():
                s.row.cells[n] = Cell(v, self.edits.new(n, s.row.cells[n].edit, v))
            s.exists_edit = self.edits.new("exists", s.exists_edit, True)  # an edit wants the row to exist
            s.row.version, s.row.time = s.bump(), self.tick()
        if side == FO:
            self.emit(FO)

    def dualwrite_writes(
        self, side: str, action: str, cells: dict[str, Cell], if_match: str | None, row_id: str | None = None
    ) -> Ack:
        """A write by dualwrite, with the target's preconditions (`row_id`: a create's id, where the side takes it)."""
        ack = self._write(side, action, cells, if_match, row_id)
        if side == FO:
            self.emit(FO)  # F&O raises a data event for dualwrite's own write too; the producer passes it on
        return ack

    def _write(
        self, side: str, action: str, cells: dict[str, Cell], if_match: str | None, row_id: str | None = None
    ) -> Ack:
        s = self.sides[side]
        self.writes += 1
        if action == "create":
            if s.row is not None:
                raise Conflict("412: exists")
            full = {n: cells.get(n, Cell(None, 0)) for n in TWO_WAY + ONE_WAY}
            assert row_id is None or side == DATAVERSE, "F&O chooses its own row ids"
            s.row = Row(full, s.bump(), row_id or f"{side}-{next(_ids)}", self.tick())
            if side == DATAVERSE and self.bulk_creates:
                return Ack(None, None, s.row.row_id)  # CreateMultiple answers the new ids only
        else:
            if s.row is None:
                raise Conflict("404")
            assert if_match, "dualwrite never writes without If-Match"
            if if_match != f'W/"{s.row.version}"':
                raise Conflict("412")
            if action == "delete":
                self.last_id[side], self.deleted_at = s.row.row_id, s.row.version
                if side == DATAVERSE:
                    self.deleted_ids.append((s.row.row_id, None))
                s.row = None
                s.bump()
                return Ack(s.version)
            s.row.cells.update(cells)
            s.row.version, s.row.time = s.bump(), self.tick()
        return Ack(s.row.version, f'W/"{s.row.version}"', _read_id(s.row))

    # -- the processor ------------------------------------------------------------------------------------
    def resolve_pending(self) -> None:
        """A crash cut the last plan short: what the two sides hold now tells what it did."""
        if self.state.pending is not None:
            w = self.state.pending.ev.side
            self.state = resolve(
                self.state,
                self.observe(other(w)),
                self.observe(w),
                CARRIED[other(w)] - CARRIED[w],
                CARRIED[w] - CARRIED[other(w)],
            )

    def process(self, ev: Event, crash: str | None = None) -> None:
        a, b = ev.side, other(ev.side)
        obs = self.observed_event(ev)
        self.resolve_pending()
        state = self.state
        target: Observed | None = None
        current = False  # obs is the source's row as read now, not the event
        p = plan(state, obs, None, CARRIED[b], CARRIED[a], self.policy, current=current)
        for _ in range(20):
            if p.needs_source:  # the event is older than the source now: plan from the source's current row
                ev = self.current_event(a)
                obs, current = self.observed_event(ev), True
                p = plan(state, obs, target, CARRIED[b], CARRIED[a], self.policy, current=current)
                continue
            if p.needs_target:
                target = self.observe(b)
                p = plan(state, obs, target, CARRIED[b], CARRIED[a], self.policy, current=current)
                assert not p.needs_target
            p = _with_create_id(p, a)
            self.state = begin(state, obs, target, p)  # recorded before the writes
            try:
                t_ack = self.carry_out_target(ev, p)
            except Conflict:
                target = self.observe(b)
                p = plan(state, obs, target, CARRIED[b], CARRIED[a], self.policy, current=current)
                continue
            b_ack = self.carry_out_back(ev, p, state)
            if p.back != "none" and b_ack is None:  # refused: recorded, so a crash now does not guess
                p = replace(p, back_refused=True)
                self.state = begin(state, obs, target, p)
            if crash == "after-write":
                return  # the settled state is lost with the crash; the event comes again
            self.state = settle(state, obs, target, p, t_ack, b_ack)
            return
        raise AssertionError("a write kept being refused")

    def process_run(self, evs: list[Event], crash: str | None = None) -> int:
        """Several events of one side at once, as the consumer applies a record's changes of one batch: the
        newest stands for all when `coalesce` and `coalesced_ok` allow and its If-Match write lands; else
        the first alone. How many of `evs` were applied (0: a crash)."""
        a, b = evs[0].side, other(evs[0].side)
        self.resolve_pending()
        state = self.state
        merged = coalesce(state, [self.observed_event(e) for e in evs], CARRIED[b])
        target: Observed | None = None
        p = NOTHING
        if merged is not None:
            p = plan(state, merged, None, CARRIED[b], CARRIED[a], self.policy)
            if p.needs_target:
                target = self.observe(b)
                p = plan(state, merged, target, CARRIED[b], CARRIED[a], self.policy)
        if merged is not None and coalesced_ok(p):
            self.state = begin(state, merged, target, p)
            try:
                t_ack = self.carry_out_target(evs[-1], p)
            except Conflict:  # the target changed meanwhile: one change at a time; the 412 says nothing was written
                self.state = state
            else:
                if crash == "after-write":
                    return 0
                self.state = settle(state, merged, target, p, t_ack, None)
                return len(evs)
        self.process(evs[0], crash)
        return 0 if crash else 1

    def observed_event(self, ev: Event) -> Observed:
        values = {n: digest(c.value) for n, c in ev.values.items()}
        return Observed(ev.side, ev.exists, values, ev.version, ev.etag, ev.row_id, _time(ev.time))

    def current_event(self, side: str) -> Event:
        """The side's row as a read shows it, in the shape of an event."""
        row = self.sides[side].row
        if row is None:
            return Event(side, False, {}, None, None, None, None, self.sides[side].exists_edit)
        values = {n: Cell(c.value, c.edit) for n, c in row.cells.items()}
        return Event(
            side, True, values, row.version, f'W/"{row.version}"', _read_id(row), row.time, self.sides[side].exists_edit
        )

    def carry_out_target(self, ev: Event, p: Plan) -> Ack | None:
        b = other(ev.side)
        if p.target == "none":
            return None
        if p.target == "delete":
            ack = self.dualwrite_writes(b, "delete", {}, p.if_match)
            self.sides[b].exists_edit = ev.exists_edit
            return ack
        cells = {n: ev.values[n] for n in p.fields}
        ack = self.dualwrite_writes(b, p.target, cells, p.if_match, p.create_id if p.target == "create" else None)
        if p.target == "create":
            self.sides[b].exists_edit = ev.exists_edit
        return ack

    def carry_out_back(self, ev: Event, p: Plan, state: RecordState) -> Ack | None:
        a, b = ev.side, other(ev.side)
        if p.back == "none":
            return None
        if p.back == "delete":  # the row dualwrite made again after a person deleted the one it had made
            if_match = p.back_if_match
            if if_match is None:  # made by CreateMultiple, no version known: read it
                source = self.observe(a)
                if not source.exists:
                    return Ack()
                if not unchanged_since_written(state, source):
                    return None
                if_match = source.etag
            try:
                ack = self.dualwrite_writes(a, "delete", {}, if_match)
            except Conflict:
                return None
            self.sides[a].exists_edit = ev.exists_edit
            return ack
        row = self.sides[b].row
        assert row is not None
        cells = {n: Cell(row.cells[n].value, row.cells[n].edit) for n in p.back_fields}
        if_match = p.back_if_match
        row_id = p.create_id if p.back == "create" else None
        if p.back == "update" and if_match is None:  # the source's event had no ETag: read it
            source = self.observe(a)
            if not source.exists or source.version != ev.version:
                return None  # the source changed again: its next event decides anew
            if_match = source.etag
        try:
            ack = self.dualwrite_writes(a, p.back, cells, if_match, row_id)
        except Conflict:
            return None
        if p.back == "create":
            self.sides[a].exists_edit = self.sides[b].exists_edit
        return ack

    def poll_dataverse(self) -> None:
        """Change tracking: each row deleted since the last poll (its id), and the latest state of the
        row there is now, once per change (dualwrite's own writes included)."""
        s = self.sides[DATAVERSE]
        seen = (s.version, s.row is not None)
        if seen == self.polled:
            return
        self.polled = seen
        for row_id, edit in self.deleted_ids:
            made = s.exists_edit if edit is None else edit
            self.topics[DATAVERSE].append(Event(DATAVERSE, False, {}, None, None, row_id, None, made))
        self.deleted_ids = []
        if s.row is not None:
            self.emit(DATAVERSE)

    def pending(self, side: str) -> int:
        return len(self.topics[side]) - self.committed[side]

    # -- rules ----------------------------------------------------------------------------------------------
    @rule(side=st.sampled_from([FO, DATAVERSE]), name=st.sampled_from(TWO_WAY + ONE_WAY), value=VALUES)
    def edit(self, side: str, name: str, value: Any) -> None:
        row = self.sides[side].row
        if row is None or (side == DATAVERSE and name in ONE_WAY) or row.cells[name].value == value:
            return  # (writing the value a field already holds is no edit: no one can tell it happened)
        self.person_writes(side, {name: value})

    @rule(side=st.sampled_from([FO, DATAVERSE]), x=VALUES, y=VALUES)
    def create(self, side: str, x: Any, y: Any) -> None:
        if self.sides[side].row is None:
            self.person_writes(side, {"x": x, "y": y}, create=True)

    @rule(side=st.sampled_from([FO, DATAVERSE]))
    def delete(self, side: str) -> None:
        if self.sides[side].row is not None:
            self.person_writes(side, None)

    @rule()
    def poll(self) -> None:
        self.poll_dataverse()

    @precondition(lambda self: self.pending(FO) or self.pending(DATAVERSE))
    @rule(side=st.sampled_from([FO, DATAVERSE]), crash=st.sampled_from([None, "after-write", "after-state"]))
    def deliver(self, side: str, crash: str | None) -> None:
        """The processor applies the next event of a topic; a crash before the commit brings it again."""
        if not self.pending(side):
            side = other(side)
        ev = self.topics[side][self.committed[side]]
        self.process(ev, crash)
        if crash is None:
            self.committed[side] += 1

    @precondition(lambda self: self.pending(FO) > 1 or self.pending(DATAVERSE) > 1)
    @rule(
        side=st.sampled_from([FO, DATAVERSE]),
        n=st.integers(min_value=2, max_value=4),
        crash=st.sampled_from([None, None, "after-write"]),
    )
    def deliver_run(self, side: str, n: int, crash: str | None) -> None:
        """The processor applies the next events of a topic together (a record's changes in one batch)."""
        if self.pending(side) < 2:
            side = other(side)
        start = self.committed[side]
        evs = self.topics[side][start : start + min(n, self.pending(side))]
        self.committed[side] += self.process_run(evs, crash)

    @precondition(lambda self: self.committed[FO] or self.committed[DATAVERSE])
    @rule(side=st.sampled_from([FO, DATAVERSE]), back=st.integers(min_value=1, max_value=5))
    def replay(self, side: str, back: int) -> None:
        """An old event comes again (a DLQ replay, a re-delivery, a late initial-sync page)."""
        done = self.committed[side]
        if done:
            self.topics[side].append(self.topics[side][max(0, done - back)])

    @rule(policy=st.sampled_from([None, FO, DATAVERSE]))
    def set_policy(self, policy: str | None) -> None:
        self.policy = Policy(policy)

    # -- the oracle -----------------------------------------------------------------------------------------
    def drain(self) -> None:
        for _ in range(60):
            self.poll_dataverse()
            if not (self.pending(FO) or self.pending(DATAVERSE)):
                return
            for side in (FO, DATAVERSE):
                while self.pending(side):
                    self.process(self.topics[side][self.committed[side]])
                    self.committed[side] += 1
        raise AssertionError("the writes did not stop: the two sides keep answering each other")

    @invariant()
    def converges_after_draining(self) -> None:
        snapshot = _snapshot(self)
        self.drain()
        fo, dv = self.sides[FO].row, self.sides[DATAVERSE].row
        assert (fo is None) == (dv is None), f"one side has the row, the other not: {fo} / {dv}"
        wanted = self.edits.latest_values("exists")  # the creates, deletes and edits no later one had seen
        assert not wanted or (fo is not None) in wanted, (
            f"the row {'exists' if fo else 'is gone'}; people wanted {wanted}"
        )
        if fo is not None and dv is not None:
            for n in TWO_WAY + ONE_WAY:
                assert fo.cells[n].value == dv.cells[n].value, f"{n}: F&O {fo.cells[n]} vs Dataverse {dv.cells[n]}"
            for n in TWO_WAY if not self.deleted_once else ():  # a delete discards edits
                latest = self.edits.latest_values(n)
                assert not latest or fo.cells[n].value in latest, (
                    f"{n}: both sides hold {fo.cells[n].value!r}, but the latest edits of it wrote {latest}"
                )
        writes = self.writes
        self.drain()  # quiet: nothing more to do
        assert self.writes == writes, "a second drain wrote again"
        _restore(self, snapshot)


def _with_create_id(p: Plan, source: str) -> Plan:
    """The plan with the id its create gives the new row, where the side takes the client's ids (Dataverse)."""
    if (p.target == "create" and other(source) == DATAVERSE) or (p.back == "create" and source == DATAVERSE):
        return replace(p, create_id=f"{DATAVERSE}-{next(_ids)}")
    return p


def _read_id(row: Row) -> str | None:
    """The row id a read (or a write's answer) shows: F&O's OData rows have none (only its data events name the
    row), so a read cannot tell a row from one made anew under the same key."""
    return None if row.row_id.startswith(f"{FO}-") else row.row_id


def _time(t: int | None) -> Any:
    from datetime import UTC, datetime, timedelta

    return None if t is None else datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=t)


_MODEL = (
    "sides",
    "topics",
    "committed",
    "state",
    "polled",
    "clock",
    "edits",
    "writes",
    "policy",
    "last_id",
    "deleted_at",
    "deleted_ids",
    "deleted_once",
    "bulk_creates",
)


def _snapshot(m: Protocol) -> Any:
    import copy

    return copy.deepcopy({k: getattr(m, k) for k in _MODEL})


def _restore(m: Protocol, snap: Any) -> None:
    for k, v in snap.items():
        setattr(m, k, v)


TestProtocol = Protocol.TestCase
# CI runs the same 400 examples every time; `DUALWRITE_MODEL_EXAMPLES=20000 pytest --timeout 0
# tests/unit/test_merge_model.py` searches afresh (random) and is the run to make after a rule change.
_LONG = os.environ.get("DUALWRITE_MODEL_EXAMPLES")
TestProtocol.settings = settings(
    max_examples=int(_LONG or "400"),
    derandomize=not _LONG,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
