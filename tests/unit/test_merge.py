"""The merge rules on the cases a user meets; `test_merge_model.py` searches the interleavings."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from dualwrite.merge import (
    DATAVERSE,
    EMPTY,
    FO,
    Ack,
    Observed,
    Plan,
    Policy,
    RecordState,
    begin,
    coalesce,
    coalesced_ok,
    digest,
    plan,
    resolve,
    settle,
)

FIELDS = frozenset({"name", "memo"})
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def seen(
    side: str, version: int, exists: bool = True, row_id: str | None = None, at: int = 0, **values: str
) -> Observed:
    etag = f'W/"{version}"'
    return Observed(
        side,
        exists,
        {k: digest(v) for k, v in values.items()},
        version,
        etag,
        row_id or f"{side}-1",
        T0 + timedelta(seconds=at),
    )


def synced(name: str = "N0", memo: str = "M0") -> RecordState:
    """A record both sides agree on: F&O at version 10, Dataverse at version 100."""
    fo = seen(FO, 10, name=name, memo=memo)
    p = plan(EMPTY, fo, seen(DATAVERSE, 100, name=name, memo=memo), FIELDS, FIELDS)
    assert p.target == "none" and p.agreed == FIELDS
    return settle(EMPTY, fo, seen(DATAVERSE, 100, name=name, memo=memo), p)


def test_a_dataverse_edit_right_after_the_synced_fo_change_wins_whatever_the_clock() -> None:
    state = synced()
    fo_change = seen(FO, 11, at=5, name="N1", memo="M0")
    p = plan(state, fo_change, None, FIELDS, FIELDS)
    assert p.target == "update" and p.fields == {"name"} and p.if_match == 'W/"100"'  # no read needed
    state = settle(state, fo_change, None, p, Ack(101, 'W/"101"'))
    # A person renames it in Dataverse in the same second (even "earlier" by the clock).
    dv_edit = seen(DATAVERSE, 102, at=4, name="N2", memo="M0")
    p = plan(state, dv_edit, None, FIELDS, FIELDS)
    assert p.target == "update" and p.fields == {"name"} and not p.conflicts


def test_the_echo_of_dualwrites_own_write_is_stale() -> None:
    state = synced()
    change = seen(FO, 11, name="N1", memo="M0")
    state = settle(state, change, None, plan(state, change, None, FIELDS, FIELDS), Ack(101, 'W/"101"'))
    echo = seen(DATAVERSE, 101, name="N1", memo="M0")
    assert plan(state, echo, None, FIELDS, FIELDS).stale


def test_a_persons_edit_in_a_row_dualwrite_wrote_later_is_not_taken_for_an_echo() -> None:
    """Change tracking shows the latest state only: modified by dualwrite, holding a person's edit."""
    state = synced()
    change = seen(FO, 11, name="N1", memo="M0")
    state = settle(state, change, None, plan(state, change, None, FIELDS, FIELDS), Ack(102, 'W/"102"'))
    # The person changed memo at version 101; dualwrite wrote name at 102; one poll sees version 102.
    polled = seen(DATAVERSE, 102, name="N1", memo="M1")
    p = plan(state, polled, None, FIELDS, FIELDS)
    assert p.target == "update" and p.fields == {"memo"}


def test_concurrent_edits_of_different_fields_both_survive() -> None:
    state = synced()
    fo_change = seen(FO, 11, at=1, name="N1", memo="M0")
    dv_now = seen(DATAVERSE, 101, at=2, name="N0", memo="M1")  # the write met a 412 and read this
    p = plan(state, fo_change, dv_now, FIELDS, FIELDS)
    assert p.target == "update" and p.fields == {"name"} and p.if_match == 'W/"101"' and not p.conflicts
    state = settle(state, fo_change, dv_now, p, Ack(102, 'W/"102"'))
    dv_event = seen(DATAVERSE, 101, at=2, name="N0", memo="M1")  # its own event comes later
    p = plan(state, dv_event, None, FIELDS, FIELDS)
    assert p.target == "update" and p.fields == {"memo"}  # name is stale (dualwrite wrote it at 102)


