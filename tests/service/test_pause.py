"""Pausing a map: changes wait in Kafka, the state survives a restart, resume catches up in order."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from wiring.stack import LocalStack, eventually

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = LocalStack.start(tmp_path_factory.mktemp("pause"))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def cli(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Any:
    cfg = tmp_path_factory.mktemp("cfg") / "config.yaml"
    cfg.write_text(yaml.safe_dump(stack.config.model_dump(mode="json")))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "wiring.cli", *args, "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result

    return run


def account_name(dv: httpx.Client, number: str) -> str | None:
    rows = dv.get("accounts", params={"$filter": f"accountnumber eq '{number}'", "$select": "name"}).json()["value"]
    return rows[0]["name"] if rows else None


def test_paused_map_waits_survives_restart_and_catches_up_in_order(stack: LocalStack, cli: Any) -> None:
    fo, dv = stack.user_client("fo"), stack.user_client("dataverse")
    eventually(lambda: account_name(dv, "US-025"), timeout_s=30, what="seed synced")

    assert "customers: paused" in cli("map", "pause", "customers").stdout
    time.sleep(0.5)  # the consumers follow the control topic every 0.2 s
    url = "CustomersV3(dataAreaId='usmf',CustomerAccount='US-001')"
    for name in ("Paused 1", "Paused 2", "Paused 3"):
        assert fo.patch(url, json={"OrganizationName": name}).status_code == 204
    assert (
        fo.post(
            "CustomersV3",
            json={
                "dataAreaId": "usmf",
                "CustomerAccount": "P-NEW-1",
                "OrganizationName": "New",
                "CustomerGroupId": "10",
                "SalesCurrencyCode": "USD",
                "PartyType": "Organization",
            },
        ).status_code
        == 201
    )
    # Other maps keep flowing while customers is paused.
    assert (
        fo.patch(
            "CustomerGroups(dataAreaId='usmf',CustomerGroupId='10')", json={"Description": "Still flowing"}
        ).status_code
        == 204
    )
    eventually(
        lambda: dv.get("msdyn_customergroups", params={"$filter": "msdyn_description eq 'Still flowing'"}).json()[
            "value"
        ],
        what="a change of another map",
    )

    # Every process restarts; the pause is kept in Kafka, not in any of them.
    stack.stop_components()
    stack.start_components()
    time.sleep(2)
    assert account_name(dv, "P-NEW-1") is None and account_name(dv, "US-001") != "Paused 3"
    rows = json.loads(cli("status", "--json").stdout)
    customers = next(r for r in rows if r["map"] == "customers" and r["direction"] == "fo->dataverse")
    assert customers["state"] == "paused" and customers["lag"] > 0

    cli("map", "pause", "customer-groups")
    assert "refers to paused: customer-groups" in cli("map", "status", "customers").stdout
    cli("map", "resume", "customer-groups")

    assert "customers: running" in cli("map", "resume", "customers").stdout
    eventually(lambda: account_name(dv, "P-NEW-1") == "New", what="the record created while paused")
    eventually(lambda: account_name(dv, "US-001") == "Paused 3", what="the last of three edits")

    def customers_lag() -> int:
        rows = json.loads(cli("status", "--json").stdout)
        return int(next(r["lag"] for r in rows if r["map"] == "customers" and r["direction"] == "fo->dataverse"))

    eventually(lambda: customers_lag() == 0, what="lag back to 0")


def test_a_backlog_of_one_records_changes_costs_one_write_not_one_each(stack: LocalStack, cli: Any) -> None:
    """Changes that piled up (a paused map, a consumer catching up) go out as the newest of each record."""
    from wiring.stack import CLIENT_ID

    fo, dv = stack.user_client("fo"), stack.user_client("dataverse")
    eventually(lambda: account_name(dv, "US-002") and account_name(dv, "US-003"), timeout_s=30, what="seed synced")
    cli("map", "pause", "customers")
    time.sleep(0.5)
    before = stack.writes_by("dataverse", CLIENT_ID)
    for i in range(30):
        for number in ("US-002", "US-003"):
            url = f"CustomersV3(dataAreaId='usmf',CustomerAccount='{number}')"
            assert fo.patch(url, json={"OrganizationName": f"Backlog {number} {i}"}).status_code == 204
    time.sleep(1.0)  # every event is in Kafka before the map resumes
    cli("map", "resume", "customers")
    eventually(
        lambda: account_name(dv, "US-002") == "Backlog US-002 29" and account_name(dv, "US-003") == "Backlog US-003 29",
        what="the last of thirty edits of each record",
    )
    time.sleep(1.0)
    written = stack.writes_by("dataverse", CLIENT_ID) - before
    assert 2 <= written <= 6, f"{written} Dataverse writes for 60 changes of 2 records"
