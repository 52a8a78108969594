"""The loss paths a review found (issue 9), each as a user would meet it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from dualwrite import kafka
from standins.fo import event_json
from wiring.stack import LocalStack, eventually
from wiring.stack import dv_account as account
from wiring.stack import fo_customer as customer

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = LocalStack.start(
        tmp_path_factory.mktemp("loss"),
        # A slow change-tracking poll widens the windows these tests aim at (as a busy org would).
        dataverse_producer={"poll_interval_s": 1.0},
        consumer={"retry": {"initial_backoff_s": 0.2, "max_backoff_s": 0.5, "missing_reference_timeout_s": 60}},
    )
    try:
        yield s
    finally:
        s.stop()


def new_customer(fo: httpx.Client, number: str, group: str = "30") -> None:
    body = {
        "dataAreaId": "usmf",
        "CustomerAccount": number,
        "OrganizationName": f"Org {number}",
        "CustomerGroupId": group,
        "SalesCurrencyCode": "USD",
        "PartyType": "Organization",
    }
    resp = fo.post("CustomersV3", json=body)
    assert resp.status_code == 201, resp.text


def cli(stack: LocalStack, tmp_path: Path, *args: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(stack.cfg.model_dump(mode="json")))
    subprocess.run(
        [sys.executable, "-m", "wiring.cli", *args, "--config", str(config)], check=True, capture_output=True
    )


def test_a_map_paused_while_a_partition_waits_for_a_retry_loses_nothing(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client, tmp_path: Path
) -> None:
    """Point 1: the partition waits for a missing reference when its map is paused; the backoff ends
    while the map is still paused; later changes arrive; on resume every change is applied."""
    cli(stack, tmp_path, "map", "pause", "customer-groups")
    assert fo.post("CustomerGroups", json={"dataAreaId": "usmf", "CustomerGroupId": "66"}).status_code == 201
    new_customer(fo, "T-HOLD-0", group="66")  # waits: group 66 is not in Dataverse
    time.sleep(1.0)  # the partition is in its retry backoff
    cli(stack, tmp_path, "map", "pause", "customers")
    time.sleep(2.0)  # the backoffs end while the map is paused
    made = [f"T-HOLD-{i}" for i in range(1, 13)]  # spread over every partition
    for number in made:
        new_customer(fo, number)
    time.sleep(2.0)
    cli(stack, tmp_path, "map", "resume", "customer-groups")
    cli(stack, tmp_path, "map", "resume", "customers")
    for number in ["T-HOLD-0", *made]:
        eventually(lambda n=number: account(dv, n), timeout_s=60, what=f"{number} in Dataverse")


def test_quick_successive_edits_on_one_side_end_with_the_last(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client
) -> None:
    """Point 2: dualwrite's own earlier write is no person's edit: a newer F&O edit never loses to it."""
    number = "US-016"
    eventually(lambda: account(dv, number), what=f"{number} in Dataverse")
    for i in range(12):
        for value in (f"Q{i}a", f"Q{i}b"):
            r = fo.patch(f"CustomersV3(dataAreaId='usmf',CustomerAccount='{number}')", json={"CreditRating": value})
            assert r.status_code == 204
            time.sleep(0.04)
        eventually(
            lambda v=f"Q{i}b": (
                (account(dv, number) or {}).get("msdyn_creditrating") == v
                and (customer(fo, number) or {}).get("CreditRating") == v
            ),
            what=f"round {i}: the last edit on both sides",
        )
        time.sleep(0.3 + (i % 4) * 0.25)  # land the edits at different points of the second


def test_a_persons_dataverse_edit_survives_dualwrite_writing_the_row_before_the_next_poll(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client
) -> None:
    """Point 5: change tracking shows the row last modified by dualwrite; it still holds the person's edit."""
    for i, number in enumerate(["US-017", "US-018", "US-019"]):
        row = eventually(lambda n=number: account(dv, n), what=f"{number} in Dataverse")
        memo = f"person's memo {i}"
        assert dv.patch(f"accounts({row['accountid']})", json={"description": memo}).status_code == 204
        r = fo.patch(f"CustomersV3(dataAreaId='usmf',CustomerAccount='{number}')", json={"CreditRating": f"R{i}"})
        assert r.status_code == 204  # dualwrite writes the rating to the same Dataverse row at once
        eventually(
            lambda n=number, m=memo: (customer(fo, n) or {}).get("SalesMemo") == m,
            what=f"{number}: the person's Dataverse memo in F&O",
        )
        eventually(lambda n=number, v=f"R{i}": (account(dv, n) or {}).get("msdyn_creditrating") == v, what="rating")


def test_the_echo_of_dualwrites_own_delete_does_not_delete_a_row_made_again(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client
) -> None:
    """Point 6: F&O deletes, dualwrite deletes in Dataverse, F&O makes the row again before Dataverse's
    delete comes back through change tracking: the row stays on both sides."""
    for i in range(3):
        number = f"T-AGAIN-{i}"
        new_customer(fo, number)
        eventually(lambda n=number: account(dv, n), what=f"{number} in Dataverse")
        assert fo.delete(f"CustomersV3(dataAreaId='usmf',CustomerAccount='{number}')").status_code == 204
        eventually(lambda n=number: account(dv, n) is None, what=f"{number} deleted in Dataverse")
        new_customer(fo, number)  # again, within the poll interval
        eventually(lambda n=number: account(dv, n), what=f"{number} again in Dataverse")
    time.sleep(3.0)  # the deletes' echoes come back through change tracking
    stack.settle()
    for i in range(3):
        assert customer(fo, f"T-AGAIN-{i}") is not None, f"T-AGAIN-{i} deleted in F&O by the echo"
        assert account(dv, f"T-AGAIN-{i}") is not None