def test_a_true_conflict_goes_to_the_policy_and_the_winner_reaches_both_sides() -> None:
    state = synced()
    fo_change = seen(FO, 11, at=1, name="FO", memo="M0")
    dv_now = seen(DATAVERSE, 101, at=2, name="DV", memo="M0")
    p = plan(state, fo_change, dv_now, FIELDS, FIELDS)  # later writer: Dataverse
    assert p.conflicts == {"name"} and p.target == "none" and p.back == "update" and p.back_fields == {"name"}
    p = plan(state, fo_change, dv_now, FIELDS, FIELDS, Policy(source_of_truth=FO))
    assert p.conflicts == {"name"} and p.target == "update" and p.fields == {"name"} and p.back == "none"


def test_an_old_event_replayed_never_brings_an_old_value_back() -> None:
    state = synced()
    old = seen(FO, 11, name="N1", memo="M0")
    new = seen(FO, 12, name="N2", memo="M0")
    state = settle(state, new, None, plan(state, new, None, FIELDS, FIELDS), Ack(101, 'W/"101"'))
    assert plan(state, old, None, FIELDS, FIELDS).stale


def test_a_delete_of_an_earlier_row_is_stale_and_an_update_beats_a_concurrent_delete() -> None:
    state = synced()
    assert plan(state, seen(DATAVERSE, 0, exists=False, row_id="old-row"), None, FIELDS, FIELDS).stale
    fo_change = seen(FO, 11, name="N1", memo="M0")
    gone = Observed(DATAVERSE, False)
    p = plan(state, fo_change, gone, FIELDS, FIELDS)
    assert p.target == "create" and p.fields == FIELDS


def test_after_a_crash_between_write_and_settle_the_rows_tell_what_happened() -> None:
    state = synced()
    change = seen(FO, 11, name="N1", memo="M0")
    p = plan(state, change, None, FIELDS, FIELDS)
    crashed = begin(state, change, None, p)  # recorded, written, then killed before settling
    landed = resolve(crashed, seen(DATAVERSE, 101, name="N1", memo="M0"), None)
    assert (
        landed.pending is None and plan(landed, seen(DATAVERSE, 101, name="N1", memo="M0"), None, FIELDS, FIELDS).stale
    )
    not_landed = resolve(crashed, seen(DATAVERSE, 100, name="N0", memo="M0"), None)
    assert not_landed == state  # planned again when the change comes back
    assert RecordState.from_json(crashed.to_json()) == crashed


def test_after_a_crash_a_row_someone_made_anew_is_not_taken_for_dualwrites_write() -> None:
    """The create dualwrite made before a crash was deleted, and a person made the row again with a
    one-way field left empty: the F&O value is written again, and the person's row is no echo."""
    towards_dv = FIELDS | {"credit"}  # credit: F&O -> Dataverse only
    fo = seen(FO, 10, name="N0", memo="M0", credit="C1")
    p = plan(EMPTY, fo, Observed(DATAVERSE, False), towards_dv, FIELDS)
    assert p.target == "create"
    crashed = begin(EMPTY, fo, Observed(DATAVERSE, False), p)  # created, then killed before settling
    # Meanwhile a person deleted that row and made it again, with the one-way field empty.
    anew = seen(DATAVERSE, 105, row_id="dv-anew", name="N0", memo="M0", credit="")
    resolved = resolve(crashed, anew, None, one_way=towards_dv - FIELDS)
    assert resolved.dataverse.written != 105  # the person's write, not dualwrite's
    again = plan(resolved, fo, None, towards_dv, FIELDS)  # the F&O change comes again
    assert again.target == "update" and again.fields == {"credit"} and again.if_match == 'W/"105"'


