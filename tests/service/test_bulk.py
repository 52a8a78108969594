"""Dataverse bulk messages: the stand-in answers CreateMultiple, UpdateMultiple and UpsertMultiple as the
Web API does (one transaction, all or nothing), and dualwrite's Dataverse target creates rows with them:
fewer requests per change than the `$batch`, and a record the service refuses is isolated by halving
the call, so it alone fails (and is dead-lettered by the consumer loop as before)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from consumers.dataverse import DataverseTarget
from consumers.target import Outcome, Write
from dualwrite.dataverse import DataverseClient, LookupCache
from dualwrite.envelope import Side
from dualwrite.errors import TargetRejectedError
from dualwrite.mapping import TargetWrite
from standins.dataverse import Settings, create_app
from standins.server import BackgroundServer
from standins.token import DEFAULT_SIGNING_KEY, issue_token
from wiring.stack import CLIENT_ID, LocalStack, dv_rows

pytestmark = pytest.mark.service

API = "/api/data/v9.2/"
ACCOUNT = "Microsoft.Dynamics.CRM.account"
CREATE, UPDATE, UPSERT = (f"accounts/Microsoft.Dynamics.CRM.{a}Multiple" for a in ("Create", "Update", "Upsert"))


# -- the stand-in's answers -----------------------------------------------------------------------------------
@pytest.fixture
def standin() -> Iterator[tuple[httpx.Client, Callable[[], dict[str, Any]]]]:
    srv = BackgroundServer(create_app(Settings(seed=True))).start()
    bearer = issue_token("bulk-user", "https://contoso.crm.dynamics.com", "tenant", DEFAULT_SIGNING_KEY)
    client = httpx.Client(base_url=srv.url + API, headers={"Authorization": f"Bearer {bearer}"}, timeout=10)

    def stats() -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{srv.url}/_standin/stats", timeout=5).json()
        return body

    try:
        yield client, stats
    finally:
        client.close()
        srv.stop()


def _company(dv: httpx.Client, code: str = "usmf") -> str:
    resp = dv.post("cdm_companies", json={"cdm_companycode": code, "cdm_name": code.upper()})
    assert resp.status_code == 204, resp.text
    return resp.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")


def _accounts(dv: httpx.Client) -> dict[str, dict[str, Any]]:
    rows = dv.get("accounts", params={"$select": "accountnumber,name,_msdyn_company_value"}).json()["value"]
    return {r["accountnumber"]: r for r in rows}


def test_create_multiple_answers_the_ids_in_order(standin: Any) -> None:
    dv, stats = standin
    company = _company(dv)
    before = stats()["requests"]
    targets = [
        {
            "@odata.type": ACCOUNT,
            "accountnumber": f"B-{i}",
            "name": f"Bulk {i}",
            "msdyn_company@odata.bind": f"/cdm_companies({company})",
        }
        for i in range(3)
    ]
    resp = dv.post(CREATE, json={"Targets": targets})
    assert resp.status_code == 200, resp.text
    ids = resp.json()["Ids"]
    assert resp.json()["@odata.context"].endswith("$metadata#Microsoft.Dynamics.CRM.CreateMultipleResponse")
    assert len(ids) == 3
    for i, row_id in enumerate(ids):
        row = dv.get(f"accounts({row_id})", params={"$select": "accountnumber,_msdyn_company_value"}).json()
        assert row["accountnumber"] == f"B-{i}" and row["_msdyn_company_value"] == company
    after = stats()
    assert after["requests"] - before == 1 + 3  # the call counts once (the 3 reads after it once each)
    assert after["writes"]["bulk-user"]["POST"] == 1 + 3  # the company's POST and the 3 records created


def test_update_and_upsert_multiple_answer_204(standin: Any) -> None:
    dv, _ = standin
    company = _company(dv)
    created = dv.post(
        CREATE,
        json={
            "Targets": [
                {
                    "@odata.type": ACCOUNT,
                    "accountnumber": "U-1",
                    "name": "One",
                    "msdyn_company@odata.bind": f"/cdm_companies({company})",
                }
            ]
        },
    )
    (row_id,) = created.json()["Ids"]
    resp = dv.post(UPDATE, json={"Targets": [{"@odata.type": ACCOUNT, "accountid": row_id, "name": "One again"}]})
    assert resp.status_code == 204 and not resp.content
    upserts = [
        # an existing row by its alternate key, and a new one (created with the key's values)
        {
            "@odata.type": ACCOUNT,
            "@odata.id": f"accounts(accountnumber='U-1',msdyn_company={company})",
            "name": "One by key",
        },
        {"@odata.type": ACCOUNT, "@odata.id": f"accounts(accountnumber='U-2',msdyn_company={company})", "name": "Two"},
    ]
    resp = dv.post(UPSERT, json={"Targets": upserts})
    assert resp.status_code == 204, resp.text
    rows = _accounts(dv)
    assert rows["U-1"]["name"] == "One by key" and rows["U-1"]["accountid"] == row_id
    assert rows["U-2"]["name"] == "Two" and rows["U-2"]["_msdyn_company_value"] == company


def test_a_bulk_message_is_all_or_nothing(standin: Any) -> None:
    dv, _ = standin
    company = _company(dv)
    bind = f"/cdm_companies({company})"
    good = [
        {"@odata.type": ACCOUNT, "accountnumber": f"A-{i}", "name": "ok", "msdyn_company@odata.bind": bind}
        for i in range(4)
    ]
    bad = {"@odata.type": ACCOUNT, "accountnumber": "A-bad", "name": "x" * 161, "msdyn_company@odata.bind": bind}
    resp = dv.post(CREATE, json={"Targets": [*good[:2], bad, *good[2:]]})
    assert resp.status_code == 400
    assert set(resp.json()) == {"error"} and resp.json()["error"]["code"] == "0x80044331"
    assert "exceeded the maximum allowed length" in resp.json()["error"]["message"]
    assert _accounts(dv) == {}, "a refused bulk message keeps nothing"
    # A row that already exists refuses CreateMultiple (as If-None-Match: * would), also all or nothing.
    assert dv.post(CREATE, json={"Targets": good[:1]}).status_code == 200
    resp = dv.post(CREATE, json={"Targets": good[1:3] + good[:1]})
    assert resp.status_code == 412 and resp.json()["error"]["code"] == "0x80040237"
    assert set(_accounts(dv)) == {"A-0"}
    missing = {"@odata.type": ACCOUNT, "accountid": str(uuid.uuid4()), "name": "gone"}
    resp = dv.post(UPDATE, json={"Targets": [missing]})
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "0x80040217"


def test_every_record_names_its_type(standin: Any) -> None:
    dv, _ = standin
    for body in ({"Targets": [{"name": "no type"}]}, {"Targets": []}, {"Targets": [{"@odata.type": "x", "name": 1}]}):
        resp = dv.post(CREATE, json=body)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "0x80040203", resp.text
    assert dv.get(CREATE).status_code == 405
    assert dv.post("accounts/Microsoft.Dynamics.CRM.DeleteMultiple", json={"Targets": []}).status_code == 404


# -- the consumer's Dataverse target --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The broker and the stand-ins (no components): the target is driven directly."""
    s = LocalStack.start(Path(tmp_path_factory.mktemp("bulk")), with_components=False)
    try:
        with s.user_client("dataverse") as dv:
            _company(dv)
        yield s
    finally:
        s.stop()


