"""Initial sync: dependency order, the DLQ counted in the summary, and resume after a crash."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dualwrite.tablemap import builtin_maps_dir
from wiring.initial_sync import InitialSync, MapProgress
from wiring.stack import SEEDED_DATAVERSE_ROWS, SEEDED_EQUAL_CURRENCIES, LocalStack, eventually

pytestmark = pytest.mark.service


@pytest.fixture()
def stack(tmp_path: Path, strict_maps_dir: Path) -> Iterator[LocalStack]:
    s = LocalStack.start(tmp_path, maps_dir=strict_maps_dir, fo_producer={"snapshot_on_start": False})
    try:
        yield s
    finally:
        s.stop()


def _accounts(stack: LocalStack) -> set[str]:
    dv = stack.user_client("dataverse")
    return {r["accountnumber"] for r in dv.get("accounts", params={"$select": "accountnumber"}).json()["value"]}


def test_initial_sync_copies_in_dependency_order_and_counts_dead_letters(stack: LocalStack, tmp_path: Path) -> None:
    fo = stack.user_client("fo")
    assert _accounts(stack) == set()  # nothing is copied until asked (no snapshot at start here)
    # One existing F&O customer the (test) map cannot translate: it must end in the DLQ and the summary.
    assert (
        fo.patch("CustomersV3(dataAreaId='usmf',CustomerAccount='US-007')", json={"OnHoldStatus": "Never"}).status_code
        == 204
    )
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(stack.config.model_dump(mode="json")))
    out = subprocess.run(
        [sys.executable, "-m", "wiring.cli", "sync", "initial", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    order = out.stdout.splitlines()[0].split("order: ", 1)[1].split(" -> ")
    assert sorted(order) == sorted(stack.maps)
    # Every map runs after every map whose rows it refers to (and after companies when company-specific).
    for name, m in stack.maps.items():
        after = m.depends_on() | ({"companies"} if m.dataverse.company_lookup else set())
        assert all(order.index(d) < order.index(name) for d in after if d != name), (name, order)
    summary = {
        line.split()[0]: line.split() for line in out.stdout.splitlines() if line.split()[:1] in [[n] for n in order]
    }
    assert summary["companies"][1] == "2" and summary["customer-groups"][1] == "10"
    assert summary["customers"][1] == "50" and summary["customers"][3] == "1"  # 50 sent, 1 dead-lettered
    assert summary["contacts"][1] == "10" and summary["contacts"][3] == "0"  # the person customers
    accounts = _accounts(stack)
    assert len(accounts) == 49 and "US-007" not in accounts


def test_crashed_initial_sync_of_every_area_resumes_without_copying_twice(stack: LocalStack) -> None:
    seen: list[MapProgress] = []

    class Crash(Exception):
        pass

    def crash_midway(p: MapProgress) -> None:
        seen.append(p)
        if p.name == "customers" and p.done >= 20:
            raise Crash

    first = InitialSync(stack.config, stack.maps, page=10)
    with pytest.raises(Crash):
        first.run(None, crash_midway)
    eventually(lambda: len(_accounts(stack)) >= 20, what="the first 20 customers")
    before_crash = {p.name for p in seen}
    assert "customers" in before_crash and "released-products" not in before_crash

    resumed = InitialSync(stack.config, stack.maps, page=10)
    assert resumed.run_id == first.run_id  # the unfinished run is picked up
    results = {p.name: p for p in resumed.run(None, lambda p: None)}
    assert set(results) == set(stack.maps)
    assert results["customers"].resumed_at == 20 and results["customers"].done == 50
    assert results["companies"].resumed_at == results["companies"].done == 2  # finished before the crash
    eventually(lambda: len(_accounts(stack)) == 50, what="every customer")

    # Every area's seeded rows are in Dataverse.
    expected = SEEDED_DATAVERSE_ROWS
    assert stack.dataverse_counts(list(expected)) == expected
    # Each row was written once although the crashed page was sent again. The 5 currencies Dataverse
    # already had with the same values need no write at all.
    copied = sum(p.done for p in results.values())
    assert copied == sum(expected.values())
    assert stack.writes_by("dataverse", "dualwrite") == copied - SEEDED_EQUAL_CURRENCIES


def test_initial_sync_from_dataverse_as_master_resumes_after_a_crash(tmp_path: Path) -> None:
    """A map whose master is Dataverse: its rows are read from Dataverse, company by company in key
    order, and applied to F&O. The live Dataverse producer is left out, so only the sync copies."""
    maps = tmp_path / "maps"
    maps.mkdir()
    for f in builtin_maps_dir().glob("*.yaml"):
        shutil.copy(f, maps / f.name)
    path = maps / "customer-payment-methods.yaml"
    path.write_text(path.read_text() + "initial_sync_master: dataverse\n")
    (tmp_path / "run").mkdir()
    stack = LocalStack.start(tmp_path / "run", maps_dir=maps, with_components=False, companies=["usmf", "demf"])
    try:
        stack.start_components(("fo-producer", "consumer"))
        first = InitialSync(stack.config, stack.maps, page=2)
        first.run(["companies"], lambda p: None)
        dv = stack.user_client("dataverse")
        fo = stack.user_client("fo")
        for company in ("usmf", "demf"):
            cid = dv.get("cdm_companies", params={"$filter": f"cdm_companycode eq '{company}'"}).json()["value"][0]
            for name in ("DV-A", "DV-B", "DV-C"):
                body = {
                    "msdyn_name": name,
                    "msdyn_description": f"{name} of {company}",
                    "msdyn_company@odata.bind": f"/cdm_companies({cid['cdm_companyid']})",
                }
                assert dv.post("msdyn_customerpaymentmethods", json=body).status_code in (201, 204)

        class Crash(Exception):
            pass

        def crash(p: MapProgress) -> None:
            if p.name == "customer-payment-methods" and p.done >= 6:
                raise Crash

        sync = InitialSync(stack.config, stack.maps, page=2)
        with pytest.raises(Crash):
            sync.run(["customer-payment-methods"], crash)
        resumed = InitialSync(stack.config, stack.maps, page=2)
        (result,) = resumed.run(["customer-payment-methods"], lambda p: None)
        # 3 seeded methods (CHECK, CASH, TRANSFER) and 3 new ones per company; 6 sent before the crash.
        assert result.resumed_at == 6 and result.done == 12 and result.total == 12

        def method(company: str, name: str) -> dict[str, Any] | None:
            resp = fo.get(f"CustomerPaymentMethods(dataAreaId='{company}',Name='{name}')")
            return resp.json() if resp.status_code == 200 else None

        for company in ("usmf", "demf"):
            for name in ("DV-A", "DV-B", "DV-C"):
                row = eventually(lambda c=company, n=name: method(c, n), what=f"{name} in F&O {company}")
                assert row["Description"] == f"{name} of {company}"
        # Each new row was written to F&O once; the seeded ones were already equal there.
        assert stack.writes_by("fo", "dualwrite") == 6
    finally:
        stack.stop()
