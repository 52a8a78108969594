"""Conflicts decided by what each side had seen, not by the clock. Pure: no I/O.

Per record, dualwrite keeps a `RecordState`: for each side whether the row exists, the newest
version of it dualwrite knows (and its ETag, for `If-Match`), and for each mapped field the value
both sides last agreed on (a digest) with the version of each side at which it held. A change
observed on one side (`Observed`) is compared field by field with that state:

- a field whose observed version is not newer than the version the state has for that side is
  *stale* (a replay, a late page, a re-delivery, the echo of dualwrite's own write): ignored;
- a field whose value equals the agreed value did not change;
- any other field the source changed, and is written to the target, unless the target changed
  the same field to a different value since the agreed state: only then the map's policy decides
  (a true conflict). Different fields changed on the two sides both survive.

Writes carry the target's known ETag, so no read is needed while nothing else changed; a 412 (or
an unknown target) makes the caller read the target and plan again with what it found.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

FO, DATAVERSE = "fo", "dataverse"
SIDES = (FO, DATAVERSE)
ABSENT = "~absent"  # the digest of every field of a row that does not exist
NO_VERSION = -1
# `SideState.written` of a row dualwrite created with an answer that gave no version (CreateMultiple answers
# ids only): the side's `version` is then of an earlier row, so it cannot order another row's events.
CREATED_UNVERSIONED = -2
# `SideState.ghost` when the row a cut-short create may have made cannot be named (F&O chooses its own ids):
# a delete of a row made after `ghost_floor` that dualwrite did not know is then taken for that row's delete.
ANY_ROW = "*"


def other(side: str) -> str:
    return DATAVERSE if side == FO else FO


def digest(value: Any) -> str:
    """A short, stable digest of a canonical field value (equal values, equal digests)."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


# -- state ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FieldState:
    """The value both sides agreed on, and the version of each side at which it held."""

    value: str
    fo: int = NO_VERSION
    dataverse: int = NO_VERSION

    def version(self, side: str) -> int:
        return self.fo if side == FO else self.dataverse


@dataclass(frozen=True)
class SideState:
    """What dualwrite knows of one side's row: None for `exists` means nothing is known yet."""

    exists: bool | None = None
    version: int = NO_VERSION
    etag: str | None = None
    row_id: str | None = None
    written: int = NO_VERSION  # the version dualwrite's own last write gave the row
    # A row dualwrite may have made here with a create a crash cut short, not found after it (a person may
    # have deleted it before the restart): its id (ANY_ROW when the side chose it) and the side's version
    # before it. Its delete event, when it comes, is a person's delete of the record (see `plan`).
    ghost: str | None = None
    ghost_floor: int = NO_VERSION
    ghost_of: int = NO_VERSION  # the other side's version the row was made of


@dataclass(frozen=True)
class RecordState:
    fo: SideState = SideState()
    dataverse: SideState = SideState()
    fields: Mapping[str, FieldState] = field(default_factory=dict)
    # Writes about to be made (recorded before them): after a crash, `resolve` finds out what happened.
    pending: Pending | None = None

    def side(self, side: str) -> SideState:
        return self.fo if side == FO else self.dataverse

    def with_side(self, side: str, s: SideState) -> RecordState:
        return replace(self, fo=s) if side == FO else replace(self, dataverse=s)

    def to_json(self) -> dict[str, Any]:
        def side(s: SideState) -> list[Any]:
            out = [s.exists, s.version, s.etag, s.row_id, s.written]
            return out if s.ghost is None else [*out, s.ghost, s.ghost_floor, s.ghost_of]

        out: dict[str, Any] = {
            "fo": side(self.fo),
            "dv": side(self.dataverse),
            "f": {k: [v.value, v.fo, v.dataverse] for k, v in sorted(self.fields.items())},
        }
        if self.pending is not None:
            out["p"] = self.pending.to_json()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RecordState:
        def side(v: list[Any]) -> SideState:
            ghost = (v[5], int(v[6]), int(v[7])) if len(v) > 7 else (None, NO_VERSION, NO_VERSION)
            return SideState(v[0], int(v[1]), v[2], v[3], int(v[4]), *ghost)

        return cls(
            side(data["fo"]),
            side(data["dv"]),
            {k: FieldState(v[0], int(v[1]), int(v[2])) for k, v in data.get("f", {}).items()},
            Pending.from_json(data["p"]) if data.get("p") else None,
        )