def _target(stack: LocalStack, bulk: bool) -> DataverseTarget:
    client = DataverseClient(stack.cfg.dataverse, "consumer")
    return DataverseTarget(stack.maps, client=client, lookups=LookupCache(client), bulk=bulk)


def _creates(stack: LocalStack, prefix: str, n: int, bad: frozenset[int] = frozenset()) -> list[Write]:
    m = stack.maps["customers"]
    out = []
    for i in range(n):
        number = f"{prefix}{i:04d}"
        name = "x" * 200 if i in bad else f"Bulk customer {i}"
        change = TargetWrite(
            "customers",
            Side.DATAVERSE,
            "upsert",
            "usmf",
            {"accountnumber": number},
            {"accountnumber": number, "name": name},
        )
        out.append(Write(m, "create", change))
    return out


def _used(stack: LocalStack) -> int:
    return int(stack.stats("dataverse").get("requests_by", {}).get(CLIENT_ID, 0))


def test_creates_take_fewer_requests_in_bulk(parts: LocalStack) -> None:
    n = 500
    results = {}
    for bulk in (False, True):
        target = _target(parts, bulk)
        try:
            target.lookups.company_id("usmf")  # the company's GUID cached: only the writes are counted
            before = _used(parts)
            got = target.write(_creates(parts, f"R{int(bulk)}-", n))
            results[bulk] = _used(parts) - before
        finally:
            target.close()
        assert [r.outcome for r in got] == [Outcome.DONE] * n
        assert all(r.ack is not None and r.ack.row_id for r in got), "each created row's id is known"
    # 500 creates: three $batch requests of 200 parts, or one CreateMultiple.
    assert results == {False: 3, True: 1}
    with parts.user_client("dataverse") as dv:
        rows = dv_rows(dv, "accounts", "startswith(accountnumber,'R1-')")
    assert len(rows) == n


def test_a_bad_record_in_a_bulk_create_fails_alone(parts: LocalStack) -> None:
    n, bad = 64, 37
    target = _target(parts, True)
    try:
        target.lookups.company_id("usmf")
        before = _used(parts)
        got = target.write(_creates(parts, "X-", n, frozenset({bad})))
        used = _used(parts) - before
    finally:
        target.close()
    outcomes = [r.outcome for r in got]
    assert outcomes[bad] is Outcome.FAILED and isinstance(got[bad].error, TargetRejectedError)
    assert "exceeded the maximum allowed length" in str(got[bad].error)
    assert outcomes[:bad] + outcomes[bad + 1 :] == [Outcome.DONE] * (n - 1)
    assert used <= 1 + 2 * 6, f"{used} requests to isolate one record of {n} by halving"
    with parts.user_client("dataverse") as dv:
        numbers = {r["accountnumber"] for r in dv_rows(dv, "accounts", "startswith(accountnumber,'X-')")}
    assert numbers == {f"X-{i:04d}" for i in range(n) if i != bad}


def test_updates_keep_their_etag_in_the_batch(parts: LocalStack) -> None:
    """Bulk messages carry no per-record If-Match: an update with a stale ETag is still refused (412)."""
    target = _target(parts, True)
    try:
        (created,) = target.write(_creates(parts, "E-", 1))
        assert created.ack is not None and created.ack.row_id
        m = parts.maps["customers"]
        change = TargetWrite(
            "customers", Side.DATAVERSE, "upsert", "usmf", {"accountnumber": "E-0000"}, {"name": "Edited"}
        )
        stale = Write(m, "update", change, 'W/"1"', created.ack.row_id)
        create = _creates(parts, "E2-", 1)[0]
        got = target.write([stale, create])
    finally:
        target.close()
    assert got[0].outcome is Outcome.CONFLICT
    assert got[1].outcome is Outcome.DONE