def test_a_repair_writes_a_one_way_field_the_target_changed_without_an_event() -> None:
    towards_dv = FIELDS | {"credit"}  # credit: F&O -> Dataverse only
    fo = seen(FO, 10, name="N0", memo="M0", credit="C1")
    dv = seen(DATAVERSE, 100, name="N0", memo="M0", credit="C1")
    state = settle(EMPTY, fo, dv, plan(EMPTY, fo, dv, towards_dv, FIELDS))
    drifted = seen(DATAVERSE, 100, name="N0", memo="M0", credit="edited in the database")  # no new version
    assert plan(state, fo, drifted, towards_dv, FIELDS).target == "none"  # the same event again: stale
    assert plan(state, fo, None, towards_dv, FIELDS, repair=True).needs_target
    p = plan(state, fo, drifted, towards_dv, FIELDS, repair=True)
    assert p.target == "update" and p.fields == {"credit"} and p.if_match == 'W/"100"'
    # A repair read before the source changed again is stale: the newer change decides.
    newer = seen(FO, 11, name="N1", memo="M0", credit="C1")
    state = settle(state, newer, None, plan(state, newer, None, towards_dv, FIELDS), Ack(101, 'W/"101"'))
    assert plan(state, fo, drifted, towards_dv, FIELDS, repair=True).stale


def test_late_events_of_a_row_dualwrite_deleted_and_made_anew_are_stale_when_its_create_gave_no_version() -> None:
    # Found by the 100k chaos run (F&O-owned record, trace of customers|usmf|ch-01911): F&O updates, deletes
    # and re-creates the record; dualwrite writes each to Dataverse, the create through CreateMultiple,
    # whose answer has the new row's id but no version. Only then do the Dataverse events of dualwrite's
    # own update and delete of the old row arrive (that topic lagged): both are stale, whatever the clock.
    state = synced()
    update = seen(FO, 11, name="N1", memo="M0")
    p = plan(state, update, None, FIELDS, FIELDS)
    state = settle(state, update, None, p, Ack(101, 'W/"101"', "dataverse-1"))
    delete = seen(FO, 11, exists=False)
    p = plan(state, delete, None, FIELDS, FIELDS)
    assert p.target == "delete"
    state = settle(state, delete, None, p, Ack())
    create = seen(FO, 12, row_id="fo-2", name="N2", memo="M2")
    p = plan(state, create, None, FIELDS, FIELDS)
    assert p.target == "create"
    state = settle(state, create, None, p, Ack(None, None, "dataverse-2"))  # no version, no ETag
    late_update = seen(DATAVERSE, 101, row_id="dataverse-1", at=-5, name="N1", memo="M0")
    now_in_fo = seen(FO, 12, row_id="fo-2", name="N2", memo="M2")
    for target in (None, now_in_fo):
        p = plan(state, late_update, target, FIELDS, FIELDS)
        assert p.target == "none" and p.back == "none" and p.stale, p
    state = settle(state, late_update, now_in_fo, plan(state, late_update, now_in_fo, FIELDS, FIELDS))
    late_delete = Observed(DATAVERSE, False, {}, None, None, "dataverse-1", T0)
    p = plan(state, late_delete, None, FIELDS, FIELDS)
    assert p.target == "none" and p.stale, p


