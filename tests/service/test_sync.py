"""Both directions over the real wire: HTTP stand-ins, a real broker, the real components."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from confluent_kafka import Producer

from dualwrite import dlq, kafka
from dualwrite.status import consumer_lag
from wiring.stack import EVENT_SECRET, LocalStack, dv_company_id, eventually

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, strict_maps_dir: Path) -> Iterator[LocalStack]:
    s = LocalStack.start(
        tmp_path_factory.mktemp("sync"),
        maps_dir=strict_maps_dir,
        consumer={
            "retry": {
                "initial_backoff_s": 0.05,
                "max_backoff_s": 0.5,
                "max_attempts": 3,
                "missing_reference_timeout_s": 4,
            }
        },
    )
    try:
        yield s
    finally:
        s.stop()


def account(dv: httpx.Client, number: str, company: str = "usmf") -> dict[str, Any] | None:
    cid = dv_company_id(dv, company)
    if not cid:
        return None
    resp = dv.get("accounts", params={"$filter": f"accountnumber eq '{number}' and _msdyn_company_value eq {cid}"})
    rows = resp.json()["value"]
    return rows[0] if rows else None


def customer(fo: httpx.Client, number: str, company: str = "usmf") -> dict[str, Any] | None:
    resp = fo.get(f"CustomersV3(dataAreaId='{company}',CustomerAccount='{number}')")
    return resp.json() if resp.status_code == 200 else None


def new_fo_customer(fo: httpx.Client, number: str, **fields: Any) -> None:
    body = {
        "dataAreaId": "usmf",
        "CustomerAccount": number,
        "OrganizationName": f"Org {number}",
        "CustomerGroupId": "30",
        "SalesCurrencyCode": "USD",
        "PartyType": "Organization",
        **fields,
    }
    resp = fo.post("CustomersV3", json=body)
    assert resp.status_code == 201, resp.text


def new_dv_account(dv: httpx.Client, number: str, **fields: Any) -> None:
    cid = eventually(lambda: dv_company_id(dv, "usmf"), what="company usmf in Dataverse")
    group = dv.get(
        "msdyn_customergroups", params={"$filter": f"msdyn_groupid eq '10' and _msdyn_company_value eq {cid}"}
    ).json()["value"][0]
    body = {
        "accountnumber": number,
        "name": f"Account {number}",
        "customertypecode": 3,
        "msdyn_company@odata.bind": f"/cdm_companies({cid})",
        "msdyn_customergroupid@odata.bind": f"/msdyn_customergroups({group['msdyn_customergroupid']})",
        "transactioncurrencyid@odata.bind": "/transactioncurrencies(isocurrencycode='USD')",
        **fields,
    }
    resp = dv.post("accounts", json=body)
    assert resp.status_code in (201, 204), resp.text


def dlq_records(stack: LocalStack, topic: str) -> list[dlq.DeadLetter]:
    return list(dlq.read_all(stack.config.kafka, kafka.dlq_topic(topic), idle_s=0.5))


def dead_lettered(stack: LocalStack, topic: str, key: str) -> list[dlq.DeadLetter]:
    """Wait until the record with `key` is in `topic`'s DLQ; its dead letters."""
    return eventually(
        lambda: [d for d in dlq_records(stack, topic) if (d.key or b"").lower() == key.lower().encode()],
        what=f"{key} in the DLQ of {topic}",
    )


def test_seeded_fo_data_arrives_in_dataverse_in_dependency_order(stack: LocalStack, dv: httpx.Client) -> None:
    eventually(lambda: dv_company_id(dv, "usmf") and dv_company_id(dv, "demf"), what="both companies")
    groups = eventually(
        lambda: len(dv.get("msdyn_customergroups").json()["value"]) >= 10 or None, what="customer groups"
    )
    assert groups

    def seeded() -> list[dict[str, Any]] | None:
        rows = dv.get("accounts", params={"$select": "accountnumber,name"}).json()["value"]
        return rows if len(rows) >= 50 else None

    accounts = eventually(seeded, timeout_s=30, what="50 seeded customers as accounts")
    us1 = account(dv, "US-001")
    assert us1 is not None and us1["customertypecode"] == 3 and us1["_msdyn_customergroupid_value"]
    assert {a["accountnumber"] for a in accounts} >= {f"US-{i:03d}" for i in range(1, 26)}


