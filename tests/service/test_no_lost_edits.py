"""No lost edits, as a user would try it: an edit on one side, seen on the other, edited there soon
after, must win on both sides every time, whatever the two clocks say; and a replayed old change
must not bring an old value back."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from dualwrite import dlq, kafka
from wiring.stack import LocalStack, eventually
from wiring.stack import dv_account as account
from wiring.stack import fo_customer as customer

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = LocalStack.start(
        tmp_path_factory.mktemp("edits"),
        consumer={"retry": {"initial_backoff_s": 0.05, "max_backoff_s": 0.5, "missing_reference_timeout_s": 3}},
    )
    try:
        yield s
    finally:
        s.stop()


def test_the_second_edit_wins_on_both_sides_every_time(stack: LocalStack, fo: httpx.Client, dv: httpx.Client) -> None:
    rng = random.Random(20261201)
    numbers = [f"US-{n:03d}" for n in range(10, 16)]
    ids = {n: eventually(lambda n=n: account(dv, n), what=f"{n} in Dataverse")["accountid"] for n in numbers}

    def on_fo(number: str, value: str) -> None:
        r = fo.patch(f"CustomersV3(dataAreaId='usmf',CustomerAccount='{number}')", json={"CreditRating": value})
        assert r.status_code == 204, r.text

    def on_dv(number: str, value: str) -> None:
        r = dv.patch(f"accounts({ids[number]})", json={"msdyn_creditrating": value})
        assert r.status_code == 204, r.text

    def fo_has(number: str, value: str) -> bool:
        return (customer(fo, number) or {}).get("CreditRating") == value

    def dv_has(number: str, value: str) -> bool:
        return (account(dv, number) or {}).get("msdyn_creditrating") == value

    for i in range(50):
        number = numbers[i % len(numbers)]
        fo_first = rng.random() < 0.5
        first, second = (on_fo, on_dv) if fo_first else (on_dv, on_fo)
        first_seen = dv_has if fo_first else fo_has
        a, b = f"A{i}", f"B{i}"
        first(number, a)
        eventually(lambda n=number, v=a, seen=first_seen: seen(n, v), what=f"round {i}: the first edit elsewhere")
        time.sleep(rng.uniform(0, 0.3))  # 0-300 ms later, as a person (or a plug-in) would
        second(number, b)
        eventually(
            lambda n=number, v=b: fo_has(n, v) and dv_has(n, v), timeout_s=30, what=f"round {i}: {b} on both sides"
        )
    # Once more after everything settled: no round's second edit was reverted later.
    stack.settle()
    for i in range(50 - len(numbers), 50):
        number = numbers[i % len(numbers)]
        assert fo_has(number, f"B{i}") and dv_has(number, f"B{i}"), f"round {i}: reverted after it settled"


def test_a_replayed_old_change_does_not_bring_an_old_value_back(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client, tmp_path: Path
) -> None:
    topic = kafka.map_topics(stack.cfg.kafka.topic_prefix, stack.maps["customers"])["fo"]
    body = {
        "dataAreaId": "usmf",
        "CustomerAccount": "T-OLD-1",
        "OrganizationName": "Old name",
        "CustomerGroupId": "30",
        "SalesCurrencyCode": "USD",
        "PartyType": "Organization",
    }
    assert fo.post("CustomersV3", json=body).status_code == 201
    eventually(lambda: account(dv, "T-OLD-1"), what="T-OLD-1 in Dataverse")
    # A change that cannot be applied yet (its customer group is not in Dataverse: that map is
    # paused) waits for the reference, then goes to the DLQ.
    config = _config(stack, tmp_path)
    cli = [sys.executable, "-m", "wiring.cli"]
    subprocess.run([*cli, "map", "pause", "customer-groups", "--config", config], check=True, capture_output=True)
    groups = kafka.map_topics(stack.cfg.kafka.topic_prefix, stack.maps["customer-groups"])["fo"]
    assert fo.post("CustomerGroups", json={"dataAreaId": "usmf", "CustomerGroupId": "77"}).status_code == 201
    old = fo.patch(
        "CustomersV3(dataAreaId='usmf',CustomerAccount='T-OLD-1')",
        json={"CustomerGroupId": "77", "OrganizationName": "OLD value"},
    )
    assert old.status_code == 204
    dlq_topic = kafka.dlq_topic(topic)
    eventually(
        lambda: any((d.key or b"").lower() == b"usmf|t-old-1" for d in dlq.read_all(stack.cfg.kafka, dlq_topic)),
        timeout_s=30,
        what="the old change in the DLQ",
    )
    subprocess.run([*cli, "map", "resume", "customer-groups", "--config", config], check=True, capture_output=True)
    stack.wait_applied(kafka.group_id(stack.cfg.kafka.topic_prefix), [groups])
    # A newer change is applied; then the old one is replayed from the DLQ, as an operator would.
    assert (
        fo.patch(
            "CustomersV3(dataAreaId='usmf',CustomerAccount='T-OLD-1')",
            json={"CustomerGroupId": "77", "OrganizationName": "NEW value"},
        ).status_code
        == 204
    )
    eventually(lambda: (account(dv, "T-OLD-1") or {}).get("name") == "NEW value", what="the new name in Dataverse")
    replayed = subprocess.run([*cli, "dlq", "replay", dlq_topic, "--config", config], capture_output=True, text=True)
    assert replayed.returncode == 0, replayed.stderr
    stack.wait_applied(kafka.group_id(stack.cfg.kafka.topic_prefix), [topic])
    assert (account(dv, "T-OLD-1") or {}).get("name") == "NEW value"
    assert (customer(fo, "T-OLD-1") or {}).get("OrganizationName") == "NEW value"


def _config(stack: LocalStack, tmp_path: Path) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(stack.cfg.model_dump(mode="json")))
    return str(path)