def test_a_person_deleting_the_row_dualwrite_made_just_before_it_crashed_keeps_it_deleted() -> None:
    # dualwrite creates the row in Dataverse (with the id it chose) and is killed before it records that;
    # before it is back, a person deletes the new row. The restart finds no row and makes it again; then the
    # delete event of the first row comes: a row only dualwrite knew of, deleted by a person: the record goes.
    create = seen(FO, 1, row_id="fo-1", name="N", memo="M")
    p = replace(plan(EMPTY, create, Observed(DATAVERSE, False), FIELDS, FIELDS), create_id="dv-x")
    assert p.target == "create"
    state = begin(EMPTY, create, Observed(DATAVERSE, False), p)  # recorded; then written; then killed
    state = resolve(state, Observed(DATAVERSE, False), create)  # the person deleted it meanwhile
    p = replace(plan(state, create, Observed(DATAVERSE, False), FIELDS, FIELDS), create_id="dv-y")
    assert p.target == "create"  # (it may as well never have been made)
    state = settle(state, create, Observed(DATAVERSE, False), p, Ack(None, None, "dv-y"))
    deleted = Observed(DATAVERSE, False, {}, None, None, "dv-x", T0)
    fo_now = seen(FO, 1, row_id=None, name="N", memo="M")
    assert plan(state, deleted, None, FIELDS, FIELDS).needs_target
    p = plan(state, deleted, fo_now, FIELDS, FIELDS)
    assert (p.target, p.back) == ("delete", "delete") and p.if_match == 'W/"1"', p
    state = settle(state, deleted, fo_now, p, Ack(2), Ack())
    assert state.fo.exists is False and state.dataverse.exists is False
    assert plan(state, create, None, FIELDS, FIELDS).stale  # the create, delivered again, is old news
    assert plan(state, deleted, None, FIELDS, FIELDS).target == "none"  # and so is the delete, replayed


def test_the_row_made_again_by_createmultiple_and_seen_since_as_made_goes_with_the_persons_delete() -> None:
    # CreateMultiple answers no version: the first event of the row made again, holding what dualwrite wrote,
    # shows dualwrite's own version, so the row is still as made when the delete of the first row comes.
    create = seen(FO, 1, row_id="fo-1", name="N", memo="M")
    made = replace(plan(EMPTY, create, Observed(DATAVERSE, False), FIELDS, FIELDS), create_id="dv-x")
    state = resolve(begin(EMPTY, create, Observed(DATAVERSE, False), made), Observed(DATAVERSE, False), create)
    again = replace(plan(state, create, Observed(DATAVERSE, False), FIELDS, FIELDS), create_id="dv-y")
    state = settle(state, create, Observed(DATAVERSE, False), again, Ack(None, None, "dv-y"))
    echo = seen(DATAVERSE, 3, row_id="dv-y", name="N", memo="M")
    state = settle(state, echo, None, plan(state, echo, None, FIELDS, FIELDS))
    assert state.dataverse.written == 3
    deleted = Observed(DATAVERSE, False, {}, None, None, "dv-x", T0)
    p = plan(state, deleted, seen(FO, 1, row_id=None, name="N", memo="M"), FIELDS, FIELDS)
    assert (p.target, p.back, p.back_if_match) == ("delete", "delete", 'W/"3"'), p
    edited = seen(DATAVERSE, 4, row_id="dv-y", name="N2", memo="M")  # a person's edit of it: that one wins
    state2 = settle(state, edited, None, plan(state, edited, seen(FO, 1, name="N", memo="M"), FIELDS, FIELDS))
    assert plan(state2, deleted, seen(FO, 1, row_id=None, name="N", memo="M"), FIELDS, FIELDS).target == "none"


def test_the_delete_of_the_row_a_cut_short_create_made_arriving_before_the_create_again_deletes_the_source() -> None:
    create = seen(FO, 1, row_id="fo-1", name="N", memo="M")
    p = replace(plan(EMPTY, create, Observed(DATAVERSE, False), FIELDS, FIELDS), create_id="dv-x")
    state = resolve(begin(EMPTY, create, Observed(DATAVERSE, False), p), Observed(DATAVERSE, False), create)
    deleted = Observed(DATAVERSE, False, {}, None, None, "dv-x", T0)
    fo_now = seen(FO, 1, row_id=None, name="N", memo="M")
    p = plan(state, deleted, fo_now, FIELDS, FIELDS)
    assert (p.target, p.back) == ("delete", "none"), p
    state = settle(state, deleted, fo_now, p, Ack(2))
    assert plan(state, create, None, FIELDS, FIELDS).stale


