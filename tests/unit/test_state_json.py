"""A record's sync state survives its changelog encoding (compact JSON of `to_json()`), pending writes included."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from dualwrite.merge import EMPTY, FieldState, Observed, Pending, Plan, RecordState, SideState, digest


def _round_trip(s: RecordState) -> RecordState:
    text = json.dumps(s.to_json(), separators=(",", ":"))
    assert ": " not in text and ", " not in text  # compact: what the changelog and the files hold
    return RecordState.from_json(json.loads(text))


KNOWN = RecordState(
    SideState(True, 41, 'W/"41"', None, 40),
    SideState(True, 7, 'W/"datetime\'2024-05-01T12:00:00Z\'"', "0b3c5d7e-0000-0000-0000-000000000001", 7),
    {"name": FieldState(digest("Contoso Ltd"), 41, 7), "group": FieldState(digest("10"))},
)
EV = Observed("dataverse", True, {"name": digest("Fabrikam")}, 8, 'W/"8"', "0b3c", datetime(2024, 5, 1, 12, tzinfo=UTC))
TARGET = Observed("fo", True, {"name": digest("Contoso Ltd")}, 41, None, None, None)


@pytest.mark.parametrize(
    "state",
    [
        EMPTY,
        KNOWN,
        RecordState(SideState(False, 12), SideState(None), {}),  # deleted on one side, unknown on the other
        RecordState(KNOWN.fo, KNOWN.dataverse, KNOWN.fields, Pending(EV, TARGET, Plan("update", frozenset({"name"})))),
        RecordState(
            KNOWN.fo,
            KNOWN.dataverse,
            KNOWN.fields,
            Pending(
                EV,
                None,
                Plan(
                    "create",
                    frozenset({"name", "group"}),
                    None,
                    "update",
                    frozenset({"group"}),
                    'W/"41"',
                    agreed=frozenset({"name"}),
                    back_refused=True,
                ),
            ),
        ),
    ],
    ids=["empty", "known", "deleted", "pending-update", "pending-with-back-write"],
)
def test_state_round_trips_through_its_json(state: RecordState) -> None:
    assert _round_trip(state) == state


def test_a_pending_delete_keeps_its_target_etag() -> None:
    gone = Observed("fo", False, {}, 42, None, None, datetime(2024, 5, 2, tzinfo=UTC))
    s = RecordState(KNOWN.fo, KNOWN.dataverse, KNOWN.fields, Pending(gone, None, Plan("delete", if_match='W/"7"')))
    back = _round_trip(s)
    assert back == s and back.pending is not None and back.pending.plan.if_match == 'W/"7"'
