"""Faults: nothing is lost, nothing is written twice, and the sync catches up by itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from dualwrite import kafka
from dualwrite.metrics import REGISTRY
from wiring.stack import SEEDED_DATAVERSE_ROWS, SEEDED_EQUAL_CURRENCIES, LocalStack, eventually

pytestmark = pytest.mark.chaos


def accounts(dv: httpx.Client, prefix: str) -> set[str]:
    rows = dv.get("accounts", params={"$select": "accountnumber", "$filter": f"startswith(accountnumber,'{prefix}')"})
    return {r["accountnumber"] for r in rows.json()["value"]}


def create_customers(fo: httpx.Client, prefix: str, n: int) -> set[str]:
    made = set()
    for i in range(n):
        number = f"{prefix}{i:03d}"
        resp = fo.post(
            "CustomersV3",
            json={
                "dataAreaId": "usmf",
                "CustomerAccount": number,
                "OrganizationName": number,
                "CustomerGroupId": "10",
                "SalesCurrencyCode": "USD",
                "PartyType": "Organization",
            },
        )
        assert resp.status_code == 201, resp.text
        made.add(number)
    return made


def consumer_outcomes(direction: str) -> dict[str, float]:
    """Records counted by this process's consumers in `direction`, per outcome, summed over maps."""
    totals: dict[str, float] = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == "dualwrite_consumer_records_total" and sample.labels.get("direction") == direction:
                outcome = sample.labels["outcome"]
                totals[outcome] = totals.get(outcome, 0) + sample.value
    return totals


@pytest.fixture()
def stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    options: dict[str, Any] = getattr(request, "param", {})
    s = LocalStack.start(tmp_path, **options)
    try:
        yield s
    finally:
        s.stop()


def test_broker_outage_loses_nothing(stack: LocalStack) -> None:
    fo, dv = stack.user_client("fo"), stack.user_client("dataverse")
    eventually(lambda: len(accounts(dv, "US-")) == 25, timeout_s=30, what="seed synced")
    os.kill(stack.broker.pid, signal.SIGSTOP)
    try:
        made = create_customers(fo, "FRZ-", 10)  # F&O keeps these in its outbox while we cannot publish
        time.sleep(8)  # longer than the consumer session timeout
    finally:
        os.kill(stack.broker.pid, signal.SIGCONT)
    eventually(lambda: accounts(dv, "FRZ-") == made, timeout_s=90, what="every change made during the outage")
    assert stack.writes_by("fo", "dualwrite") == 0


@pytest.mark.parametrize(
    "stack",
    [
        {
            # The service allows less than the budget dualwrite was configured with (a misconfigured or
            # shared application user): 429s happen anyway, and must be waited out.
            "dataverse_settings": {"max_requests": 40, "window_s": 2},
            "dataverse": {"budget": {"requests": 60000}},
            "dataverse_producer": {"poll_interval_s": 1.0},
        }
    ],
    indirect=True,
)
@pytest.mark.timeout(600)
def test_dataverse_throttling_is_waited_out(stack: LocalStack) -> None:
    dead_before = consumer_outcomes("fo->dataverse").get("dead_lettered", 0)
    # The test's own reads run as another user, with a budget of their own; keep them gentle anyway.
    eventually(
        lambda: stack.dataverse_counts(list(SEEDED_DATAVERSE_ROWS)) == SEEDED_DATAVERSE_ROWS,
        timeout_s=300,  # 20 requests/s for every part of the stack: slow on a loaded 2-core machine
        interval_s=1.0,
        what="every seeded row despite 429s",
    )
    throttled = stack.stats("dataverse")["throttled"].get("dualwrite", 0)
    assert throttled > 0, "the stand-in's limit was never hit, so this test proved nothing"
    # 429s are waited out (Retry-After), never dead-lettered, whichever map's batch they hit.
    assert consumer_outcomes("fo->dataverse").get("dead_lettered", 0) == dead_before


@pytest.mark.parametrize("stack", [{"with_components": False}], indirect=True)
def test_consumer_killed_mid_stream_replays_without_duplicates(stack: LocalStack, tmp_path: Path) -> None:
    stack.start_components(("fo-producer", "dataverse-producer"))
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(stack.config.model_dump(mode="json")))
    fo, dv = stack.user_client("fo"), stack.user_client("dataverse")

    def consumer() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "wiring.cli", "run", "consumer", "--config", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

    log = (tmp_path / "consumer.log").open("ab")

    proc = consumer()
    try:
        eventually(lambda: len(accounts(dv, "US-")) > 5, timeout_s=60, what="the consumer to start applying")
        proc.send_signal(signal.SIGKILL)  # a crash: no clean shutdown, no final commit
        proc.wait()
        made = create_customers(fo, "KIL-", 20)
        proc = consumer()
        eventually(lambda: accounts(dv, "KIL-") == made, timeout_s=90, what="the new customers after the restart")
        # Every seeded row of every map has arrived (tansu under-reports high watermarks, so the
        # consumer's lag can read 0 while the end of a batch is still being applied).
        expected = {**SEEDED_DATAVERSE_ROWS, "accounts": SEEDED_DATAVERSE_ROWS["accounts"] + len(made)}
        eventually(lambda: stack.dataverse_counts(list(expected)) == expected, timeout_s=90, what="every seeded row")
        topics = [kafka.map_topics(stack.config.kafka.topic_prefix, m)["fo"] for m in stack.maps.values()]
        group = kafka.group_id(stack.config.kafka.topic_prefix)
        stack.wait_applied(group, topics)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    # Replayed records found Dataverse already equal and wrote nothing: exactly one write per row.
    # The seeded rows of every map (less the currencies Dataverse already holds equal) + the new ones.
    rows = sum(expected.values()) - SEEDED_EQUAL_CURRENCIES
    assert stack.writes_by("dataverse", "dualwrite") == rows, stack.stats("dataverse")
    assert stack.writes_by("fo", "dualwrite") == 0