def test_fo_create_update_delete_reach_dataverse(stack: LocalStack, fo: httpx.Client, dv: httpx.Client) -> None:
    new_fo_customer(fo, "T-FO-1", PrimaryContactEmail="a@example.com", CreditLimit=1500.5, OnHoldStatus="Invoice")
    row = eventually(lambda: account(dv, "T-FO-1"), what="account T-FO-1")
    assert row["name"] == "Org T-FO-1" and row["emailaddress1"] == "a@example.com"
    assert float(row["creditlimit"]) == 1500.5 and row["msdyn_onholdstatus"] == 192350001
    assert row["_transactioncurrencyid_value"]

    resp = fo.patch("CustomersV3(dataAreaId='usmf',CustomerAccount='T-FO-1')", json={"OrganizationName": "Renamed"})
    assert resp.status_code == 204, resp.text
    eventually(lambda: (a := account(dv, "T-FO-1")) and a["name"] == "Renamed", what="rename in Dataverse")

    assert fo.delete("CustomersV3(dataAreaId='usmf',CustomerAccount='T-FO-1')").status_code == 204
    eventually(lambda: account(dv, "T-FO-1") is None, what="account deleted")


def test_dataverse_create_update_delete_reach_fo(stack: LocalStack, fo: httpx.Client, dv: httpx.Client) -> None:
    new_dv_account(dv, "T-DV-1", telephone1="+1 555 0100", msdyn_onholdstatus=192350002)
    row = eventually(lambda: customer(fo, "T-DV-1"), what="customer T-DV-1 in F&O")
    assert row["OrganizationName"] == "Account T-DV-1" and row["PrimaryContactPhone"] == "+1 555 0100"
    assert row["OnHoldStatus"] == "All" and row["CustomerGroupId"] == "10" and row["SalesCurrencyCode"] == "USD"
    assert row["PartyType"] == "Organization" and row["LanguageId"] == "en-us"

    acc = account(dv, "T-DV-1")
    assert acc is not None
    assert dv.patch(f"accounts({acc['accountid']})", json={"name": "Changed in CRM"}).status_code == 204
    eventually(
        lambda: (c := customer(fo, "T-DV-1")) and c["OrganizationName"] == "Changed in CRM", what="rename in F&O"
    )

    assert dv.delete(f"accounts({acc['accountid']})").status_code == 204
    eventually(lambda: customer(fo, "T-DV-1") is None, what="customer deleted in F&O")


def test_changes_written_by_dualwrite_do_not_come_back(stack: LocalStack, fo: httpx.Client, dv: httpx.Client) -> None:
    eventually(lambda: account(dv, "US-025"), what="seed synced")
    stack.settle()  # nothing of the seed or earlier tests still in flight
    fo_before, dv_before = stack.writes_by("fo", "dualwrite"), stack.writes_by("dataverse", "dualwrite")
    for i in range(5):
        new_fo_customer(fo, f"T-ECHO-{i}")
    for i in range(5):
        eventually(lambda i=i: account(dv, f"T-ECHO-{i}"), what=f"T-ECHO-{i}")
    # Give a would-be echo time to travel back: the Dataverse producer polls every 0.2 s.
    eventually(lambda: stack.writes_by("dataverse", "dualwrite") - dv_before >= 5, what="5 Dataverse writes")
    time.sleep(2.0)
    assert stack.writes_by("fo", "dualwrite") == fo_before, "dualwrite wrote its own change back to F&O"
    assert stack.writes_by("dataverse", "dualwrite") - dv_before == 5

    fo_before, dv_before = stack.writes_by("fo", "dualwrite"), stack.writes_by("dataverse", "dualwrite")
    for i in range(5, 8):
        new_dv_account(dv, f"T-ECHO-{i}")
    for i in range(5, 8):
        eventually(lambda i=i: customer(fo, f"T-ECHO-{i}"), what=f"T-ECHO-{i} in F&O")
    time.sleep(2.0)
    assert stack.writes_by("dataverse", "dualwrite") == dv_before, "dualwrite wrote its own change back to Dataverse"
    assert stack.writes_by("fo", "dualwrite") - fo_before == 3