def test_a_ghost_delete_cut_short_too_leaves_the_source_row_known_gone_at_the_version_it_was_deleted_at() -> None:
    # The delete of the row a cut-short create made deletes the F&O row; that too is cut short. Resolved, the
    # F&O row is known gone at the version read before the delete (a delete's answer has none), so the F&O
    # create, delivered again, and F&O's delete event (of that version) are both old news.
    create = seen(FO, 1, row_id="fo-1", name="N", memo="M")
    p = replace(plan(EMPTY, create, Observed(DATAVERSE, False), FIELDS, FIELDS), create_id="dv-x")
    state = resolve(begin(EMPTY, create, Observed(DATAVERSE, False), p), Observed(DATAVERSE, False), create)
    deleted = Observed(DATAVERSE, False, {}, None, None, "dv-x", T0)
    fo_now = seen(FO, 1, row_id=None, name="N", memo="M")
    p = plan(state, deleted, fo_now, FIELDS, FIELDS)
    assert p.target == "delete"
    state = resolve(begin(state, deleted, fo_now, p), Observed(FO, False), Observed(DATAVERSE, False))
    assert state.fo.exists is False and state.fo.version == 1, state.fo
    assert plan(state, create, None, FIELDS, FIELDS).target == "none"
    assert plan(state, Observed(FO, False, {}, 1, None, "fo-1", T0), None, FIELDS, FIELDS).target == "none"


def test_the_delete_of_the_row_a_cut_short_create_made_loses_to_a_later_change_of_the_other_side() -> None:
    create = seen(FO, 1, row_id="fo-1", name="N", memo="M")
    p = replace(plan(EMPTY, create, Observed(DATAVERSE, False), FIELDS, FIELDS), create_id="dv-x")
    state = resolve(begin(EMPTY, create, Observed(DATAVERSE, False), p), Observed(DATAVERSE, False), create)
    deleted = Observed(DATAVERSE, False, {}, None, None, "dv-x", T0)
    edited = seen(FO, 3, row_id=None, name="N2", memo="M")  # F&O changed after the row was made of it
    p = plan(state, deleted, edited, FIELDS, FIELDS)
    assert p.target == "none" and p.back == "none", p


def test_a_row_a_person_made_after_deleting_the_one_a_cut_short_create_made_is_kept() -> None:
    # dualwrite creates the row in Dataverse and is killed before it records that; a person deletes it and
    # creates the record anew there (the key is unique: the new row is later than the delete). The restart
    # finds the person's row (or, in the second run, no row yet: the person makes it after the restart); the
    # delete event of the first row, coming after, must not take the person's row.
    create = seen(FO, 1, row_id="fo-1", name="N", memo="M")
    made = replace(plan(EMPTY, create, Observed(DATAVERSE, False), FIELDS, FIELDS), create_id="dv-x")
    persons = seen(DATAVERSE, 5, row_id="dv-p", name="N", memo="M")
    deleted = Observed(DATAVERSE, False, {}, None, None, "dv-x", T0)
    for after_restart in (persons, Observed(DATAVERSE, False)):
        state = resolve(begin(EMPTY, create, Observed(DATAVERSE, False), made), after_restart, create)
        p = plan(state, create, persons, FIELDS, FIELDS)
        assert p.target == "none", p
        state = settle(state, create, persons, p)
        p = plan(state, deleted, seen(FO, 1, name="N", memo="M"), FIELDS, FIELDS)
        assert p.target == "none" and p.back == "none", p


