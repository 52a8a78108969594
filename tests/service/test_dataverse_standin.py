"""The Dataverse stand-in over real HTTP: upsert, binds, change tracking, $batch and service protection."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from standins.dataverse import ACCOUNTS, Settings, create_app
from standins.odata import PartResponse, parse_batch_response
from standins.server import BackgroundServer
from standins.store import SYSTEM_USER, Store
from standins.token import DEFAULT_SIGNING_KEY, issue_token, object_id

API = "/api/data/v9.2/"
AUDIENCE = "https://contoso.crm.dynamics.com"
MISSING = "00000000-0000-0000-0000-0000000000ff"


def token(client_id: str = "dualwrite") -> str:
    return issue_token(client_id, AUDIENCE, "tenant", DEFAULT_SIGNING_KEY)


@pytest.fixture
def start() -> Iterator[Callable[..., httpx.Client]]:
    """Start a Dataverse stand-in with these settings; returns a client under the Web API root."""
    servers: list[BackgroundServer] = []
    clients: list[httpx.Client] = []

    def _start(client_id: str = "dualwrite", **settings: Any) -> httpx.Client:
        srv = BackgroundServer(create_app(Settings(**{"seed": True, **settings}))).start()
        servers.append(srv)
        client = httpx.Client(
            base_url=srv.url + API, headers={"Authorization": f"Bearer {token(client_id)}"}, timeout=10
        )
        clients.append(client)
        return client

    yield _start
    for client in clients:
        client.close()
    for srv in servers:
        srv.stop()


@pytest.fixture
def dv(start: Callable[..., httpx.Client]) -> httpx.Client:
    return start()


def error(resp: httpx.Response) -> tuple[str, str]:
    body = resp.json()
    assert set(body) == {"error"}
    return body["error"]["code"], body["error"]["message"]


def company(dv: httpx.Client, code: str = "usmf") -> str:
    resp = dv.post(
        "cdm_companies",
        json={"cdm_companycode": code, "cdm_name": f"Company {code}"},
        headers={"Prefer": "return=representation"},
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["cdm_companyid"])


def group(dv: httpx.Client, company_id: str, group_id: str = "10") -> str:
    resp = dv.patch(
        f"msdyn_customergroups(msdyn_groupid='{group_id}',msdyn_company={company_id})",
        json={"msdyn_description": "Wholesale customers"},
        headers={"Prefer": "return=representation"},
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["msdyn_customergroupid"])


def account_url(number: str, company_id: str) -> str:
    return f"accounts(accountnumber='{number}',msdyn_company={company_id})"


# -- basics ------------------------------------------------------------------------------------------------
def test_missing_token_is_401_with_error_body(dv: httpx.Client) -> None:
    resp = dv.get("accounts", headers={"Authorization": "Bearer x.y.z"})
    assert resp.status_code == 401 and "bearer token" in error(resp)[1]


def test_whoami_names_the_caller(start: Callable[..., httpx.Client]) -> None:
    body = start(client_id="demo-user").get("WhoAmI").json()
    assert body["UserId"] == object_id("demo-user")
    assert body["@odata.context"].endswith("$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse")
    assert {"BusinessUnitId", "OrganizationId"} <= set(body)


def test_seed_has_only_reference_currencies(dv: httpx.Client) -> None:
    codes = [c["isocurrencycode"] for c in dv.get("transactioncurrencies").json()["value"]]
    assert codes == ["USD", "EUR", "GBP", "DKK", "CAD"]
    eur = dv.get("transactioncurrencies(isocurrencycode='EUR')").json()
    assert eur["currencyname"] == "Euro" and eur["_createdby_value"] == SYSTEM_USER
    assert dv.get("accounts").json()["value"] == [] and dv.get("cdm_companies").json()["value"] == []


def test_create_by_post_and_read_by_pk_and_alternate_key(dv: httpx.Client) -> None:
    resp = dv.post("cdm_companies", json={"cdm_companycode": "usmf", "cdm_name": "Contoso USA"})
    assert resp.status_code == 204 and resp.content == b""
    entity_id = resp.headers["OData-EntityId"]
    assert entity_id.startswith("http://") and "/api/data/v9.2/cdm_companies(" in entity_id
    by_pk = dv.get(entity_id).json()
    by_code = dv.get("cdm_companies(cdm_companycode='usmf')", params={"$select": "cdm_name"}).json()
    assert by_pk["cdm_name"] == by_code["cdm_name"] == "Contoso USA"
    assert by_code["cdm_companyid"] == by_pk["cdm_companyid"] and "cdm_companycode" not in by_code
    assert by_pk["_createdby_value"] == object_id("dualwrite") and by_pk["createdon"].endswith("Z")
    assert by_pk["@odata.etag"] == f'W/"{by_pk["versionnumber"]}"'
    duplicate = dv.post("cdm_companies", json={"cdm_companycode": "USMF"})
    assert duplicate.status_code == 412 and error(duplicate)[0] == "0x80040237"
    missing = dv.get(f"cdm_companies({MISSING})")
    assert missing.status_code == 404
    assert error(missing) == ("0x80040217", f"cdm_company With Ids = {MISSING} Does Not Exist")


def test_upsert_creates_then_updates_by_alternate_key(dv: httpx.Client) -> None:
    cid = company(dv)
    group(dv, cid)
    url = account_url("US-001", cid)
    body = {
        "name": "Forest Wholesales",
        "creditlimit": 5000,
        "msdyn_customergroupid@odata.bind": f"/msdyn_customergroups(msdyn_groupid='10',msdyn_company={cid})",
        "transactioncurrencyid@odata.bind": "/transactioncurrencies(isocurrencycode='USD')",
    }
    created = dv.patch(url, json=body)
    assert created.status_code == 204
    pk_url = created.headers["OData-EntityId"]
    updated = dv.patch(url, json={"creditlimit": 7500.25})
    assert updated.status_code == 204 and updated.headers["OData-EntityId"] == pk_url
    row = dv.get(pk_url).json()
    assert row["accountnumber"] == "US-001" and row["_msdyn_company_value"] == cid
    assert row["creditlimit"] == 7500.25 and row["name"] == "Forest Wholesales"
    usd = dv.get("transactioncurrencies(isocurrencycode='USD')").json()["transactioncurrencyid"]
    assert row["_transactioncurrencyid_value"] == usd
    rep = dv.patch(url, json={"telephone1": "555"}, headers={"Prefer": "return=representation"})
    assert rep.status_code == 200 and rep.json()["telephone1"] == "555"
    new = dv.patch(account_url("US-002", cid), json={"name": "Two"}, headers={"Prefer": "return=representation"})
    assert new.status_code == 201 and new.json()["_msdyn_company_value"] == cid
    assert new.headers["Preference-Applied"] == "return=representation"
    by_pk = dv.patch(f"accounts({MISSING})", json={"name": "By pk"})
    assert by_pk.status_code == 204 and by_pk.headers["OData-EntityId"].endswith(f"accounts({MISSING})")


def test_upsert_preconditions(dv: httpx.Client) -> None:
    cid = company(dv)
    url = account_url("US-010", cid)
    no_create = dv.patch(url, json={"name": "x"}, headers={"If-Match": "*"})
    assert no_create.status_code == 404
    assert dv.get(url).status_code == 404
    assert dv.patch(url, json={"name": "x"}, headers={"If-None-Match": "*"}).status_code == 204
    no_update = dv.patch(url, json={"name": "y"}, headers={"If-None-Match": "*"})
    assert no_update.status_code == 412 and error(no_update)[0] == "0x80040237"
    current = dv.get(url).json()["@odata.etag"]
    assert dv.patch(url, json={"name": "y"}, headers={"If-Match": current}).status_code == 204
    stale = dv.patch(url, json={"name": "z"}, headers={"If-Match": current})
    assert stale.status_code == 412 and error(stale)[0] == "0x80060882"
    assert dv.get(url).json()["name"] == "y"
    assert dv.delete(url, headers={"If-Match": current}).status_code == 412
    assert dv.delete(url).status_code == 204
    gone = dv.delete(url)
    assert gone.status_code == 404 and error(gone)[0] == "0x80040217"


def test_binds(dv: httpx.Client) -> None:
    cid = company(dv)
    missing = dv.post("accounts", json={"name": "x", "msdyn_company@odata.bind": f"/cdm_companies({MISSING})"})
    assert missing.status_code == 404
    assert error(missing) == ("0x80040217", f"cdm_company With Ids = {MISSING} Does Not Exist")
    by_code = dv.post(
        "accounts",
        json={"name": "x", "accountnumber": "A1", "msdyn_company@odata.bind": "/cdm_companies(cdm_companycode='nope')"},
    )
    assert by_code.status_code == 404 and error(by_code) == (
        "0x80040217",
        "cdm_company With Ids = cdm_companycode:nope Does Not Exist",
    )
    absolute = f"{dv.base_url}cdm_companies(cdm_companycode='usmf')"
    ok = dv.post(
        "accounts",
        json={"name": "x", "accountnumber": "A1", "msdyn_company@odata.bind": absolute},
        headers={"Prefer": "return=representation"},
    )
    assert ok.status_code == 201 and ok.json()["_msdyn_company_value"] == cid
    url = ok.headers["OData-EntityId"]
    assert dv.patch(url, json={"msdyn_company@odata.bind": None}).status_code == 204
    assert dv.get(url).json()["_msdyn_company_value"] is None
    wrong_set = dv.patch(url, json={"msdyn_company@odata.bind": "/transactioncurrencies(isocurrencycode='USD')"})
    assert wrong_set.status_code == 400
    dangling_key = dv.patch(account_url("A2", MISSING), json={"name": "x"})
    assert dangling_key.status_code == 404 and error(dangling_key)[0] == "0x80040217"
    assert dv.patch(url, json={"msdyn_company@odata.bind": f"cdm_companies({cid})"}).status_code == 204
    annotated = dv.get(url, headers={"Prefer": 'odata.include-annotations="*"'}).json()
    assert annotated["_msdyn_company_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "cdm_company"


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (
            {"msdyn_onholdstatus": 7},
            "0x80044331",
            "A validation error occurred. The value 7 of 'msdyn_onholdstatus' "
            "on record of type 'account' is outside the valid range.",
        ),
        ({"customertypecode": 13}, "0x80044331", "outside the valid range"),
        (
            {"colour": "red"},
            "0x80048d19",
            "Invalid property 'colour' was found in entity 'Microsoft.Dynamics.CRM.account'.",
        ),
        ({"_msdyn_company_value": MISSING}, "0x80048d19", "Invalid property '_msdyn_company_value'"),
        ({"msdyn_company": MISSING}, "0x80048d19", "Invalid property 'msdyn_company'"),
        ({"creditlimit": "a lot"}, "0x80048d19", "Edm.Decimal"),
        ({"msdyn_onetimecustomer": "yes"}, "0x80048d19", "Edm.Boolean"),
        ({"name": "n" * 161}, "0x80044331", "exceeded the maximum allowed length of '160'"),
    ],
)
def test_validation_errors(dv: httpx.Client, body: dict[str, Any], code: str, message: str) -> None:
    resp = dv.post("accounts", json={"name": "x", **body})
    assert resp.status_code == 400
    got_code, got_message = error(resp)
    assert got_code == code and message in got_message


def test_required_column(dv: httpx.Client) -> None:
    resp = dv.post("msdyn_customergroups", json={"msdyn_description": "no id"})
    assert resp.status_code == 400 and "msdyn_groupid" in error(resp)[1]


# -- queries -------------------------------------------------------------------------------------------------
def test_filter_on_lookup_select_orderby_and_bad_queries(dv: httpx.Client) -> None:
    usmf, demf = company(dv, "usmf"), company(dv, "demf")
    for n, cid in enumerate([usmf, usmf, demf]):
        assert dv.patch(account_url(f"C-{n}", cid), json={"name": f"Name {n}", "numberofemployees": n}).is_success
    rows = dv.get(
        "accounts",
        params={
            "$filter": f"_msdyn_company_value eq {usmf}",
            "$select": "accountnumber",
            "$orderby": "accountnumber desc",
        },
    ).json()["value"]
    assert [r["accountnumber"] for r in rows] == ["C-1", "C-0"]
    assert set(rows[0]) == {"@odata.etag", "accountid", "accountnumber"}
    found = dv.get(
        "accounts",
        params={"$filter": "numberofemployees ge 1 and startswith(name,'Name')", "$count": "true", "$top": "1"},
    ).json()
    assert found["@odata.count"] == 2 and len(found["value"]) == 1
    for params, text in [
        ({"$filter": "msdyn_company eq 1"}, "Could not find a property named 'msdyn_company'"),
        ({"$filter": f"_msdyn_company_value eq '{usmf}'"}, "incompatible types"),
        ({"$skip": "1"}, "$skip is not supported"),
        ({"$select": "nope"}, "nope"),
    ]:
        resp = dv.get("accounts", params=params)
        assert resp.status_code == 400 and error(resp)[0] == "0x80060888" and text in error(resp)[1]
    assert dv.get("Accounts").status_code == 404


def test_paging_with_maxpagesize(dv: httpx.Client) -> None:
    cid = company(dv)
    for n in range(7):
        assert dv.patch(account_url(f"P-{n}", cid), json={"name": f"P{n}"}).status_code == 204
    url: str | None = "accounts?$select=name"
    names: list[str] = []
    while url:
        resp = dv.get(url, headers={"Prefer": "odata.maxpagesize=3"})
        assert resp.headers["Preference-Applied"] == "odata.maxpagesize=3"
        page = resp.json()
        assert len(page["value"]) <= 3
        names += [r["name"] for r in page["value"]]
        url = page.get("@odata.nextLink")
        assert url is None or "$skiptoken=" in url
    assert names == [f"P{n}" for n in range(7)]


# -- change tracking -------------------------------------------------------------------------------------------
def follow(dv: httpx.Client, url: str | None) -> tuple[list[dict[str, Any]], str]:
    """Every row of a change-tracking read, two per page, and the deltaLink of its last page."""
    rows: list[dict[str, Any]] = []
    delta_link = None
    while url:
        resp = dv.get(url, headers={"Prefer": "odata.track-changes,odata.maxpagesize=2"})
        assert resp.status_code == 200 and "odata.track-changes" in resp.headers["Preference-Applied"]
        page = resp.json()
        assert len(page["value"]) <= 2
        rows += page["value"]
        url = page.get("@odata.nextLink")
        delta_link = page.get("@odata.deltaLink")
        assert (url is None) != (delta_link is None)  # only the last page carries the deltaLink
    assert delta_link is not None
    return rows, delta_link


def test_change_tracking_initial_then_delta(dv: httpx.Client) -> None:
    cid = company(dv)
    for n in range(5):
        dv.patch(account_url(f"T-{n}", cid), json={"name": f"T{n}"})
    initial, delta_link = follow(dv, "accounts?$select=name,accountnumber,_modifiedby_value")
    assert [r["name"] for r in initial] == [f"T{n}" for n in range(5)]
    assert all(set(r) == {"@odata.etag", "accountid", "name", "accountnumber", "_modifiedby_value"} for r in initial)
    assert delta_link and "$select=name,accountnumber,_modifiedby_value" in delta_link and "$deltatoken=" in delta_link

    pk = {r["name"]: r["accountid"] for r in initial}
    dv.patch(account_url("T-1", cid), json={"name": "T1 renamed"})
    dv.patch(account_url("T-1", cid), json={"name": "T1 renamed twice"})
    dv.delete(account_url("T-3", cid))
    dv.patch(account_url("T-9", cid), json={"name": "T9"})
    delta = dv.get(delta_link).json()
    assert delta["@odata.context"].endswith("#accounts(name,accountnumber,_modifiedby_value)/$delta")
    paged, paged_link = follow(dv, delta_link)  # the same changes, two per page
    assert paged == delta["value"] and paged_link
    changed = [r for r in delta["value"] if "reason" not in r]
    deleted = [r for r in delta["value"] if "reason" in r]
    assert [r["name"] for r in changed] == ["T1 renamed twice", "T9"]
    assert changed[0]["accountid"] == pk["T1"] and changed[0]["_modifiedby_value"] == object_id("dualwrite")
    assert deleted == [
        {"@odata.context": f"{dv.base_url}$metadata#accounts/$deletedEntity", "id": pk["T3"], "reason": "deleted"}
    ]
    again = dv.get(delta["@odata.deltaLink"]).json()
    assert again["value"] == [] and "@odata.deltaLink" in again


def test_change_tracking_refuses_filter_orderby_expand_top(dv: httpx.Client) -> None:
    for option in ("$filter=name eq 'x'", "$orderby=name", "$top=1", "$expand=msdyn_company"):
        resp = dv.get(f"accounts?$select=name&{option}", headers={"Prefer": "odata.track-changes"})
        assert resp.status_code == 400
        assert "change tracking" in error(resp)[1] or "$expand" in error(resp)[1]


def test_expired_delta_token(start: Callable[..., httpx.Client]) -> None:
    dv = start(delta_token_ttl_s=1)
    link = dv.get("accounts?$select=name", headers={"Prefer": "odata.track-changes"}).json()["@odata.deltaLink"]
    assert dv.get(link).status_code == 200
    time.sleep(2.05)
    resp = dv.get(link)
    assert resp.status_code == 400
    code, message = error(resp)
    assert code == "0x80044352" and "expired" in message
    bad = dv.get("accounts?$select=name&$deltatoken=garbage")
    assert bad.status_code == 400


# -- $batch ------------------------------------------------------------------------------------------------------
def part(method: str, url: str, body: dict[str, Any] | None = None, content_id: int | None = None) -> str:
    cid = f"Content-ID: {content_id}\r\n" if content_id else ""
    payload = json.dumps(body) if body is not None else ""
    return (
        f"Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n{cid}\r\n"
        f"{method} {url} HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{payload}\r\n"
    )


def batch(items: list[str | list[str]]) -> bytes:
    out = ""
    for i, item in enumerate(items):
        if isinstance(item, list):
            out += f"--batch_x\r\nContent-Type: multipart/mixed; boundary=cs_{i}\r\n\r\n"
            out += "".join(f"--cs_{i}\r\n{p}" for p in item) + f"--cs_{i}--\r\n"
        else:
            out += f"--batch_x\r\n{item}"
    return (out + "--batch_x--\r\n").encode()


def send(dv: httpx.Client, body: bytes, prefer: str | None = None) -> tuple[httpx.Response, list[Any]]:
    headers = {"Content-Type": "multipart/mixed; boundary=batch_x"}
    if prefer:
        headers["Prefer"] = prefer
    resp = dv.post("$batch", content=body, headers=headers)
    return resp, parse_batch_response(resp.content, resp.headers["content-type"])


def test_batch_change_set_with_content_id_reference(dv: httpx.Client) -> None:
    body = batch(
        [
            [
                part("POST", f"{API}cdm_companies", {"cdm_companycode": "usmf"}, 1),
                part("POST", "msdyn_customergroups", {"msdyn_groupid": "10", "msdyn_company@odata.bind": "$1"}, 2),
            ],
            part("GET", "msdyn_customergroups?$select=msdyn_groupid,_msdyn_company_value"),
        ]
    )
    resp, parts = send(dv, body)
    assert resp.status_code == 200
    changeset, get = parts
    assert [p.status for p in changeset] == [204, 204]
    rows = json.loads(get.body)["value"]
    company_url = changeset[0].headers["odata-entityid"]
    assert len(rows) == 1 and company_url.endswith(f"({rows[0]['_msdyn_company_value']})")


def test_batch_stops_at_first_failure_without_continue_on_error(dv: httpx.Client) -> None:
    body = batch(
        [
            part("POST", "cdm_companies", {"cdm_companycode": "aaaa"}),
            part("POST", "cdm_companies", {"cdm_companycode": "bbbb", "bogus": 1}),
            part("POST", "cdm_companies", {"cdm_companycode": "cccc"}),
        ]
    )
    resp, parts = send(dv, body)
    assert resp.status_code == 400
    [failed] = parts
    assert isinstance(failed, PartResponse) and failed.status == 400
    assert json.loads(failed.body)["error"]["code"] == "0x80048d19"
    codes = [c["cdm_companycode"] for c in dv.get("cdm_companies").json()["value"]]
    assert codes == ["aaaa"]

    resp, parts = send(dv, body.replace(b"aaaa", b"dddd"), prefer="odata.continue-on-error")
    assert resp.status_code == 200 and resp.headers["Preference-Applied"] == "odata.continue-on-error"
    assert [p.status for p in parts] == [204, 400, 204]
    codes = [c["cdm_companycode"] for c in dv.get("cdm_companies").json()["value"]]
    assert codes == ["aaaa", "dddd", "cccc"]


def test_batch_change_set_rolls_back_and_writes_are_counted(dv: httpx.Client) -> None:
    body = batch(
        [
            [
                part("POST", "cdm_companies", {"cdm_companycode": "xx01"}),
                part("PATCH", "cdm_companies(cdm_companycode='xx02')", {"cdm_name": "two"}),
                part("DELETE", f"cdm_companies({MISSING})"),
            ]
        ]
    )
    resp, parts = send(dv, body, prefer="odata.continue-on-error")
    assert resp.status_code == 200
    [failure] = parts
    assert isinstance(failure, PartResponse) and failure.status == 404
    assert dv.get("cdm_companies").json()["value"] == []
    stats = dv.get(f"{dv.base_url.scheme}://{dv.base_url.netloc.decode()}/_standin/stats").json()
    assert stats["writes"]["dualwrite"] == {"POST": 1, "PATCH": 1, "DELETE": 1}
    over = dv.post(
        "$batch",
        content=batch([part("GET", "accounts")] * 1001),
        headers={"Content-Type": "multipart/mixed; boundary=batch_x"},
    )
    assert over.status_code == 400 and "1000" in error(over)[1]


# -- service protection ----------------------------------------------------------------------------------------------
def test_request_limit_answers_429_with_retry_after(start: Callable[..., httpx.Client]) -> None:
    dv = start(max_requests=3, window_s=60)
    assert (
        dv.post(
            "$batch",
            content=batch([part("GET", "accounts")] * 5),
            headers={"Content-Type": "multipart/mixed; boundary=batch_x"},
        ).status_code
        == 200
    )
    assert [dv.get("WhoAmI").status_code for _ in range(2)] == [200, 200]
    throttled = dv.get("accounts")
    assert throttled.status_code == 429
    assert 1 <= int(throttled.headers["Retry-After"]) <= 60
    assert error(throttled) == (
        "0x80072322",
        "Number of requests exceeded the limit of 3 over time window of 60 seconds.",
    )
    stats = dv.get(f"{dv.base_url.scheme}://{dv.base_url.netloc.decode()}/_standin/stats").json()
    assert sum(stats["throttled"].values()) == 1  # the stand-in counts the 429s it answered


def test_concurrency_limit_answers_429(start: Callable[..., httpx.Client]) -> None:
    dv = start(max_concurrent=1, latency_s=0.3)
    results: list[httpx.Response] = []

    def call() -> None:
        with httpx.Client(headers=dv.headers, timeout=10) as own:
            results.append(own.get(f"{dv.base_url}WhoAmI"))

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in results) == [200, 429]
    throttled = next(r for r in results if r.status_code == 429)
    assert error(throttled)[0] == "0x80072326" and throttled.headers["Retry-After"]


def test_execution_time_limit_charges_each_operation_and_answers_429_with_retry_after(
    start: Callable[..., httpx.Client],
) -> None:
    # 100 ms per operation, 1,000 ms per 60 s: a $batch of 4 parts and a bulk message of 5 records use it up.
    dv = start(max_execution_ms=1000, operation_cost_ms=100, window_s=60)
    cid = company(dv)
    parts = batch([part("GET", "accounts")] * 4)
    answer = dv.post("$batch", content=parts, headers={"Content-Type": "multipart/mixed; boundary=batch_x"})
    assert answer.status_code == 200 and answer.headers["x-ms-dop-hint"] == "4"
    targets = [
        {
            "@odata.type": "Microsoft.Dynamics.CRM.account",
            "accountnumber": f"EX-{i}",
            "name": f"Ex {i}",
            "msdyn_company@odata.bind": f"/cdm_companies({cid})",
        }
        for i in range(5)
    ]
    assert dv.post("accounts/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets}).status_code == 200
    # 1 (the company read) + 4 + 5 operations = 1,000 ms and more (their own time too): the next is refused
    throttled = dv.get("WhoAmI")
    assert throttled.status_code == 429
    assert 1 <= int(throttled.headers["Retry-After"]) <= 60 and throttled.headers["x-ms-dop-hint"] == "4"
    assert error(throttled) == (
        "0x80072321",
        "Combined execution time of incoming requests exceeded limit of 1,000 milliseconds over time window of "
        "60 seconds. Decrease number of concurrent requests or reduce the duration of requests and try again later.",
    )
    # another application user has its own limits
    other = httpx.Client(base_url=dv.base_url, headers={"Authorization": f"Bearer {token('someone-else')}"})
    with other:
        assert other.get("WhoAmI").status_code == 200


def test_execution_time_charged_leaves_the_window_and_requests_run_again(start: Callable[..., httpx.Client]) -> None:
    dv = start(max_execution_ms=250, operation_cost_ms=100, window_s=1.5)
    assert [dv.get("WhoAmI").status_code for _ in range(3)] == [200, 200, 200]
    assert dv.get("WhoAmI").status_code == 429
    time.sleep(1.6)
    assert dv.get("WhoAmI").status_code == 200


# -- scale ------------------------------------------------------------------------------------------------------------
def test_key_reads_stay_fast_with_100k_rows() -> None:
    store = Store(":memory:", (ACCOUNTS,))
    ids = [str(uuid.UUID(int=n + 1)) for n in range(100_000)]
    rows = [{"accountid": ids[n], "accountnumber": f"N-{n:06d}", "name": f"Account {n}"} for n in range(100_000)]
    assert store.insert_many(ACCOUNTS, rows, SYSTEM_USER) == 100_000
    started = time.perf_counter()
    for n in range(0, 100_000, 500):
        assert store.get(ACCOUNTS, {"accountnumber": f"N-{n:06d}", "msdyn_company": None}) is not None
        assert store.get_by_id(ACCOUNTS, ids[n]) is not None
    per_read = (time.perf_counter() - started) / 400
    assert per_read < 0.001, f"{per_read * 1000:.2f} ms per key read"
    assert store.current_version() == 100_000 and store.get_by_id(ACCOUNTS, ids[-1]).version == 100_000  # type: ignore[union-attr]