def test_untranslatable_value_goes_to_dlq_and_later_records_flow(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client
) -> None:
    topic = kafka.topic(stack.config.kafka.topic_prefix, "fo", "CustomersV3")
    new_fo_customer(fo, "T-BAD-1", OnHoldStatus="Never")  # the test map has no Dataverse value for it
    new_fo_customer(fo, "T-GOOD-1")
    eventually(lambda: account(dv, "T-GOOD-1"), what="the record behind the bad one")
    letters = dead_lettered(stack, topic, "usmf|T-BAD-1")
    h = letters[0].headers
    assert h["dualwrite.error.class"] == "MappingError" and "Never" in h["dualwrite.error.message"]
    assert h["dualwrite.map"] == "customers" and h["dualwrite.original.topic"] == topic
    assert h["dualwrite.original.partition"].isdigit() and h["dualwrite.original.offset"].isdigit()
    assert account(dv, "T-BAD-1") is None


def test_target_rejection_goes_to_dlq(stack: LocalStack, fo: httpx.Client, dv: httpx.Client) -> None:
    topic = kafka.topic(stack.config.kafka.topic_prefix, "dataverse", "accounts")
    new_dv_account(dv, "T-LONG-1", name="N" * 150)  # Dataverse takes 160 characters, F&O only 100
    new_dv_account(dv, "T-OK-1")
    eventually(lambda: customer(fo, "T-OK-1"), what="the record behind the rejected one")
    letters = dead_lettered(stack, topic, "usmf|T-LONG-1")
    h = letters[0].headers
    assert h["dualwrite.error.class"] == "TargetRejectedError" and "400" in h["dualwrite.error.message"]
    assert h["dualwrite.direction"] == "dataverse->fo"


def test_poison_bytes_go_to_dlq(stack: LocalStack, fo: httpx.Client, dv: httpx.Client) -> None:
    topic = kafka.topic(stack.config.kafka.topic_prefix, "fo", "CustomersV3")
    p = Producer({"bootstrap.servers": stack.config.kafka.bootstrap_servers})
    p.produce(topic, key=b"usmf|POISON", value=b"\x00\x00\x00\x00\x63not avro at all")
    p.produce(topic, key=b"usmf|POISON2", value=b'{"json": "is not avro"}')
    assert p.flush(10) == 0
    new_fo_customer(fo, "T-AFTER-POISON")
    eventually(lambda: account(dv, "T-AFTER-POISON"), what="the record behind the poison")

    def poisoned() -> list[dlq.DeadLetter] | None:
        found = [d for d in dlq_records(stack, topic) if d.key in (b"usmf|POISON", b"usmf|POISON2")]
        return found if len(found) == 2 else None

    letters = eventually(poisoned, what="both poison records in the DLQ")
    assert {d.headers["dualwrite.error.class"] for d in letters} == {"DeserializationError"}
    assert {d.value for d in letters} == {b"\x00\x00\x00\x00\x63not avro at all", b'{"json": "is not avro"}'}


def test_missing_reference_is_retried_until_it_arrives(stack: LocalStack, fo: httpx.Client, dv: httpx.Client) -> None:
    cid = eventually(lambda: dv_company_id(dv, "usmf"))
    # A new group and an account in it, created together in Dataverse: the account may reach F&O first.
    resp = dv.post(
        "msdyn_customergroups",
        json={
            "msdyn_groupid": "77",
            "msdyn_description": "New in CRM",
            "msdyn_company@odata.bind": f"/cdm_companies({cid})",
        },
    )
    assert resp.status_code in (201, 204), resp.text
    group = dv.get(
        "msdyn_customergroups", params={"$filter": f"msdyn_groupid eq '77' and _msdyn_company_value eq {cid}"}
    ).json()["value"][0]
    body = {
        "accountnumber": "T-REF-1",
        "name": "Needs group 77",
        "customertypecode": 3,
        "msdyn_company@odata.bind": f"/cdm_companies({cid})",
        "msdyn_customergroupid@odata.bind": f"/msdyn_customergroups({group['msdyn_customergroupid']})",
    }
    assert dv.post("accounts", json=body).status_code in (201, 204)
    row = eventually(lambda: customer(fo, "T-REF-1"), what="T-REF-1 in F&O")
    assert row["CustomerGroupId"] == "77"