def test_an_fo_row_a_cut_short_create_made_and_a_person_deleted_is_known_by_its_version() -> None:
    # F&O chooses its row ids, so the row is known by its version: a delete of a row dualwrite never knew,
    # newer than all it knew before the create and older than the row it made again.
    state = synced()  # F&O v10, Dataverse v100
    gone = Observed(FO, False, {}, 10, None, "fo-1", T0)
    state = settle(state, gone, None, plan(state, gone, None, FIELDS, FIELDS), Ack(101))  # deleted on both sides
    made = seen(DATAVERSE, 102, row_id="dataverse-2", name="N1", memo="M1")
    p = plan(state, made, Observed(FO, False), FIELDS, FIELDS)
    assert p.target == "create"
    state = resolve(begin(state, made, Observed(FO, False), p), Observed(FO, False), made)
    p = plan(state, made, Observed(FO, False), FIELDS, FIELDS)
    state = settle(state, made, Observed(FO, False), p, Ack(14, 'W/"14"'))  # made again, as F&O v14
    older_row = Observed(FO, False, {}, 9, None, "fo-0", T0)
    assert plan(state, older_row, None, FIELDS, FIELDS).stale  # (a replay of a delete of long before)
    ghost_delete = Observed(FO, False, {}, 12, None, "fo-12", T0)
    dv_now = seen(DATAVERSE, 102, row_id="dataverse-2", name="N1", memo="M1")
    p = plan(state, ghost_delete, dv_now, FIELDS, FIELDS)
    assert (p.target, p.back, p.back_if_match) == ("delete", "delete", 'W/"14"'), p
    edited_again = seen(FO, 15, row_id=None, name="N2", memo="M1")
    state2 = settle(state, edited_again, dv_now, plan(state, edited_again, dv_now, FIELDS, FIELDS), Ack(103))
    assert plan(state2, ghost_delete, dv_now, FIELDS, FIELDS).stale  # the row made again was changed since


def test_a_delete_cut_short_by_a_crash_did_not_land_while_a_read_without_a_row_id_still_shows_the_row() -> None:
    # Found by the 100k chaos trace (customers|usmf|ch-01951): Dataverse deleted the record; dualwrite recorded
    # the delete towards F&O and was killed before it went out. F&O reads carry no row id, and the restart
    # took the row it read (no id, so "not the same row") for another row: the delete "landed", was never
    # made, and the F&O row stayed while Dataverse's was gone.
    state = synced()
    delete = Observed(DATAVERSE, False, {}, None, None, "dataverse-1", T0)
    p = plan(state, delete, None, FIELDS, FIELDS)
    assert p.target == "delete"
    crashed = begin(state, delete, None, p)
    fo_read = Observed(FO, True, {"name": digest("N0"), "memo": digest("M0")}, 10, 'W/"10"', None, T0)
    resolved = resolve(crashed, fo_read, Observed(DATAVERSE, False))
    assert resolved.fo.exists is True and resolved.pending is None
    assert plan(resolved, delete, None, FIELDS, FIELDS).target == "delete"  # the delete event, again, deletes


def test_a_row_a_person_made_anew_in_dataverse_gets_the_one_way_values_only_fo_decides() -> None:
    # Found by the model: a Dataverse person deletes the synced account and makes it again; the new row
    # lacks the F&O -> Dataverse field, which no Dataverse change may set: F&O's value is written to it.
    towards_dv = FIELDS | {"credit"}
    fo = seen(FO, 10, name="N0", memo="M0", credit="C1")
    dv = seen(DATAVERSE, 100, name="N0", memo="M0", credit="C1")
    p = plan(EMPTY, fo, dv, towards_dv, FIELDS)
    state = settle(EMPTY, fo, dv, p)
    made_anew = seen(DATAVERSE, 200, row_id="dataverse-2", name="N0", memo="M0", credit="")
    assert plan(state, made_anew, None, FIELDS, towards_dv).needs_target
    p = plan(state, made_anew, fo, FIELDS, towards_dv)
    assert p.back == "update" and p.back_fields == {"credit"} and p.target == "none"
    # The same value edited away in the row dualwrite knows is a person's one-way edit: left alone.
    edited = seen(DATAVERSE, 201, name="N0", memo="M0", credit="")
    p = plan(state, edited, fo, FIELDS, towards_dv)
    assert p.back == "none"


def test_successive_updates_of_a_synced_row_go_as_the_newest_with_one_write() -> None:
    state = synced()
    run = [seen(FO, 11, name="N1", memo="M0"), seen(FO, 12, name="N2", memo="M0"), seen(FO, 13, name="N2", memo="M3")]
    merged = coalesce(state, run, FIELDS)
    assert merged is run[-1]
    p = plan(state, merged, None, FIELDS, FIELDS)
    assert coalesced_ok(p) and p.target == "update" and p.fields == {"name", "memo"} and p.if_match == 'W/"100"'