def test_an_older_delivery_of_a_data_event_does_not_bring_an_old_value_back(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client
) -> None:
    """Point 7: F&O retries an earlier delivery after a newer change was applied."""
    number = "US-020"
    assert (
        fo.patch(f"CustomersV3(dataAreaId='usmf',CustomerAccount='{number}')", json={"CreditRating": "OLD"}).status_code
        == 204
    )
    eventually(lambda: (account(dv, number) or {}).get("msdyn_creditrating") == "OLD", what="OLD in Dataverse")
    events = httpx.get(f"{stack.servers['fo'].url}/_standin/events", params={"after": 0, "limit": 100000}).json()
    old = [e["payload"] for e in events["events"] if json.dumps(e["payload"]).find('"OLD"') >= 0][-1]
    assert (
        fo.patch(f"CustomersV3(dataAreaId='usmf',CustomerAccount='{number}')", json={"CreditRating": "NEW"}).status_code
        == 204
    )
    eventually(lambda: (account(dv, number) or {}).get("msdyn_creditrating") == "NEW", what="NEW in Dataverse")
    resp = httpx.post(stack.event_url, content=event_json(old).encode(), headers={"Content-Type": "application/json"})
    assert resp.status_code == 200, resp.text
    stack.settle()
    time.sleep(1.5)
    assert (account(dv, number) or {}).get("msdyn_creditrating") == "NEW"
    assert (customer(fo, number) or {}).get("CreditRating") == "NEW"


def test_an_initial_sync_page_read_before_a_live_change_and_applied_after_it_is_stale(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client
) -> None:
    """Point 7: a snapshot row read before a live change, published after the live change was applied."""
    from dualwrite.publish import Publisher
    from dualwrite.rows import snapshot_event

    number = "US-021"
    m = stack.maps["customers"]
    page = [
        r
        for r in fo.get("CustomersV3", params={"cross-company": "true"}).json()["value"]
        if r["CustomerAccount"] == number
    ]
    assert (
        fo.patch(
            f"CustomersV3(dataAreaId='usmf',CustomerAccount='{number}')", json={"CreditRating": "LIVE"}
        ).status_code
        == 204
    )
    eventually(lambda: (account(dv, number) or {}).get("msdyn_creditrating") == "LIVE", what="LIVE in Dataverse")
    publisher = Publisher(stack.cfg, "fo", {m.name: m})
    try:
        event = snapshot_event(publisher, m, page[0], stack.cfg.companies)
        assert event is not None
        publisher.publish([event])
    finally:
        publisher.close()
    stack.wait_applied(
        kafka.group_id(stack.cfg.kafka.topic_prefix), [kafka.map_topics(stack.cfg.kafka.topic_prefix, m)["fo"]]
    )
    assert (account(dv, number) or {}).get("msdyn_creditrating") == "LIVE"


def test_a_rebalance_starts_a_waiting_records_retries_afresh(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client, tmp_path: Path
) -> None:
    """Point 10: after a rebalance, a change waiting for a missing reference waits its whole timeout
    (8 s) again with its partition's owner; it is not dead-lettered at once for time spent before."""
    from wiring.components import build

    stack.stop_components(("consumer",))
    fast = stack.cfg.model_copy(
        update={
            "consumer": stack.cfg.consumer.model_copy(
                update={
                    "retry": stack.cfg.consumer.retry.model_copy(
                        update={"missing_reference_timeout_s": 8.0, "initial_backoff_s": 0.2, "max_backoff_s": 0.5}
                    )
                }
            )
        }
    )
    first = build("consumer", fast, stack.maps)
    first.start()
    second = None
    try:
        cli(stack, tmp_path, "map", "pause", "customer-groups")
        assert fo.post("CustomerGroups", json={"dataAreaId": "usmf", "CustomerGroupId": "55"}).status_code == 201
        waiting = [f"T-REB-{i}" for i in range(6)]  # some in every partition
        for number in waiting:
            new_customer(fo, number, group="55")
        time.sleep(3.0)  # they wait for group 55
        state_dir = fast.consumer.state_dir.parent / "second-consumer-state"
        second = build(
            "consumer",
            fast.model_copy(update={"consumer": fast.consumer.model_copy(update={"state_dir": state_dir})}),
            stack.maps,
        )
        second.start()  # a rebalance: partitions move, and come back when it stops
        eventually(second.ready, timeout_s=30, what="the second consumer assigned")
        second.stop()
        second = None
        time.sleep(3.0)  # the partitions come back to the first consumer
        # Over 8 s since the first failures, but not since the rebalance: nothing may be dead yet.
        cli(stack, tmp_path, "map", "resume", "customer-groups")
        for number in waiting:
            eventually(lambda n=number: account(dv, n), timeout_s=30, what=f"{number} in Dataverse")
        topic = kafka.map_topics(stack.cfg.kafka.topic_prefix, stack.maps["customers"])["fo"]
        from dualwrite import dlq

        dead = [
            d for d in dlq.read_all(stack.cfg.kafka, kafka.dlq_topic(topic)) if (d.key or b"").startswith(b"usmf|t-reb")
        ]
        assert dead == []
    finally:
        if second is not None:
            second.stop()
        first.stop()
        stack.start_components(("consumer",))
