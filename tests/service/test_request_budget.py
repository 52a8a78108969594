"""The Dataverse request limit of the application user: kept to, not run into.

The stand-in enforces the documented per-user limit (scaled down in time: 300 requests per 15 s here); the
components share it by their configured shares. A burst of F&O changes must reach Dataverse without
the service ever answering dualwrite 429, and an idle stack must poll less often.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from dualwrite.budget import RequestBudget
from wiring.stack import CLIENT_ID, LocalStack, eventually

pytestmark = pytest.mark.service

LIMIT, WINDOW_S = 300, 15.0  # the real rate (6,000 per 300 s), in a shorter window


def _requests(stack: LocalStack) -> tuple[int, int]:
    """(requests, 429s) of dualwrite's application user so far."""
    stats = stack.stats("dataverse")
    return stats.get("requests_by", {}).get(CLIENT_ID, 0), stats.get("throttled", {}).get(CLIENT_ID, 0)


def _names(dv: httpx.Client, numbers: list[str]) -> dict[str, str]:
    rows = dv.get("accounts", params={"$select": "accountnumber,name"}).json().get("value", [])
    return {r["accountnumber"]: r["name"] for r in rows if r["accountnumber"] in numbers}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = LocalStack.start(
        Path(tmp_path_factory.mktemp("budget")),
        dataverse_settings={"max_requests": LIMIT, "window_s": WINDOW_S},
        dataverse={"budget": {"requests": LIMIT, "window_s": WINDOW_S}},
    )
    try:
        yield s
    finally:
        s.stop()


def test_a_burst_of_changes_reaches_dataverse_without_a_429(limited: LocalStack) -> None:
    fo = limited.user_client("fo")
    watcher = limited.user_client("dataverse", "budget-watcher")  # a person's limit of its own
    numbers = [f"US-{i:03d}" for i in range(1, 21)]
    eventually(lambda: len(_names(watcher, numbers)) == 20, timeout_s=90, interval_s=1.0, what="seed synced")
    start, _ = _requests(limited)
    consumer_start, t0 = _consumer_requests(limited), time.monotonic()
    sent: dict[str, str] = {}
    for i in range(200):  # 200 changes in about 4 s: far more than one request each could carry
        number = numbers[i % 20]
        sent[number] = f"Budget {i}"
        fo.patch(
            f"CustomersV3(dataAreaId='usmf',CustomerAccount='{number}')", json={"OrganizationName": sent[number]}
        ).raise_for_status()
        time.sleep(0.02)
    eventually(lambda: _names(watcher, numbers) == sent, timeout_s=90, interval_s=1.0, what="every change in Dataverse")
    elapsed = time.monotonic() - t0
    used, throttled = _requests(limited)
    spent = _consumer_requests(limited) - consumer_start
    assert throttled == 0, f"Dataverse answered dualwrite 429 {throttled} times ({used - start} requests)"
    # The consumer kept to its share: what its bucket held at the start plus its rate since (the producer's
    # polls, on the same user, keep to theirs). Its requests are bounded by time, not by changes: near the
    # share each one carried several changes.
    b = limited.cfg.dataverse.budget
    share = RequestBudget(b.requests, b.window_s, b.shares["consumer"], b.headroom)
    assert spent <= share.capacity + share.rate * elapsed + 2, f"{spent} consumer requests in {elapsed:.1f} s"
    assert spent <= 0.6 * len(range(200)), f"{spent} consumer requests for 200 changes: the batches did not grow"


def test_an_idle_stack_polls_less_often(tmp_path_factory: pytest.TempPathFactory) -> None:
    stack = LocalStack.start(Path(tmp_path_factory.mktemp("idle")))
    try:
        watcher = stack.user_client("dataverse", "budget-watcher")
        eventually(lambda: _names(watcher, ["US-020"]), timeout_s=90, interval_s=1.0, what="seed synced")
        time.sleep(3)  # the seed's writes and their change-tracking reads are done
        before, _ = _requests(stack)
        time.sleep(8)
        used = _requests(stack)[0] - before
        # One $batch probe every 0.2 s (the local poll interval) would be 40; idle, it backs off to 0.8 s.
        assert used <= 16, f"{used} requests in 8 idle seconds"
    finally:
        stack.stop()


def _consumer_requests(stack: LocalStack) -> float:
    """The consumer's own Dataverse requests so far (its metric: the producer polls on the same user)."""
    text = httpx.get(f"{stack.components['consumer'].ops_url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith('dualwrite_dataverse_requests_total{component="consumer"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_records_waiting_for_a_row_not_synced_yet_cost_no_reads_of_their_own(
    limited: LocalStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """New customers of a customer group the (paused) groups map has not synced: while they wait, each
    retry round asks for the group once (a miss is remembered for a second), not for every customer's row."""
    fo, watcher = limited.user_client("fo"), limited.user_client("dataverse", "budget-watcher")
    config = tmp_path_factory.mktemp("cfg") / "config.yaml"
    config.write_text(yaml.safe_dump(limited.config.model_dump(mode="json")))

    def cli(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "wiring.cli", *args, "--config", str(config)], check=True, timeout=60)

    cli("map", "pause", "customer-groups")
    try:
        group = {"dataAreaId": "usmf", "CustomerGroupId": "WAIT", "Description": "Later"}
        assert fo.post("CustomerGroups", json=group).status_code == 201
        numbers = [f"WAIT-{i:02d}" for i in range(10)]
        for n in numbers:
            fo.post(
                "CustomersV3",
                json={"dataAreaId": "usmf", "CustomerAccount": n, "OrganizationName": n, "CustomerGroupId": "WAIT"},
            ).raise_for_status()
        time.sleep(3)  # they are in the consumer's retries now
        before = _consumer_requests(limited)
        time.sleep(10)
        waiting = _consumer_requests(limited) - before
        assert _names(watcher, numbers) == {}
    finally:
        cli("map", "resume", "customer-groups")
    eventually(lambda: len(_names(watcher, numbers)) == 10, timeout_s=90, interval_s=1.0, what="the customers")
    # Each partition's retry round asks the group once at most (16 measured); reading the ten customers' own
    # rows on every round too made it 79.
    assert waiting <= 30, f"{waiting:.0f} requests in 10 s for ten customers waiting on one group"