@pytest.mark.parametrize(
    "why, run",
    [
        ("a field changed and changed back", [seen(FO, 11, name="N1", memo="M0"), seen(FO, 12, name="N0", memo="M0")]),
        ("a delete", [seen(FO, 11, name="N1", memo="M0"), seen(FO, 12, exists=False)]),
        ("another row", [seen(FO, 11, name="N1", memo="M0"), seen(FO, 12, row_id="fo-2", name="N2", memo="M0")]),
        ("a stale change", [seen(FO, 9, name="N1", memo="M0"), seen(FO, 12, name="N2", memo="M0")]),
        ("out of order", [seen(FO, 12, name="N1", memo="M0"), seen(FO, 11, name="N2", memo="M0")]),
        ("two sides", [seen(FO, 11, name="N1", memo="M0"), seen(DATAVERSE, 101, name="N2", memo="M0")]),
        ("other fields", [seen(FO, 11, name="N1"), seen(FO, 12, name="N2", memo="M0")]),
        ("one change", [seen(FO, 11, name="N1", memo="M0")]),
    ],
)
def test_changes_that_could_decide_otherwise_one_by_one_are_not_coalesced(why: str, run: list[Observed]) -> None:
    assert coalesce(synced(), run, FIELDS) is None, why


def test_a_record_not_known_on_both_sides_is_not_coalesced() -> None:
    run = [seen(FO, 11, name="N1", memo="M0"), seen(FO, 12, name="N2", memo="M0")]
    assert coalesce(EMPTY, run, FIELDS) is None


def test_a_coalesced_plan_with_a_conflict_or_a_write_back_goes_one_by_one() -> None:
    state = synced()
    run = [seen(FO, 11, at=1, name="N1", memo="M0"), seen(FO, 12, at=3, name="N2", memo="M0")]
    merged = coalesce(state, run, FIELDS)
    assert merged is not None
    dv_now = seen(DATAVERSE, 101, at=2, name="DV", memo="M0")  # a person renamed it at 2, between the two
    p = plan(state, merged, dv_now, FIELDS, FIELDS)
    assert p.conflicts == {"name"} and not coalesced_ok(p)  # decided per change, with each one's time
    assert not coalesced_ok(Plan(changed=frozenset({"name"})))  # changed, yet nothing to write: agreed elsewhere
    assert coalesced_ok(Plan())  # nothing changed at all


def test_an_old_event_is_not_taken_for_a_change_once_a_crash_left_its_field_without_a_version() -> None:
    """Found by the chaos run (seed 3): a crash cut a write to Dataverse short while a person edited the row
    there; the restart read the row, moved on (its version now 105), and kept the field as the person's
    change to sync, at no known Dataverse version. Then Dataverse's old event of version 101 came: its
    value was taken for the person's change, lost a conflict, and the F&O value was written back over the
    person's newer edit."""
    state = synced()
    change = seen(FO, 11, at=1, name="N1", memo="M0")
    crashed = begin(state, change, None, plan(state, change, None, FIELDS, FIELDS))
    resolved = resolve(crashed, seen(DATAVERSE, 105, at=5, name="N5", memo="M0"), None)
    assert resolved.fields["name"].dataverse == -1 and resolved.dataverse.version == 105
    late = seen(DATAVERSE, 101, at=2, name="N-old", memo="M0")  # an event from before the crash
    p = plan(resolved, late, seen(FO, 11, at=1, name="N1", memo="M0"), FIELDS, FIELDS)
    assert p.needs_source and p.back == "none" and p.target == "none"
    # The row as it is now decides: the person's edit of version 105.
    p = plan(resolved, seen(DATAVERSE, 105, at=5, name="N5", memo="M0"), None, FIELDS, FIELDS, current=True)
    assert p.target == "update" and p.fields == {"name"} and p.back == "none"