# -- what was seen -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Observed:
    """One side's row as a change event or a read showed it. `values` are digests per field pair
    (only the pairs this side carries); `version` None means it cannot be ordered (never stale)."""

    side: str
    exists: bool
    values: Mapping[str, str] = field(default_factory=dict)
    version: int | None = None
    etag: str | None = None
    row_id: str | None = None
    time: datetime | None = None


@dataclass(frozen=True)
class Ack:
    """A target's answer to a write: the row's new version, ETag and id (None when it did not say)."""

    version: int | None = None
    etag: str | None = None
    row_id: str | None = None


@dataclass(frozen=True)
class Policy:
    """What decides a true conflict: `source-of-truth` names a side, else the later change wins."""

    source_of_truth: str | None = None

    def winner(self, a: Observed, b: Observed) -> str:
        if self.source_of_truth in SIDES:
            return self.source_of_truth  # type: ignore[return-value]
        if a.time is not None and b.time is not None and a.time != b.time:
            return a.side if a.time > b.time else b.side
        return FO  # a tie (or an unknown time) is decided the same way on every replay


# -- the plan ------------------------------------------------------------------------------------------------
Action = Literal["none", "update", "create", "delete"]


@dataclass(frozen=True)
class Plan:
    """What to do for one observed change. `target` acts on the other side with the source's values
    of `fields`; `back` writes the target's winning values of `back_fields` to the source side."""

    target: Action = "none"
    fields: frozenset[str] = frozenset()
    if_match: str | None = None
    back: Action = "none"
    back_fields: frozenset[str] = frozenset()
    back_if_match: str | None = None
    needs_target: bool = False  # plan again with the target's current row
    needs_source: bool = False  # plan again with the source's current row as the change (it is newer)
    back_refused: bool = False  # the back write was refused (the source changed again): not made
    stale: bool = False  # nothing of the change is newer than what dualwrite already knows
    conflicts: frozenset[str] = frozenset()
    agreed: frozenset[str] = frozenset()  # both sides already hold the same new value
    changed: frozenset[str] = frozenset()  # fields the source changed since the agreed state
    # The id the caller gives the row a create makes (`target` or `back` "create"), on a side that takes
    # the client's id (Dataverse): recorded with the plan, it names the row if a crash cuts the create short.
    create_id: str | None = None


NOTHING = Plan()
NEEDS_TARGET = Plan(needs_target=True)
NEEDS_SOURCE = Plan(needs_source=True)


