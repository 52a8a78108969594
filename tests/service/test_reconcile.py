"""`dualwrite reconcile` as an operator runs it: drift written straight into either store (no event, no change
tracking) is found, reported (exit 1, JSON), repaired through the normal path with `--repair`, and a second run
right after is clean; changes in flight and dead letters are explained, not counted; one-way maps."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from dualwrite import kafka, metrics
from wiring.reconcile import RUN_HEADER
from wiring.stack import LocalStack, dv_company_id, dv_one, eventually
from wiring.stack import dv_account as account
from wiring.stack import fo_customer as customer

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, strict_maps_dir: Path) -> Iterator[LocalStack]:
    s = LocalStack.start(
        tmp_path_factory.mktemp("reconcile"),
        maps_dir=strict_maps_dir,  # customers forgets the on-hold value 'Never': a way to make a dead letter
        fo_producer={"catchup_interval_s": 0},  # only reconcile repairs here
        reconcile={"metrics_refresh_s": 0.5, "apply_timeout_s": 60},
        consumer={"retry": {"initial_backoff_s": 0.05, "max_backoff_s": 0.5}},
    )
    try:
        eventually(lambda: account(s.user_client("dataverse"), "DE-025", "demf"), 60, what="the seeded customers")
        s.settle()
        yield s
    finally:
        s.stop()


def cli(stack: LocalStack, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(stack.cfg.model_dump(mode="json")))
    return subprocess.run(
        [sys.executable, "-m", "wiring.cli", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def reconcile(stack: LocalStack, tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    out = cli(stack, tmp_path, "reconcile", *args, "--json")
    assert out.returncode in (0, 1), out.stderr
    return out.returncode, json.loads(out.stdout)


def of(report: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(m for m in report["maps"] if m["map"] == name)
    return found


def raw_write(stack: LocalStack, side: str, **body: Any) -> dict[str, Any]:
    resp = httpx.post(f"{stack.servers[side].url}/_standin/raw-write", json=body, timeout=10)
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()
    return result


def gauge(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)  # the fo-producer runs in this process


def test_a_settled_stack_has_no_drift_in_any_map(stack: LocalStack, tmp_path: Path) -> None:
    code, report = reconcile(stack, tmp_path)
    assert code == 0, report
    assert report["drift"] == 0 and len(report["maps"]) == len(stack.maps)
    customers = of(report, "customers")
    assert customers["equal"] == customers["fo_rows"] == customers["dataverse_rows"] == 50
    assert report["requests"]["dataverse"] > 0 and report["requests"]["dataverse_per_1000_rows"] is not None


def test_a_dataverse_edit_change_tracking_never_showed_is_found_and_repaired(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client, tmp_path: Path
) -> None:
    row, before = account(dv, "US-005"), customer(fo, "US-005")
    assert row is not None and before is not None
    raw_write(stack, "dataverse", entity_set="accounts", id=row["accountid"], values={"msdyn_creditrating": "DRIFT-DV"})

    code, report = reconcile(stack, tmp_path, "customers")
    assert code == 1
    (found,) = of(report, "customers")["rows"]
    assert found["key"] == "usmf|us-005" and found["kind"] == "differs" and found["explained"] is None
    assert found["fields"] == [{"name": "CreditRating", "fo": before["CreditRating"], "dataverse": "DRIFT-DV"}]
    assert of(report, "customers")["differs"] == 1 and report["drift"] == 1
    eventually(
        lambda: gauge("dualwrite_reconcile_drift_rows", map="customers", kind="differs") == 1,
        what="the fo-producer's reconcile gauge",
    )

    code, repaired = reconcile(stack, tmp_path, "customers", "--repair")
    assert code == 0, repaired
    assert of(repaired, "customers")["repaired"] == 1 and repaired["remaining"] == 0
    (fixed,) = of(repaired, "customers")["rows"]
    assert fixed["repair"]["side"] == "dataverse" and fixed["repaired"] is True  # it changed since they agreed
    assert (customer(fo, "US-005") or {}).get("CreditRating") == "DRIFT-DV"
    assert _tagged(stack, "dataverse", repaired["run_id"]) == 1, "the repair went through the accounts topic"

    code, again = reconcile(stack, tmp_path, "customers")
    assert code == 0 and again["drift"] == 0
    eventually(
        lambda: gauge("dualwrite_reconcile_consecutive_drift_runs", map="customers") == 0,
        what="the clean run in the gauges",
    )


def test_an_fo_edit_no_data_event_brought_is_found_and_repaired(
    stack: LocalStack, dv: httpx.Client, tmp_path: Path
) -> None:
    key = {"dataAreaId": "usmf", "CustomerAccount": "US-006"}
    raw_write(stack, "fo", entity_set="CustomersV3", key=key, values={"CreditRating": "DRIFT-FO"})
    code, report = reconcile(stack, tmp_path, "customers")
    assert code == 1 and [r["key"] for r in of(report, "customers")["rows"]] == ["usmf|us-006"]
    code, repaired = reconcile(stack, tmp_path, "customers", "--repair")
    assert code == 0 and of(repaired, "customers")["repaired"] == 1
    assert (account(dv, "US-006") or {}).get("msdyn_creditrating") == "DRIFT-FO"
    assert reconcile(stack, tmp_path, "customers")[0] == 0


def test_rows_on_one_side_only_are_created_on_the_other(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client, tmp_path: Path
) -> None:
    raw_write(
        stack,
        "fo",
        op="insert",
        entity_set="CustomersV3",
        values={
            "dataAreaId": "usmf",
            "CustomerAccount": "T-RAW-FO",
            "OrganizationName": "Only in F&O",
            "CustomerGroupId": "30",
            "SalesCurrencyCode": "USD",
            "PartyType": "Organization",
        },
    )
    group = dv_one(dv, "msdyn_customergroups", f"msdyn_groupid eq '30' and _msdyn_company_value eq {dv_company_id(dv)}")
    currency = dv_one(dv, "transactioncurrencies", "isocurrencycode eq 'USD'")
    assert group is not None and currency is not None
    raw_write(
        stack,
        "dataverse",
        op="insert",
        entity_set="accounts",
        values={
            "accountnumber": "T-RAW-DV",
            "name": "Only in Dataverse",
            "customertypecode": 3,
            "msdyn_company": dv_company_id(dv),
            "msdyn_customergroupid": group["msdyn_customergroupid"],
            "transactioncurrencyid": currency["transactioncurrencyid"],
        },
    )
    code, report = reconcile(stack, tmp_path, "customers", "--company", "usmf")
    assert code == 1
    kinds = {r["key"]: r["kind"] for r in of(report, "customers")["rows"]}
    assert kinds == {"usmf|t-raw-fo": "only_fo", "usmf|t-raw-dv": "only_dataverse"}
    assert of(report, "customers")["companies"] == ["usmf"]

    code, repaired = reconcile(stack, tmp_path, "customers", "--repair")
    assert code == 0, repaired
    assert (account(dv, "T-RAW-FO") or {}).get("name") == "Only in F&O"
    assert (customer(fo, "T-RAW-DV") or {}).get("OrganizationName") == "Only in Dataverse"
    assert reconcile(stack, tmp_path, "customers")[0] == 0


def test_a_delete_dualwrite_never_saw_is_repaired_as_a_delete(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client, tmp_path: Path
) -> None:
    """The sync state says Dataverse had the row: its delete was missed, so F&O's row is deleted too
    (a row that was never in Dataverse would be created there instead, as above)."""
    row = account(dv, "US-007")
    assert row is not None
    raw_write(stack, "dataverse", op="delete", entity_set="accounts", id=row["accountid"])
    code, report = reconcile(stack, tmp_path, "customers", "--repair")
    assert code == 0, report
    (found,) = of(report, "customers")["rows"]
    assert found["kind"] == "only_fo" and found["repair"]["op"] == "delete" and found["repair"]["side"] == "dataverse"
    assert customer(fo, "US-007") is None
    assert reconcile(stack, tmp_path, "customers")[0] == 0


def test_changes_in_flight_and_dead_letters_explain_differences_without_drift(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client, tmp_path: Path
) -> None:
    # A dead letter: the (test) map cannot translate 'Never'.
    r = fo.patch("CustomersV3(dataAreaId='usmf',CustomerAccount='US-009')", json={"OnHoldStatus": "Never"})
    assert r.status_code == 204
    stack.settle()
    # A change in flight: the map is paused, so its change waits in Kafka.
    assert cli(stack, tmp_path, "map", "pause", "customers").returncode == 0
    try:
        r = fo.patch("CustomersV3(dataAreaId='usmf',CustomerAccount='US-008')", json={"CreditRating": "WAITING"})
        assert r.status_code == 204
        code, report = reconcile(stack, tmp_path, "customers", "--repair")
        assert code == 0, report
        explained = {r["key"]: r["explained"] for r in of(report, "customers")["rows"]}
        assert explained == {"usmf|us-008": "in_flight", "usmf|us-009": "dlq"}
        assert report["drift"] == 0 and of(report, "customers")["repairs_published"] == 0
    finally:
        assert cli(stack, tmp_path, "map", "resume", "customers").returncode == 0
    eventually(lambda: (account(dv, "US-008") or {}).get("msdyn_creditrating") == "WAITING", what="the resumed change")


def test_one_way_maps_create_what_is_missing_and_leave_target_only_rows_alone(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client, tmp_path: Path
) -> None:
    raw_write(
        stack,
        "fo",
        op="insert",
        entity_set="CDSReleasedDistinctProducts",
        values={"dataAreaId": "usmf", "ProductNumber": "T-RAW-P1", "ProductName": "Set-based product"},
    )
    raw_write(
        stack,
        "dataverse",
        op="insert",
        entity_set="products",
        values={"msdyn_productnumber": "T-DV-ONLY", "name": "Made in Dataverse", "msdyn_company": dv_company_id(dv)},
    )
    code, report = reconcile(stack, tmp_path, "products")
    assert code == 1
    products = of(report, "products")
    assert products["only_fo"] == 1 and products["not_synced"] == 1 and products["only_dataverse"] == 0
    code, repaired = reconcile(stack, tmp_path, "products", "--repair")
    assert code == 0, repaired
    flt = f"msdyn_productnumber eq 'T-RAW-P1' and _msdyn_company_value eq {dv_company_id(dv)}"
    assert (dv_one(dv, "products", flt) or {}).get("name") == "Set-based product"
    flt = f"msdyn_productnumber eq 'T-DV-ONLY' and _msdyn_company_value eq {dv_company_id(dv)}"
    assert dv_one(dv, "products", flt) is not None, "a one-way map never deletes"
    assert reconcile(stack, tmp_path, "products")[0] == 0


def test_a_dataverse_edit_of_a_one_way_map_is_repaired_from_fo(
    stack: LocalStack, dv: httpx.Client, tmp_path: Path
) -> None:
    flt = f"msdyn_productnumber eq 'D0001' and _msdyn_company_value eq {dv_company_id(dv)}"
    row = dv_one(dv, "products", flt)
    assert row is not None
    raw_write(stack, "dataverse", entity_set="products", id=row["productid"], values={"name": "Edited in Dataverse"})
    code, repaired = reconcile(stack, tmp_path, "products", "--repair")
    assert of(repaired, "products")["differs"] == 1
    assert code == 0, repaired


def _tagged(stack: LocalStack, side: str, run_id: str) -> int:
    """Records of the customers map's topic of `side` that carry the reconcile run's header."""
    topic = kafka.map_topics(stack.cfg.kafka.topic_prefix, stack.maps["customers"])[side]
    return sum(
        1
        for msg in kafka.read_to_end(stack.cfg.kafka, topic, idle_s=0.5)
        if dict(msg.headers() or []).get(RUN_HEADER) == run_id.encode()  # type: ignore[arg-type]
    )
