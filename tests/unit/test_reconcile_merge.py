"""Reconcile's pure parts: the sort-merge of two key-ordered streams (pairs, partners found late, bounded
memory), the classification of a record through the map's normalisation, and which side a repair takes."""

from __future__ import annotations

from collections.abc import Iterator

from dualwrite.merge import FieldState, RecordState, SideState, digest
from dualwrite.tablemap import load_maps
from wiring.reconcile import Seen, classify, decide, merge

MAPS = load_maps()
CUSTOMERS = MAPS["customers"]
PRODUCTS = MAPS["products"]


def row(side: str, key: str, **values: str) -> Seen:
    return Seen(side, key.lower(), tuple(key.split("|")[1:]), values)


def test_merge_pairs_equal_keys_and_leaves_the_rest_alone() -> None:
    fo = [row("fo", "usmf|A"), row("fo", "usmf|B"), row("fo", "usmf|D")]
    dv = [row("dataverse", "usmf|B"), row("dataverse", "usmf|C"), row("dataverse", "usmf|D")]
    got = [(a.key if a else None, b.key if b else None) for a, b in merge(fo, dv)]
    assert sorted(got, key=str) == sorted(
        [("usmf|b", "usmf|b"), ("usmf|d", "usmf|d"), ("usmf|a", None), (None, "usmf|c")], key=str
    )


def test_merge_pairs_rows_two_services_sort_differently() -> None:
    """A collation that puts '-' before letters on one side only: the rows still pair up."""
    fo = [row("fo", "usmf|A-1"), row("fo", "usmf|AB")]
    dv = [row("dataverse", "usmf|AB"), row("dataverse", "usmf|A-1")]
    pairs = list(merge(fo, dv))
    assert all(a is not None and b is not None and a.key == b.key for a, b in pairs) and len(pairs) == 2


def test_merge_reads_the_streams_lazily() -> None:
    """Memory is bounded by what it holds, not by the table: it has read only a row ahead of what it yielded."""
    read = {"fo": 0, "dataverse": 0}

    def stream(side: str, n: int) -> Iterator[Seen]:
        for i in range(n):
            read[side] += 1
            yield row(side, f"usmf|K{i:07d}")

    pairs = merge(stream("fo", 1_000_000), stream("dataverse", 1_000_000))
    for _ in range(10):
        next(pairs)
    assert max(read.values()) <= 11


def test_classify_through_the_map() -> None:
    a, b = row("fo", "usmf|A", OrganizationName="x"), row("dataverse", "usmf|A", OrganizationName="x")
    assert classify(CUSTOMERS, a, b) is None
    c = row("dataverse", "usmf|A", OrganizationName="y")
    assert classify(CUSTOMERS, a, c) == ("differs", ["OrganizationName"])
    assert classify(CUSTOMERS, a, None) == ("only_fo", [])
    assert classify(CUSTOMERS, None, c) == ("only_dataverse", [])
    # products is F&O -> Dataverse only: a row that exists only in Dataverse is not the map's to sync
    assert classify(PRODUCTS, None, row("dataverse", "usmf|P")) == ("not_synced", [])


def test_the_side_that_changed_since_both_agreed_wins() -> None:
    agreed = digest("old")
    state = RecordState(SideState(True, 5), SideState(True, 7), {"OrganizationName": FieldState(agreed, 5, 7)})
    fo = row("fo", "usmf|A", OrganizationName=agreed)
    dv = row("dataverse", "usmf|A", OrganizationName=digest("new"))
    repair = decide(CUSTOMERS, "differs", ["OrganizationName"], fo, dv, state)
    assert (repair.op, repair.side) == ("row", "dataverse")
    repair = decide(CUSTOMERS, "differs", ["OrganizationName"], fo, dv, None)
    assert (repair.op, repair.side) == ("row", CUSTOMERS.initial_sync_master)  # no state: the master side


def test_a_row_the_other_side_had_is_deleted_not_made_again() -> None:
    had = RecordState(SideState(True, 5), SideState(True, 7))
    assert decide(CUSTOMERS, "only_fo", [], row("fo", "usmf|A"), None, had).to_json() == {
        "op": "delete",
        "side": "dataverse",
        "reason": "Dataverse deleted the row after dualwrite saw it there",
    }
    repair = decide(CUSTOMERS, "only_fo", [], row("fo", "usmf|A"), None, None)
    assert (repair.op, repair.side) == ("row", "fo")  # never there: created in Dataverse
    repair = decide(PRODUCTS, "only_fo", [], row("fo", "usmf|P"), None, had)
    assert (repair.op, repair.side) == ("row", "fo")  # a one-way map never deletes