def test_offsets_are_committed_after_apply_and_status_reports(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client, tmp_path: Path
) -> None:
    topic = kafka.topic(stack.config.kafka.topic_prefix, "fo", "CustomersV3")
    p = Producer({"bootstrap.servers": stack.config.kafka.bootstrap_servers})
    p.produce(topic, key=b"usmf|STATUS-POISON", value=b"not avro")
    assert p.flush(10) == 0
    new_fo_customer(fo, "T-STATUS-1")
    eventually(lambda: account(dv, "T-STATUS-1"), what="T-STATUS-1")
    eventually(
        lambda: any((d.key or b"").lower() == b"usmf|status-poison" for d in dlq_records(stack, topic)),
        what="poison in DLQ",
    )
    eventually(
        lambda: consumer_lag(stack.config.kafka, "dualwrite.consumer", [topic]).get(topic) == 0,
        what="lag 0 on the customers topic",
    )
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(stack.config.model_dump(mode="json")))
    out = subprocess.run(
        [sys.executable, "-m", "wiring.cli", "status", "--config", str(cfg_file), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    import json

    rows = {(r["map"], r["direction"]): r for r in json.loads(out.stdout)}
    customers = rows[("customers", "fo->dataverse")]
    assert customers["state"] == "running" and customers["applied"] >= 50 and customers["lag"] == 0
    assert customers["dlq"] >= 1  # at least the poison record above
    # A one-way map is shown only for the direction it writes.
    assert ("exchange-rates", "fo->dataverse") in rows and ("exchange-rates", "dataverse->fo") not in rows
    assert ("companies", "dataverse->fo") in rows


def _cli(stack: LocalStack, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(stack.config.model_dump(mode="json")))
    return subprocess.run(
        [sys.executable, "-m", "wiring.cli", *args, "--config", str(cfg_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dead_letter_is_listed_and_replayed_once_the_cause_is_fixed(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client, tmp_path: Path
) -> None:
    cid = eventually(lambda: dv_company_id(dv, "usmf"))
    # A group F&O refuses (description over F&O's 60 characters), then an account in that group.
    resp = dv.post(
        "msdyn_customergroups",
        json={
            "msdyn_groupid": "88",
            "msdyn_description": "D" * 80,
            "msdyn_company@odata.bind": f"/cdm_companies({cid})",
        },
    )
    assert resp.status_code in (201, 204), resp.text
    group = dv.get(
        "msdyn_customergroups", params={"$filter": f"msdyn_groupid eq '88' and _msdyn_company_value eq {cid}"}
    ).json()["value"][0]
    assert dv.post(
        "accounts",
        json={
            "accountnumber": "T-REPLAY-1",
            "name": "Waits for group 88",
            "customertypecode": 3,
            "msdyn_company@odata.bind": f"/cdm_companies({cid})",
            "msdyn_customergroupid@odata.bind": f"/msdyn_customergroups({group['msdyn_customergroupid']})",
        },
    ).status_code in (201, 204)
    topic = kafka.topic(stack.config.kafka.topic_prefix, "dataverse", "accounts")
    letters = dead_lettered(stack, topic, "usmf|T-REPLAY-1")
    assert letters[0].headers["dualwrite.error.class"] == "MissingReferenceError"
    assert int(letters[0].headers["dualwrite.attempts"]) > 1

    listed = _cli(stack, tmp_path, "dlq", "list", kafka.dlq_topic(topic))
    assert listed.returncode == 0 and "MissingReferenceError" in listed.stdout
    assert "usmf|t-replay-1" in listed.stdout.lower()

    # Someone fixes the cause in F&O; replaying that one record now applies it.
    assert (
        fo.post(
            "CustomerGroups", json={"dataAreaId": "usmf", "CustomerGroupId": "88", "Description": "Fixed by hand"}
        ).status_code
        == 201
    )
    replayed = _cli(stack, tmp_path, "dlq", "replay", kafka.dlq_topic(topic), "--offset", str(letters[0].offset))
    assert replayed.returncode == 0 and "replayed 1 record" in replayed.stdout, replayed.stderr
    row = eventually(lambda: customer(fo, "T-REPLAY-1"), what="the replayed record in F&O")
    assert row["CustomerGroupId"] == "88"


def test_malformed_data_event_is_dead_lettered_and_answered(stack: LocalStack) -> None:
    url = stack.components["fo-producer"].url
    wrong = httpx.post(url, content=b"{}", headers={"content-type": "application/json"})
    assert wrong.status_code == 401 and "secret" in wrong.json()["error"]
    bad = httpx.post(f"{url}?code={EVENT_SECRET}", content=b"not json at all")
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]  # the sender's mistake: said at once
    no_target = httpx.post(
        f"{url}?code={EVENT_SECRET}",
        json={"MessageName": "Create", "PrimaryEntityName": "mserp_custcustomerv3entity"},
    )
    assert no_target.status_code == 202 and "Target" in no_target.json()["reason"]
    topic = f"{stack.config.kafka.topic_prefix}.fo.events.dlq"

    def malformed() -> list[dlq.DeadLetter] | None:
        found = list(dlq.read_all(stack.config.kafka, topic, idle_s=0.5))
        return [d for d in found if "Target" in d.headers.get("dualwrite.error.message", "")] or None

    letters = eventually(malformed, what="the event without a Target in the DLQ")
    assert all(d.headers["dualwrite.error.message"] for d in letters)


def test_topic_values_are_confluent_framed_avro_any_deserializer_reads(stack: LocalStack, dv: httpx.Client) -> None:
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    topic = kafka.topic(stack.config.kafka.topic_prefix, "fo", "LegalEntities")
    c = Consumer(
        {
            "bootstrap.servers": stack.config.kafka.bootstrap_servers,
            "group.id": "independent-reader",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(stack.config.kafka.partitions)])
        msg = eventually(lambda: (m := c.poll(0.2)) is not None and m.error() is None and m, what="a record")
    finally:
        c.close()
    raw = msg.value()
    assert raw[0] == 0  # Confluent magic byte, then a 4-byte schema id
    registry = SchemaRegistryClient({"url": str(stack.config.schema_registry.url).rstrip("/")})
    schema_id = int.from_bytes(raw[1:5], "big")
    latest = registry.get_latest_version(f"{topic}-value")
    assert latest.schema_id == schema_id
    level = registry.get_config(f"{topic}-value").compatibility_level
    assert level is not None and level.value == "BACKWARD"
    value = AvroDeserializer(registry)(raw, SerializationContext(topic, MessageField.VALUE))
    assert value["entity"] == "LegalEntities" and value["op"] == "snapshot"
    assert value["key"] == msg.key().decode() and value["after"]["LegalEntityId"].lower() == value["company"]


def test_redelivering_the_latest_event_of_every_record_writes_nothing(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client
) -> None:
    from confluent_kafka import Consumer, TopicPartition

    eventually(lambda: account(dv, "US-025"), what="seed synced")
    prefix = stack.config.kafka.topic_prefix
    sources = [
        kafka.topic(prefix, side, name)
        for side, name in [
            ("fo", "LegalEntities"),
            ("fo", "CustomerGroups"),
            ("fo", "CustomersV3"),
            ("dataverse", "cdm_companies"),
            ("dataverse", "msdyn_customergroups"),
            ("dataverse", "accounts"),
        ]
    ]
    latest: dict[tuple[str, bytes], Any] = {}
    c = Consumer(
        {
            "bootstrap.servers": stack.config.kafka.bootstrap_servers,
            "group.id": "redeliver",
            "enable.auto.commit": False,
        }
    )
    try:
        c.assign([TopicPartition(t, p, 0) for t in sources for p in range(stack.config.kafka.partitions)])
        idle = 0
        while idle < 10:
            msg = c.poll(0.1)
            if msg is None or msg.error():
                idle += 1
                continue
            idle = 0
            if msg.value() and msg.value()[:1] == b"\x00":  # skip the poison records of another test
                latest[(msg.topic(), msg.key())] = msg
    finally:
        c.close()
    assert len(latest) > 60
    # Records that were dead-lettered never converged (the target refused them): re-sending them tries again.
    refused = {(t, d.key) for t in sources for d in dlq_records(stack, t)}
    latest = {k: v for k, v in latest.items() if k not in refused}
    before = stack.writes_by("fo", "dualwrite"), stack.writes_by("dataverse", "dualwrite")
    p = Producer({"bootstrap.servers": stack.config.kafka.bootstrap_servers})
    for (topic, key), msg in latest.items():
        p.produce(topic, key=key, value=msg.value())
    assert p.flush(10) == 0
    stack.wait_applied(kafka.group_id(prefix), sources)  # past every re-sent record
    assert (stack.writes_by("fo", "dualwrite"), stack.writes_by("dataverse", "dualwrite")) == before


def test_idle_polling_costs_one_dataverse_request_per_cycle(stack: LocalStack) -> None:
    """Change tracking is probed for every table in one $batch; only a changed table is read."""
    tables = {m.dataverse.entity_set for m in stack.maps.values() if m.writes_to("fo")}
    assert len(tables) > 10
    stack.settle()
    before = stack.stats("dataverse")["requests"]
    time.sleep(3.0)
    cycles = 3.0 / stack.config.dataverse_producer.poll_interval_s
    used = stack.stats("dataverse")["requests"] - before
    # One probe per cycle (plus a link refresh now and then), not one request per table per cycle.
    assert 0 < used <= cycles + len(tables), used
