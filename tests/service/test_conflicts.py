"""Concurrent edits of the same record on both sides: at the end both sides hold the value the map's
conflict policy chose. The map is paused while both sides are edited, so both changes exist before
either is applied; resuming lets the consumers meet them."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from confluent_kafka import TopicPartition

from dualwrite import control, kafka
from dualwrite.tablemap import builtin_maps_dir
from wiring.stack import LocalStack, dv_company_id, eventually

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    maps = tmp_path_factory.mktemp("maps")
    for f in builtin_maps_dir().glob("*.yaml"):
        shutil.copy(f, maps / f.name)
    policies = {"payment-terms": "{source-of-truth: fo}", "vendor-groups": "{source-of-truth: dataverse}"}
    for name, policy in policies.items():
        path = maps / f"{name}.yaml"
        text = path.read_text()
        assert "conflict:\n  policy: last-writer-wins\n" in text
        path.write_text(text.replace("conflict:\n  policy: last-writer-wins\n", f"conflict: {policy}\n"))
    s = LocalStack.start(tmp_path_factory.mktemp("conflicts"), maps_dir=maps)
    try:
        yield s
    finally:
        s.stop()


def dv_row(dv: httpx.Client, entity_set: str, column: str, value: str) -> dict[str, Any] | None:
    cid = dv_company_id(dv)
    if not cid:
        return None
    rows = dv.get(entity_set, params={"$filter": f"{column} eq '{value}' and _msdyn_company_value eq {cid}"})
    found = rows.json()["value"]
    return found[0] if found else None


def fo_row(fo: httpx.Client, entity_set: str, **key: str) -> dict[str, Any] | None:
    keys = ",".join([*("dataAreaId='usmf'",), *(f"{k}='{v}'" for k, v in key.items())])
    resp = fo.get(f"{entity_set}({keys})")
    return resp.json() if resp.status_code == 200 else None


# Per record kind: F&O set, key field, compared field; Dataverse set, key column, compared column.
KINDS = {
    "customer": ("CustomersV3", "CustomerAccount", "CreditRating", "accounts", "accountnumber", "msdyn_creditrating"),
    "terms": ("PaymentTerms", "Name", "Description", "msdyn_paymentterms", "msdyn_name", "msdyn_description"),
    "vendor group": (
        "VendorGroups",
        "VendorGroupId",
        "Description",
        "msdyn_vendorgroups",
        "msdyn_vendorgroup",
        "msdyn_description",
    ),
}


def both_hold(fo: httpx.Client, dv: httpx.Client, kind: str, key: str, value: str) -> bool:
    """Both sides hold `value` in the compared field of the record."""
    fo_set, fo_key, fo_field, dv_set, dv_key, dv_field = KINDS[kind]
    f = fo_row(fo, fo_set, **{fo_key: key})
    d = dv_row(dv, dv_set, dv_key, key)
    return f is not None and d is not None and f[fo_field] == value and d[dv_field] == value


def set_paused(stack: LocalStack, map_name: str, paused: bool) -> None:
    control.set_state(stack.config.kafka, map_name, "paused" if paused else "running")
    loops = [stack.components["consumer"].loop]
    eventually(
        lambda: all((map_name in loop.control.paused) == paused for loop in loops),
        what=f"both consumers see {map_name} {'paused' if paused else 'running'}",
    )


def settled(probe: Any, what: str) -> None:
    """The probe holds, and still holds after both producers polled and both consumers ran again."""
    eventually(probe, what=what)
    time.sleep(1.5)
    assert probe(), f"{what}: changed again after it settled"


def edit_both(
    first: Any,
    second: Any,
) -> None:
    first()
    time.sleep(1.1)  # both systems keep change times in whole seconds (a tie goes to F&O)
    second()


def test_last_writer_wins_keeps_the_later_edit_whichever_side_made_it(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client
) -> None:
    a = eventually(lambda: dv_row(dv, "accounts", "accountnumber", "US-003"), what="US-003 in Dataverse")
    b = eventually(lambda: dv_row(dv, "accounts", "accountnumber", "US-004"), what="US-004 in Dataverse")
    set_paused(stack, "customers", True)
    try:
        # US-003: F&O first, Dataverse later -> Dataverse's value wins.
        edit_both(
            lambda: fo.patch("CustomersV3(dataAreaId='usmf',CustomerAccount='US-003')", json={"CreditRating": "FO"}),
            lambda: dv.patch(f"accounts({a['accountid']})", json={"msdyn_creditrating": "DV"}),
        )
        # US-004: Dataverse first, F&O later -> F&O's value wins.
        edit_both(
            lambda: dv.patch(f"accounts({b['accountid']})", json={"msdyn_creditrating": "DV"}),
            lambda: fo.patch("CustomersV3(dataAreaId='usmf',CustomerAccount='US-004')", json={"CreditRating": "FO"}),
        )
        time.sleep(0.6)  # the Dataverse producer polls (0.2 s) and publishes while the map is paused
    finally:
        set_paused(stack, "customers", False)

    settled(lambda: both_hold(fo, dv, "customer", "US-003", "DV"), "US-003 holds Dataverse's later edit on both sides")
    settled(lambda: both_hold(fo, dv, "customer", "US-004", "FO"), "US-004 holds F&O's later edit on both sides")


def test_source_of_truth_fo_wins_even_over_a_later_dataverse_edit(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client
) -> None:
    row = eventually(lambda: dv_row(dv, "msdyn_paymentterms", "msdyn_name", "Net45"), what="Net45 in Dataverse")
    set_paused(stack, "payment-terms", True)
    try:
        edit_both(
            lambda: fo.patch("PaymentTerms(dataAreaId='usmf',Name='Net45')", json={"Description": "from F&O"}),
            lambda: dv.patch(f"msdyn_paymentterms({row['msdyn_paymenttermid']})", json={"msdyn_description": "DV"}),
        )
        time.sleep(0.6)
    finally:
        set_paused(stack, "payment-terms", False)

    settled(lambda: both_hold(fo, dv, "terms", "Net45", "from F&O"), "Net45 holds F&O's edit on both sides")


def test_a_dataverse_edit_after_the_synced_fo_change_wins_even_where_fo_is_the_source_of_truth(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client
) -> None:
    """Not concurrent: F&O's edit is already in Dataverse when Dataverse edits, so Dataverse's edit saw it
    and is the later one. Source-of-truth decides only true conflicts; this is none, whatever the clock."""
    fo.patch("PaymentTerms(dataAreaId='usmf',Name='Net10')", json={"Description": "F&O says"})
    row = eventually(
        lambda: (
            (r := dv_row(dv, "msdyn_paymentterms", "msdyn_name", "Net10"))
            and r["msdyn_description"] == "F&O says"
            and r
        ),
        what="F&O's edit in Dataverse",
    )
    dv.patch(f"msdyn_paymentterms({row['msdyn_paymenttermid']})", json={"msdyn_description": "Dataverse says"})

    settled(lambda: both_hold(fo, dv, "terms", "Net10", "Dataverse says"), "Net10 holds Dataverse's later edit")


def test_concurrent_edits_of_different_fields_both_survive(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client
) -> None:
    row = eventually(lambda: dv_row(dv, "accounts", "accountnumber", "US-008"), what="US-008 in Dataverse")
    set_paused(stack, "customers", True)
    try:
        fo.patch("CustomersV3(dataAreaId='usmf',CustomerAccount='US-008')", json={"CreditRating": "FO-RATING"})
        dv.patch(f"accounts({row['accountid']})", json={"description": "DV memo"})
        time.sleep(0.6)  # the Dataverse producer publishes while the map is paused
    finally:
        set_paused(stack, "customers", False)

    def both() -> bool:
        f = fo_row(fo, "CustomersV3", CustomerAccount="US-008")
        d = dv_row(dv, "accounts", "accountnumber", "US-008")
        return bool(
            f
            and d
            and f["CreditRating"] == d["msdyn_creditrating"] == "FO-RATING"
            and f["SalesMemo"] == d["description"] == "DV memo"
        )

    settled(both, "US-008 holds F&O's rating and Dataverse's memo on both sides")


def test_concurrent_edits_of_one_field_converge_and_settle(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client
) -> None:
    row = eventually(lambda: dv_row(dv, "accounts", "accountnumber", "US-009"), what="US-009 in Dataverse")
    for i in range(5):  # both sides edit the same field at once, again and again
        fo.patch("CustomersV3(dataAreaId='usmf',CustomerAccount='US-009')", json={"CreditRating": f"F{i}"})
        dv.patch(f"accounts({row['accountid']})", json={"msdyn_creditrating": f"D{i}"})

    def same() -> str | None:
        f = fo_row(fo, "CustomersV3", CustomerAccount="US-009")
        d = dv_row(dv, "accounts", "accountnumber", "US-009")
        return f["CreditRating"] if f and d and f["CreditRating"] == d["msdyn_creditrating"] else None

    value = eventually(same, what="both sides hold the same rating")
    assert value in {"F4", "D4"}, value  # one of the last edits, not an older one
    tags = (
        (fo_row(fo, "CustomersV3", CustomerAccount="US-009") or {}).get("@odata.etag"),
        (dv_row(dv, "accounts", "accountnumber", "US-009") or {}).get("@odata.etag"),
    )
    time.sleep(2.0)  # both producers polled, the consumer ran: nothing more is written (no ping-pong)
    assert (fo_row(fo, "CustomersV3", CustomerAccount="US-009") or {}).get("@odata.etag") == tags[0]
    assert (dv_row(dv, "accounts", "accountnumber", "US-009") or {}).get("@odata.etag") == tags[1]


def test_source_of_truth_dataverse_wins_even_over_a_later_fo_edit(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client
) -> None:
    row = eventually(lambda: dv_row(dv, "msdyn_vendorgroups", "msdyn_vendorgroup", "20"), what="vendor group 20")
    set_paused(stack, "vendor-groups", True)
    try:
        edit_both(
            lambda: dv.patch(f"msdyn_vendorgroups({row['msdyn_vendorgroupid']})", json={"msdyn_description": "DV"}),
            lambda: fo.patch("VendorGroups(dataAreaId='usmf',VendorGroupId='20')", json={"Description": "FO"}),
        )
        time.sleep(0.6)
    finally:
        set_paused(stack, "vendor-groups", False)

    settled(
        lambda: both_hold(fo, dv, "vendor group", "20", "DV"), "vendor group 20 holds Dataverse's edit on both sides"
    )


def test_edits_in_the_same_second_end_with_fo_s_value_on_both_sides(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client
) -> None:
    """Concurrent edits (the map is paused) in the same second: both systems keep whole seconds, so
    last-writer-wins has a tie, which F&O wins the same way from both sides."""
    row = eventually(lambda: dv_row(dv, "accounts", "accountnumber", "US-006"), what="US-006 in Dataverse")
    set_paused(stack, "customers", True)
    try:
        time.sleep(1.05 - time.time() % 1)  # start just after a whole second: both edits fall in it
        fo.patch("CustomersV3(dataAreaId='usmf',CustomerAccount='US-006')", json={"CreditRating": "T-FO"})
        dv.patch(f"accounts({row['accountid']})", json={"msdyn_creditrating": "T-DV"})
        time.sleep(0.6)
    finally:
        set_paused(stack, "customers", False)

    settled(lambda: both_hold(fo, dv, "customer", "US-006", "T-FO"), "US-006 holds F&O's value on both sides")


def test_an_old_event_replayed_does_not_overwrite_a_newer_value(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client
) -> None:
    """Re-deliver an F&O event after Dataverse changed the record: the old value must not come back."""
    fo.patch("CustomersV3(dataAreaId='usmf',CustomerAccount='US-005')", json={"SalesMemo": "old"})
    row = eventually(
        lambda: (r := dv_row(dv, "accounts", "accountnumber", "US-005")) and r["description"] == "old" and r,
        what="memo 'old' in Dataverse",
    )
    time.sleep(1.1)  # a later second: an edit in the same second as F&O's is a tie, which F&O wins
    dv.patch(f"accounts({row['accountid']})", json={"description": "new"})
    eventually(
        lambda: (r := fo_row(fo, "CustomersV3", CustomerAccount="US-005")) and r["SalesMemo"] == "new",
        what="memo 'new' in F&O",
    )
    # Replay the F&O topic of the customers map from the start: every old F&O event comes again.
    topic = kafka.map_topics(stack.config.kafka.topic_prefix, stack.maps["customers"])["fo"]
    stack.components["consumer"].stop()
    del stack.components["consumer"]
    c = kafka.consumer(stack.config.kafka, kafka.group_id(stack.config.kafka.topic_prefix))
    try:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        c.commit(offsets=[TopicPartition(topic, p, 0) for p in meta.partitions], asynchronous=False)
    finally:
        c.close()
    stack.start_components(("consumer",))
    group = kafka.group_id(stack.config.kafka.topic_prefix)
    stack.wait_applied(group, [topic])  # the replayed topic applied again
    settled(
        lambda: (d := dv_row(dv, "accounts", "accountnumber", "US-005")) is not None and d["description"] == "new",
        "Dataverse keeps the newer memo after the replay",
    )
    f = fo_row(fo, "CustomersV3", CustomerAccount="US-005")
    assert f is not None and f["SalesMemo"] == "new"