def test_after_a_crash_a_row_made_anew_over_dualwrites_write_back_gets_the_one_way_value_again() -> None:
    """Found by the protocol model: Dataverse's delete met a newer F&O change, so dualwrite made the row
    again in Dataverse (a write back) and was killed before settling; a person deleted that row and made
    it anew without the F&O-only field. After the restart the F&O change must still bring that field."""
    towards_dv = FIELDS | {"credit"}  # credit: F&O -> Dataverse only
    fo = seen(FO, 10, name="N0", memo="M0", credit="C0")
    state = settle(
        EMPTY,
        fo,
        seen(DATAVERSE, 100, name="N0", memo="M0", credit="C0"),
        plan(EMPTY, fo, seen(DATAVERSE, 100, name="N0", memo="M0", credit="C0"), towards_dv, FIELDS),
    )
    fo_now = seen(FO, 11, at=2, name="N0", memo="M0", credit="C1")  # a person changed credit
    gone = seen(DATAVERSE, 101, exists=False)
    p = plan(state, gone, fo_now, FIELDS, towards_dv)
    assert p.back == "create"
    crashed = begin(state, gone, fo_now, p)
    anew = seen(DATAVERSE, 105, row_id="dv-anew", name="N0", memo="M0", credit="")
    resolved = resolve(crashed, fo_now, anew, one_way_back={"credit"})
    again = plan(resolved, fo_now, None, towards_dv, FIELDS)  # F&O's change comes (again)
    assert again.target == "update" and "credit" in again.fields  # (failed before: "none")


def test_changes_of_a_row_whose_id_the_state_lacks_are_coalesced_only_when_they_share_one_id() -> None:
    """Rows synced by the initial sync have no F&O row id in the state until an event brings one."""
    from dataclasses import replace

    state = synced()
    state = replace(state, fo=replace(state.fo, row_id=None))
    same = [seen(FO, 11, row_id="fo-7", name="N1", memo="M0"), seen(FO, 12, row_id="fo-7", name="N2", memo="M0")]
    assert coalesce(state, same, FIELDS) is same[-1]
    remade = [seen(FO, 11, row_id="fo-7", name="N1", memo="M0"), seen(FO, 12, row_id="fo-8", name="N2", memo="M0")]
    assert coalesce(state, remade, FIELDS) is None


def test_a_read_that_names_no_row_does_not_make_the_changes_of_a_row_made_anew_look_stale() -> None:
    # Chaos run, seed 3 (CH-00177): a person deleted the F&O row and made it anew ("fo-2", versions 20 and 21);
    # before their events came, dualwrite read F&O for a Dataverse change. F&O's OData rows have no id, so the
    # read at version 21 was recorded under the old row's id, and the new row's own events (another row at a
    # version already held) were dropped as older incarnations: the person's two changes were lost.
    state = synced()
    dv_change = seen(DATAVERSE, 101, memo="M1", name="N0")
    fo_now = Observed(FO, True, {"name": digest("N2"), "memo": digest("M0")}, 21, 'W/"21"', None, T0)
    p = plan(state, dv_change, fo_now, FIELDS, FIELDS)
    assert p.target == "update" and p.fields == {"memo"}
    state = settle(state, dv_change, fo_now, p, Ack(22, 'W/"22"'))
    created = seen(FO, 20, row_id="fo-2", name="N1", memo="M0")
    renamed = seen(FO, 21, row_id="fo-2", name="N2", memo="M0")
    dv_version = 102
    for ev in (created, renamed):
        p = plan(state, ev, None, FIELDS, FIELDS)
        assert not p.stale, f"the change at version {ev.version} of the row made anew was taken for an older row's"
        if p.target == "update":
            state = settle(state, ev, None, p, Ack(dv_version, f'W/"{dv_version}"'))
            dv_version += 1
    assert state.fields["name"].value == digest("N2")  # the person's last change reached Dataverse