@dataclass(frozen=True)
class Pending:
    """A plan being carried out, with what it was planned from."""

    ev: Observed
    target: Observed | None
    plan: Plan

    def to_json(self) -> dict[str, Any]:
        return {"ev": _observed_json(self.ev), "t": _observed_json(self.target), "p": _plan_json(self.plan)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Pending:
        ev = _observed(data["ev"])
        assert ev is not None
        return cls(ev, _observed(data["t"]), _plan(data["p"]))


def _observed_json(o: Observed | None) -> Any:
    if o is None:
        return None
    return [o.side, o.exists, dict(o.values), o.version, o.etag, o.row_id, o.time.isoformat() if o.time else None]


def _observed(v: Any) -> Observed | None:
    if v is None:
        return None
    return Observed(v[0], v[1], v[2], v[3], v[4], v[5], datetime.fromisoformat(v[6]) if v[6] else None)


def _plan_json(p: Plan) -> dict[str, Any]:
    return {
        "t": p.target,
        "f": sorted(p.fields),
        "m": p.if_match,
        "b": p.back,
        "bf": sorted(p.back_fields),
        "bm": p.back_if_match,
        "a": sorted(p.agreed),
        "r": p.back_refused,
        "c": sorted(p.conflicts),
        "ch": sorted(p.changed),
        **({"id": p.create_id} if p.create_id else {}),
    }


def _plan(v: Mapping[str, Any]) -> Plan:
    return Plan(
        v["t"],
        frozenset(v["f"]),
        v["m"],
        v["b"],
        frozenset(v["bf"]),
        v["bm"],
        conflicts=frozenset(v.get("c", ())),
        agreed=frozenset(v.get("a", ())),
        changed=frozenset(v.get("ch", ())),
        back_refused=bool(v.get("r")),
        create_id=v.get("id"),
    )


EMPTY = RecordState()


def begin(state: RecordState, ev: Observed, target: Observed | None, p: Plan) -> RecordState:
    """The state to record before carrying out `p` (only a plan that writes needs it)."""
    if p.target == "none" and p.back == "none":
        return state
    return replace(state, pending=Pending(ev, target, p))


def resolve(
    state: RecordState,
    target_now: Observed | None,
    source_now: Observed | None,
    one_way: Iterable[str] = (),
    one_way_back: Iterable[str] = (),
) -> RecordState:
    """After a crash between the writes of a plan and its `settle`: what the sides hold now tells
    which writes happened (`target_now`, `source_now`: the rows the plan wrote, read again). A write
    landed when its row holds at least one of the values it wrote; a field holding another value was
    changed since by someone else, and stays a change of that side to be synced, except a field in
    `one_way` (one the map never carries from the target back to the source): there the source's
    value is asserted again; likewise a field of the write back in `one_way_back` (one the map never
    carries from the source to the target side): the target's value is asserted again on the source.
    A row changed since by someone else is not dualwrite's own write: its change event is no echo."""
    pending = state.pending
    if pending is None:
        return state
    ev, target, p = pending.ev, pending.target, pending.plan
    base = replace(state, pending=None)
    planned = target.version if target is not None and target.exists else None
    if planned is None and target is None:
        planned = state.side(other(ev.side)).version
    row = target.row_id if target is not None else state.side(other(ev.side)).row_id
    if p.target == "create":
        row = p.create_id
    landed, overwritten = _landed(p.target, p.fields, ev, target_now, planned, row)
    if p.target == "create" and landed is None and not _exists(target_now):
        # No row of it there: it was not made, or it was and a person deleted it before the restart. The change
        # is planned again when its event comes back; the delete, if there was one, is known by its event.
        # (Another row there now was made by a person after that one was gone: it is newer than the delete.)
        return base.with_side(other(ev.side), _ghost_of(base.side(other(ev.side)), p.create_id, ev.version))
    if p.target != "none" and landed is None:
        return base  # the write did not happen: the change is planned again when its event comes back
    back, back_overwritten = (None, frozenset[str]())
    if target is not None and not p.back_refused:
        source_at = ev.version if ev.version is not None else state.side(ev.side).version
        source_row = None if p.back == "create" else ev.row_id or state.side(ev.side).row_id
        back, back_overwritten = _landed(p.back, p.back_fields, target, source_now, source_at, source_row)
    settled = settle(
        base,
        ev,
        target,
        replace(p, fields=p.fields - overwritten, back_fields=p.back_fields - back_overwritten),
        landed,
        back,
    )
    fields = dict(settled.fields)
    a, b = ev.side, other(ev.side)
    one_way = frozenset(one_way)
    for name in overwritten:
        if name in one_way and target_now is not None and name in target_now.values:
            # The target holds another value of a field only the source decides: the source's change
            # is still to be written (its event, planned again, finds the field changed).
            fields[name] = _at(FieldState(target_now.values[name]), a, NO_VERSION, b, target_now.version)
        else:  # agreed as written, but the target changed it since: its change, to sync
            fields[name] = _at(FieldState(ev.values[name]), a, ev.version, b, NO_VERSION)
    if target is not None:
        one_way_back = frozenset(one_way_back)
        for name in back_overwritten:
            if name in one_way_back and source_now is not None and name in source_now.values:
                # (a row someone made anew on the source lacks the target's one-way value: the target's next
                # change, planned again, finds the field changed)
                fields[name] = _at(FieldState(source_now.values[name]), a, source_now.version, b, NO_VERSION)
            else:
                fields[name] = _at(FieldState(target.values[name]), a, NO_VERSION, b, target.version)
    settled = replace(settled, fields=fields)
    # The writes' answers were lost with the crash: what landed is known from reads, which may not name their row.
    for side, ack in ((b, landed), (a, back)):
        if ack is not None and ack.row_id is None:
            settled = settled.with_side(
                side, replace(settled.side(side), row_id=_row_seen(base.side(side), ack.version, None))
            )
    if p.back == "create" and back is None and target is not None and not p.back_refused and not _exists(source_now):
        settled = settled.with_side(a, _ghost_of(settled.side(a), p.create_id, target.version))
    if overwritten:  # someone wrote the target after (or instead of) dualwrite
        settled = settled.with_side(b, replace(settled.side(b), written=NO_VERSION))
    if back_overwritten:
        settled = settled.with_side(a, replace(settled.side(a), written=NO_VERSION))
    return settled


def _landed(
    action: str,
    names: frozenset[str],
    wanted: Observed | None,
    now: Observed | None,
    planned: int | None,
    row_id: str | None,
) -> tuple[Ack | None, frozenset[str]]:
    """(an Ack when the write of `names` landed, the fields of it someone changed since).

    The row as `now` shows it landed the write when it holds one of the values written, or when its
    version moved past the one it was planned on (`planned`; None: the row was not there). A field
    that holds another value was changed since. (When the version moved because someone else wrote
    instead, their change was concurrent with this one, and taking theirs loses nothing they saw.)"""
    if action == "none" or now is None or wanted is None:
        return None, frozenset()
    if action == "delete":
        # (a read that shows no row id, as F&O's, shows the same row: it is not "another row now")
        return (Ack() if not now.exists or (row_id and now.row_id and now.row_id != row_id) else None), frozenset()
    if not now.exists or (row_id and now.row_id and now.row_id != row_id):
        return None, frozenset()  # gone, or another row now: what the write did went with the old one
    held = {n for n in names if now.values.get(n) == wanted.values.get(n)}
    moved = planned is None or (now.version is not None and now.version > planned)
    if names and not held and not moved:
        return None, frozenset()
    return Ack(now.version, now.etag, now.row_id), frozenset(names - held)


def _exists(now: Observed | None) -> bool:
    return now is not None and now.exists


def _ghost_of(s: SideState, row_id: str | None, made_of: int | None) -> SideState:
    """The side once a create there was cut short and no row of it found (see `SideState.ghost`)."""
    return replace(s, ghost=row_id or ANY_ROW, ghost_floor=s.version, ghost_of=_v(Ack(made_of)))


def _ghost(s: SideState, ev: Observed) -> bool:
    """Whether `ev` is the delete of the row a cut-short create may have made on its side (`SideState.ghost`):
    dualwrite knew nothing of that row, so only a person can have deleted it."""
    if ev.exists or s.ghost is None or (ev.row_id and ev.row_id == s.row_id):
        return False
    if s.ghost != ANY_ROW:
        return ev.row_id == s.ghost
    # The side names its rows itself: a row made after the floor that dualwrite never knew, and before the row
    # it made again, if it did (while that one is as dualwrite made it: a change of it is later than the delete).
    if s.exists is True and s.written != s.version:
        return False
    return ev.version is not None and ev.version > s.ghost_floor and (s.exists is not True or ev.version < s.version)


def _unghosted(s: SideState) -> SideState:
    return replace(s, ghost=None, ghost_floor=NO_VERSION, ghost_of=NO_VERSION)


def _other_row(seen: Observed, s: SideState) -> bool:
    return bool(seen.row_id and s.row_id and seen.row_id != s.row_id)


def _versioned(s: SideState, seen: Observed, fields: Mapping[str, FieldState]) -> SideState:
    """The side once a version of the row dualwrite created without one (CREATED_UNVERSIONED) is seen: that
    version is dualwrite's while the row holds what dualwrite wrote (as `unchanged_since_written` tells)."""
    if s.written == CREATED_UNVERSIONED and seen.version is not None and seen.row_id == s.row_id:
        same = seen.exists and all(fields[n].value == v for n, v in seen.values.items() if n in fields)
        return replace(s, written=seen.version if same else NO_VERSION)
    return s


def _row_seen(s: SideState, version: int | None, row_id: str | None) -> str | None:
    """The side's row id once a row was seen at `version`: a read that does not name its row (F&O's OData rows
    have no id, only its data events do) and shows a newer version may show a row made anew under the same key,
    so the id known before no longer says which row the side's version is of: it becomes unknown, and later
    events are ordered by their versions alone (which are unique per change of any row of a table)."""
    if row_id:
        return row_id
    if version is not None and version > s.version:
        return None
    return s.row_id


def _not_newer(v: int | None, known: int) -> bool:
    return v is not None and known != NO_VERSION and v <= known


def _newest(a: int | None, b: int) -> int:
    return b if a is None else max(a, b)


def _changed(state: RecordState, ev: Observed, carried: Iterable[str]) -> tuple[set[str], set[str], set[str]]:
    """(changed, unchanged, stale) fields of the source's change, against the agreed state."""
    changed, unchanged, stale = set(), set(), set()
    for name in carried:
        if name not in ev.values:
            continue
        fs = state.fields.get(name)
        if fs is not None and ev.version is not None and ev.version <= fs.version(ev.side):
            stale.add(name)
        elif fs is not None and ev.values[name] == fs.value:
            unchanged.add(name)
        else:
            changed.add(name)
    return changed, unchanged, stale


def _etag(s: SideState, seen: Observed) -> str | None:
    """The ETag of the newest version known of a side: the observed one or the state's (None when the
    newest version came without one: a write then needs a read first)."""
    if seen.version is None:
        return seen.etag or s.etag
    if seen.version > s.version:
        return seen.etag
    if seen.version == s.version:
        return seen.etag or s.etag
    return s.etag


def plan(
    state: RecordState,
    ev: Observed,
    target: Observed | None,
    carried: Iterable[str],
    carried_back: Iterable[str],
    policy: Policy = Policy(),
    repair: bool = False,
    current: bool = False,
) -> Plan:
    """The plan for a change `ev` of one side, given the record's state and, when read, the other
    side's current row `target`. `carried`: the field pairs the map writes towards the target;
    `carried_back`: the ones it writes towards the source (for a conflict the target wins).

    `repair`: the change is the source's row as reconcile read it, because the target drifted without
    an event dualwrite could see. Its one-way fields are then written where the target holds other
    values even if the versions are known (unless the source changed since: its newer change decides).

    `current`: `ev` is the source's row as a read shows it now (after NEEDS_SOURCE), not a change event."""
    a, b = ev.side, other(ev.side)
    sa, sb = state.side(a), state.side(b)
    carried, carried_back = frozenset(carried), frozenset(carried_back)
    older = ev.version is not None and ev.version < sa.version
    other_row = _other_row(ev, sa)  # another incarnation than the row dualwrite knows on the source side
    if repair and older:
        return replace(NOTHING, stale=True)  # the source changed after reconcile read it
    if repair and target is None and ev.exists:
        return NEEDS_TARGET
    if _ghost(sa, ev):
        return _plan_ghost_delete(state, ev, target)
    if other_row and (not ev.exists or _not_newer(ev.version, sa.version)):
        # A change of an earlier incarnation of the row. Row versions are unique per change of any row of a
        # table, so another row at a version dualwrite already holds for this side is from before the row it
        # knows now (which dualwrite may have made itself, with an answer that gave no version: CreateMultiple).
        return replace(NOTHING, stale=True)
    if ev.version is not None and ev.version < sa.version and not ev.exists:
        return replace(NOTHING, stale=True)  # deleted at an older version: the row was re-created since
    if other_row and sa.exists and sa.written == CREATED_UNVERSIONED and not current:
        # Another row than the one dualwrite created there, and no version to tell which is newer: the
        # source's row as it is now decides (it gives the created row's version too).
        return NEEDS_SOURCE
    if ev.exists and sa.exists is False and ev.row_id and ev.row_id == sa.row_id:
        # A row known to be deleted (by dualwrite or a person) changes no more: this change was made before
        # the delete (its version may be unknown: a create answered by CreateMultiple gives none).
        return replace(NOTHING, stale=True)
    if not ev.exists:
        return _plan_delete(state, ev, target, carried_back, policy)
    if sa.exists is False and ev.version is not None and ev.version <= sa.version:
        return replace(NOTHING, stale=True)  # a change of a row deleted since
    changed, _, stale = _changed(state, ev, carried)
    behind = ev.version is not None and ev.version < sa.version  # dualwrite wrote the source since
    if (
        behind
        and not current
        and any(n not in state.fields or state.fields[n].version(a) == NO_VERSION for n in changed)
    ):
        # An event older than the row dualwrite knows on that side, changing a field whose version there is not
        # known (left so by a crash's resolve, or never agreed): its value may be long gone from the row, so it
        # cannot be taken for that side's change; the row as it is now decides.
        return NEEDS_SOURCE
    # A row the source made anew (another row id) lacks what only the target decides (the one-way fields
    # towards the source): the target's values go to it, as a one-way field of a row made anew on the
    # target gets the source's.
    anew = other_row and sb.exists
    one_way_back = {
        n
        for n in carried_back - carried
        if anew and n in ev.values and n in state.fields and ev.values[n] != state.fields[n].value
    }
    if target is None and one_way_back:
        return NEEDS_TARGET
    if target is None:
        if not changed and sb.exists is True:
            return replace(NOTHING, stale=bool(stale) and not changed)
        # (nothing changed, but the row may be missing on the target: a map of key fields only,
        # or a row whose fields all agree, still needs its row there)
        if sb.exists is None or (sb.exists and sb.etag is None):
            return NEEDS_TARGET
        if sb.exists is False:
            if behind:
                return NEEDS_SOURCE  # a new row is made of all fields: take them from the source as it is now
            return Plan("create", carried & frozenset(ev.values), changed=frozenset(changed))
        return Plan("update", frozenset(changed), sb.etag, changed=frozenset(changed))
    if not target.exists:
        echo = ev.version is not None and ev.version == sa.written
        if echo or (not changed and sb.exists is True):
            # The row dualwrite itself wrote, or a source that changed nothing, is no person's update:
            # it never brings back a row the target deleted since (whose delete event is on its way).
            return replace(NOTHING, stale=bool(stale) and not changed)
        # Gone on the target: created anew. When it was there before, its delete was concurrent with
        # this change, and an update beats a concurrent delete (no data is lost; its delete event
        # names the old row and is stale by then).
        if behind:
            return NEEDS_SOURCE
        return Plan("create", carried & frozenset(ev.values), changed=frozenset(changed))
    write, back, conflicts, agreed = set(), set(), set(), set()
    unknown = sb.exists is not True  # no agreed state: every difference is a conflict
    for name in changed:
        fs = state.fields.get(name)
        tv = target.values.get(name)
        if tv is None:
            write.add(name)  # a field the target does not carry back: nothing there to protect
            continue
        target_changed = unknown or fs is None or tv != fs.value
        if not target_changed:
            write.add(name)
        elif tv == ev.values[name]:
            agreed.add(name)
        elif policy.winner(ev, target) == a or name not in carried_back:
            write.add(name)
            conflicts.add(name)
        else:
            back.add(name)
            conflicts.add(name)
    for name in (carried - carried_back) - changed - (set() if repair else stale):
        # A one-way field the target holds otherwise (a row it made anew): the source's value wins.
        if name in ev.values and name in target.values and target.values[name] != ev.values[name]:
            write.add(name)
    for name in one_way_back:
        if name in target.values and target.values[name] != ev.values[name]:
            back.add(name)
    return Plan(
        "update" if write else "none",
        frozenset(write),
        target.etag,
        "update" if back else "none",
        frozenset(back),
        _etag(sa, ev),
        conflicts=frozenset(conflicts),
        agreed=frozenset(agreed),
        changed=frozenset(changed),
    )


def coalesce(state: RecordState, events: Sequence[Observed], carried: Iterable[str]) -> Observed | None:
    """The newest of several changes of one record from one side, to plan and write once for all of them;
    None when that could decide differently from applying each in turn (the caller then applies them one
    at a time).

    Only plain successive updates of the row dualwrite knows on both sides qualify: each newer than the
    last (none stale, none an echo of dualwrite's own write), none a delete or of another row, each with
    the same fields, and every field some of them changed still changed in the newest (a field changed and
    changed back could have met a concurrent change of the target on the way). The plan for the newest
    must then pass `coalesced_ok`, and its write's If-Match proves the target did not change meanwhile: a
    412 sends the caller back to one change at a time, so a true conflict is decided per change, with
    each change's own time, as without coalescing."""
    if len(events) < 2 or state.pending is not None:
        return None
    a = events[0].side
    sa, sb = state.side(a), state.side(other(a))
    if sa.exists is not True or sb.exists is not True:
        return None
    row_id = sa.row_id or events[0].row_id  # (a row synced by the initial sync may have no id in the state yet)
    if CREATED_UNVERSIONED in (sa.written, sb.written):
        return None
    carried = frozenset(carried)
    newest = events[-1]
    agreed = {n: fs.value for n, fs in state.fields.items()}
    before, version = dict(agreed), sa.version
    changed: set[str] = set()
    for ev in events:
        if ev.side != a or not ev.exists or ev.version is None or ev.version <= version or ev.row_id != row_id:
            return None
        if set(ev.values) != set(newest.values):
            return None
        changed |= {n for n in carried if n in ev.values and ev.values[n] != before.get(n)}
        before.update(ev.values)
        version = ev.version
    if changed != {n for n in carried if n in newest.values and newest.values[n] != agreed.get(n)}:
        return None
    return newest


def coalesced_ok(p: Plan) -> bool:
    """A plan for coalesced changes (`coalesce`) that writing once carries out as applying each would: a
    plain update with If-Match, no conflict, nothing written back, or nothing at all when nothing changed."""
    if p.needs_source or p.needs_target or p.stale or p.conflicts or p.back != "none" or p.agreed:
        return False
    if p.target == "none":
        return not p.changed
    return p.target == "update" and p.if_match is not None


def _plan_delete(
    state: RecordState, ev: Observed, target: Observed | None, carried_back: frozenset[str], policy: Policy
) -> Plan:
    b = other(ev.side)
    sa, sb = state.side(ev.side), state.side(b)
    if sa.exists is False and sb.exists is False:
        return replace(NOTHING, stale=True)  # deleted on both sides: a duplicate, or the echo of our delete
    if target is None:
        if sb.exists is False:
            return NOTHING
        if sb.exists is None or sb.etag is None:
            return NEEDS_TARGET
        return Plan("delete", if_match=sb.etag)
    if not target.exists:
        return NOTHING
    target_changed = sb.exists is not True or (target.version is not None and target.version > sb.version)
    if target_changed and sb.exists is True:
        target_changed = any(state.fields.get(n, FieldState(ABSENT)).value != v for n, v in target.values.items())
    if target_changed and sb.exists is True:
        # A concurrent update of the target beats this delete: the source gets the row back.
        return Plan(back="create", back_fields=carried_back & frozenset(target.values), conflicts=frozenset({"*"}))
    return Plan("delete", if_match=target.etag)


def _plan_ghost_delete(state: RecordState, ev: Observed, target: Observed | None) -> Plan:
    """A person deleted the row dualwrite made of the other side's row with a create a crash cut short: the
    record goes on both sides (the row dualwrite made again since, if it did, too), unless the other side
    changed since the row was made of it (an update beats a concurrent delete, as everywhere)."""
    a, b = ev.side, other(ev.side)
    sa, sb = state.side(a), state.side(b)
    back: Action = "delete" if sa.exists is True else "none"
    if target is None:
        return NEEDS_TARGET
    if back == "delete" and sa.written not in (sa.version, CREATED_UNVERSIONED):
        return replace(NOTHING, stale=True)  # the row made again was changed since: the update wins
    if not target.exists:
        return Plan(back=back, back_if_match=sa.etag)
    if sa.ghost_of != NO_VERSION and target.version is not None:
        changed = target.version > max(sa.ghost_of, sb.version if sa.exists is True else NO_VERSION)
    else:
        changed = any(state.fields.get(n, FieldState(ABSENT)).value != v for n, v in target.values.items())
    if changed:
        return replace(NOTHING, stale=True)
    return Plan("delete", if_match=target.etag, back=back, back_if_match=sa.etag)


def unchanged_since_written(state: RecordState, now: Observed) -> bool:
    """Whether a side's row as read `now` is still the one dualwrite last wrote there (for a write back
    whose ETag the state does not know: a row dualwrite created with an answer that gave no version)."""
    s = state.side(now.side)
    if not now.exists or s.exists is not True or _other_row(now, s):
        return False
    if s.written == CREATED_UNVERSIONED:
        return all(state.fields[n].value == v for n, v in now.values.items() if n in state.fields)
    return now.version is not None and now.version == s.written


# -- the state after the plan was carried out ----------------------------------------------------------------
def settle(
    state: RecordState,
    ev: Observed,
    target: Observed | None,
    p: Plan,
    target_ack: Ack | None = None,
    back_ack: Ack | None = None,
) -> RecordState:
    """The record's state once `p` was carried out. `target_ack` answers the target write (required
    when the plan has one); `back_ack` the write back to the source (None when it was not made or was
    refused because the source changed again: that conflict is decided anew on the source's next change)."""
    state = replace(state, pending=None)
    if p.stale:
        return state
    a, b = ev.side, other(ev.side)
    sa, sb = state.side(a), state.side(b)
    if _ghost(sa, ev):
        return _settle_ghost_delete(state, ev, target, p, target_ack, back_ack)
    fields = dict(state.fields)
    ev_v = NO_VERSION if ev.version is None else ev.version
    if ev.version is None or ev.version > sa.version or (ev.version == sa.version and not _other_row(ev, sa)):
        # (an older change, or another row's at a version already known, says nothing of the row now)
        sa = replace(sa, exists=ev.exists, row_id=_row_seen(sa, ev.version, ev.row_id))
    sa = replace(_versioned(sa, ev, state.fields), version=_newest(ev.version, sa.version), etag=_etag(sa, ev))
    tv = sb.version
    if target is not None and target.exists:
        # A read shows the row; that it is gone is learnt from its delete event, not from a read.
        if p.target != "create" and (sb.exists is not True or _other_row(target, sb)):
            # A row dualwrite did not make nor know: a person made it after the one a cut-short create made
            # there was gone (the key is unique), so that row's delete is older than this row.
            sb = _unghosted(sb)
        tv = _newest(target.version, sb.version)
        sb = replace(
            _versioned(sb, target, state.fields),
            exists=True,
            version=tv,
            etag=_etag(sb, target),
            row_id=_row_seen(sb, target.version, target.row_id),
        )
    if target_ack is not None:
        version = _newest(target_ack.version, sb.version)
        written = NO_VERSION if target_ack.version is None else target_ack.version
        if target_ack.version is None and p.target == "create":
            written = CREATED_UNVERSIONED
        # (an update's answer is of the row its If-Match named; a created row is another row than any known before)
        row_id = target_ack.row_id if p.target == "create" else target_ack.row_id or sb.row_id
        ghost = sb if p.target != "delete" else SideState()
        sb = SideState(p.target != "delete", version, target_ack.etag, row_id, written)
        sb = replace(sb, ghost=ghost.ghost, ghost_floor=ghost.ghost_floor, ghost_of=ghost.ghost_of)
    if not ev.exists:
        if p.back == "create" and back_ack is not None and target is not None:
            made = _v(back_ack) if back_ack.version is not None else CREATED_UNVERSIONED
            sa = replace(sa, exists=True, version=_newest(back_ack.version, sa.version), etag=back_ack.etag)
            sa = replace(sa, row_id=back_ack.row_id, written=made)
            for name in p.back_fields:
                fields[name] = _at(FieldState(target.values[name]), a, back_ack.version, b, tv)
            return _state(a, sa, sb, fields)
        sa = _unghosted(sa)  # (deleted: a later delete of the row a cut-short create made is of an older row)
        if p.back == "none":  # deleted on both sides now
            sb = replace(sb, exists=False, etag=None)
            fields = {n: _at(FieldState(ABSENT), a, ev_v, b, sb.version) for n in fields}
        return _state(a, sa, sb, fields)
    if target_ack is not None:
        for name in p.fields:
            fields[name] = _at(FieldState(ev.values[name]), a, ev_v, b, target_ack.version)
    for name in p.agreed:
        fields[name] = _at(FieldState(ev.values[name]), a, ev_v, b, tv)
    for name, value in ev.values.items():
        fs = fields.get(name)
        if fs is not None and fs.value == value and name not in p.fields and name not in p.agreed:
            fields[name] = _at(fs, a, max(ev_v, fs.version(a)), b, None)  # the source still holds the agreed value
        elif fs is None and name not in p.back_fields:
            # Seen on the source only (a field the map does not write towards the target): what the source
            # holds, so that the other side's same value later needs no write.
            fields[name] = _at(FieldState(value), a, ev_v, b, NO_VERSION)
    if back_ack is not None and target is not None:
        version = _newest(back_ack.version, sa.version)
        sa = replace(sa, exists=True, version=version, etag=back_ack.etag or sa.etag, written=_v(back_ack))
        for name in p.back_fields:
            fields[name] = _at(FieldState(target.values[name]), a, back_ack.version, b, tv)
    return _state(a, sa, sb, fields)


def _settle_ghost_delete(
    state: RecordState, ev: Observed, target: Observed | None, p: Plan, target_ack: Ack | None, back_ack: Ack | None
) -> RecordState:
    a, b = ev.side, other(ev.side)
    sa, sb = state.side(a), state.side(b)
    version = _newest(ev.version, sa.version)
    if p.back == "none" or back_ack is not None:  # the row made again (if any) is gone too
        sa = SideState(False, _newest(None if back_ack is None else back_ack.version, version), None, sa.row_id)
    else:  # the row made again was changed meanwhile (refused): it stays, and its change comes
        sa = replace(_unghosted(sa), version=version)
    if target_ack is not None:  # (the row deleted was at the version read, if its answer gives none)
        gone = _newest(target_ack.version, _newest(target.version if target is not None else None, sb.version))
        sb = SideState(False, gone, None, sb.row_id, _v(target_ack))
    elif target is not None and not target.exists:
        sb = replace(sb, exists=False, etag=None)
    fields = dict(state.fields)
    if sa.exists is False and sb.exists is False:
        fields = {n: _at(FieldState(ABSENT), a, sa.version, b, sb.version) for n in fields}
    return _state(a, sa, sb, fields)


def _v(ack: Ack) -> int:
    return NO_VERSION if ack.version is None else ack.version


def _at(fs: FieldState, a: str, va: int | None, b: str, vb: int | None) -> FieldState:
    """The field state with side `a` at version `va` and side `b` at `vb` (None keeps what it had)."""
    versions = {a: fs.version(a) if va is None else va, b: fs.version(b) if vb is None else vb}
    return FieldState(fs.value, versions[FO], versions[DATAVERSE])


def _state(a: str, sa: SideState, sb: SideState, fields: dict[str, FieldState]) -> RecordState:
    fo, dv = (sa, sb) if a == FO else (sb, sa)
    return RecordState(fo, dv, fields)
