"""A plan a crash cut short is resolved once: what was decided is recorded before anything else happens."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from consumers.apply import Applier, Change, _Work
from dualwrite import merge
from dualwrite.envelope import ChangeEvent, Op, Origin, Side
from dualwrite.merge import DATAVERSE, FieldState, Observed, RecordState, SideState
from dualwrite.tablemap import load_maps


class Store:
    def __init__(self) -> None:
        self.puts: list[tuple[int, str, RecordState | None]] = []

    def get_many(self, partition: int, keys: Any) -> dict[str, RecordState]:
        return {}

    def put(self, items: Any) -> None:
        self.puts.extend(items)


def test_a_resolved_plan_is_recorded_at_once_even_when_the_change_then_needs_nothing() -> None:
    # Found by the 100k chaos trace (customers|usmf|ch-01951): the resolution of a cut-short delete was never
    # written (the change that came back was stale, so nothing was settled), and every later restart resolved
    # the same old plan again against what the sides held by then, and decided differently.
    m = load_maps()["customers"]
    fields = {"OrganizationName": FieldState(merge.digest("N0"), 10, 100)}
    state = RecordState(SideState(True, 10, 'W/"10"', "fo-1"), SideState(True, 100, 'W/"100"', "dv-1"), fields)
    delete = Observed(DATAVERSE, False, {}, None, None, "dv-1")
    p = merge.plan(state, delete, None, {"OrganizationName"}, {"OrganizationName"})
    crashed = merge.begin(state, delete, None, p)
    event = ChangeEvent(Op.DELETE, "accounts", "usmf", "usmf|C-1", datetime.now(UTC), Origin(Side.DATAVERSE), None)
    change = Change(m, event, 0)
    store = Store()
    applier = Applier({m.name: m}, {}, store)
    applier._read = lambda works, side_of: {}  # type: ignore[method-assign]  # both rows gone now
    work = _Work(change, crashed, event, Observed(DATAVERSE, False))
    applier._resolve_pending([work])
    assert work.state.pending is None and work.state.fo.exists is False
    assert store.puts == [(0, change.state_key, work.state)], "the resolution was not recorded"
