"""The CI-sized chaos run: 5,000 changes in a minute under every kind of fault, judged by its oracle.

`dualwrite chaos --changes 100000 --seconds 1200` is the full-size run (outside CI); a failing run
prints its seed, and `DUALWRITE_CHAOS_SEED=<seed> pytest tests/chaos/test_chaos_run.py` replays its schedule.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from wiring.chaos import run

pytestmark = pytest.mark.service


@pytest.mark.timeout(900)
def test_5000_changes_under_faults_lose_nothing_duplicate_nothing_and_stop(tmp_path: Path) -> None:
    seed = int(os.environ.get("DUALWRITE_CHAOS_SEED", "3"))
    code = run(5000, 60.0, seed, tmp_path)
    summary = json.loads((tmp_path / "chaos-summary.json").read_text())
    if code != 0:  # what each component said last, for finding out from a CI log alone what went wrong
        for log in sorted(tmp_path.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()
            print(f"--- {log.name}: last lines of {len(lines)}")
            print("\n".join(line[:300] for line in lines[-25:]))
    assert code == 0, f"seed {seed}: {summary['failures']}"
    # The run did what it says: every kind of fault and poison happened, and the records were checked.
    kinds = {k.split()[0] for k in summary["faults"]}
    assert {"kill", "freeze", "pause", "rebalance"} <= kinds, summary["faults"]
    injected = {k for side in summary["faults_by_standins"].values() for k in side}
    assert {"503_before", "502_after", "429", "dropped", "slow"} <= injected, summary["faults_by_standins"]
    assert summary["poison"].get("not Avro") and summary["poison"].get("malformed data event"), summary["poison"]
    assert summary["records"] >= 200 and summary["wrong_records"] == 0 and summary["reconcile_exit"] == 0
