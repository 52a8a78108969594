"""The F&O stand-in over real HTTP: OData reads and writes, $batch, and data events to a live endpoint."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from standins.fo import Settings, build_event, create_app, event_json
from standins.odata import PartResponse, parse_batch_response
from standins.server import BackgroundServer, free_port
from standins.store import EntityDef, Field, Row
from standins.token import DEFAULT_SIGNING_KEY, issue_token, object_id

AUDIENCE = "https://contoso.operations.dynamics.com"
WRITE_EXCEPTION = "Microsoft.Dynamics.Platform.Integration.Services.OData.AxODataWriteException"


def token(client_id: str = "dualwrite") -> str:
    return issue_token(client_id, AUDIENCE, "tenant", DEFAULT_SIGNING_KEY)


class Receiver:
    """A webhook endpoint that records data events and can refuse the first few."""

    def __init__(self, fail_first: int = 0, port: int = 0, delay_s: float = 0.0) -> None:
        self.fail_first = fail_first
        self.bodies: list[str] = []
        self.received_at: list[float] = []
        self.attempts = 0
        self.in_flight = self.most_in_flight = 0  # POSTs being answered at once
        self.lock = threading.Lock()

        async def receive(request: Request) -> Response:
            body = (await request.body()).decode()
            with self.lock:
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                await asyncio.sleep(delay_s)
                with self.lock:
                    self.attempts += 1
                    if self.attempts <= self.fail_first:
                        return Response("busy", status_code=503)
                    self.bodies.append(body)
                    self.received_at.append(time.monotonic())
                return Response(status_code=200)
            finally:
                with self.lock:
                    self.in_flight -= 1

        self.server = BackgroundServer(Starlette(routes=[Route("/events", receive, methods=["POST"])]), port=port)

    @property
    def url(self) -> str:
        return f"{self.server.url}/events"

    @property
    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(b) for b in self.bodies]


def wait_for(condition: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.005)
    raise AssertionError("condition not met in time")


@pytest.fixture
def clients() -> Iterator[list[httpx.Client]]:
    opened: list[httpx.Client] = []
    yield opened
    for client in opened:
        client.close()


@pytest.fixture
def servers(clients: list[httpx.Client]) -> Iterator[list[BackgroundServer]]:
    started: list[BackgroundServer] = []
    yield started
    for client in clients:  # idle keep-alive connections would slow the servers' shutdown
        client.close()
    for srv in reversed(started):
        srv.stop()


@pytest.fixture
def receiver(servers: list[BackgroundServer]) -> Receiver:
    r = Receiver()
    servers.append(r.server.start())
    return r


@pytest.fixture
def start(servers: list[BackgroundServer], clients: list[httpx.Client]) -> Callable[..., httpx.Client]:
    """Start an F&O stand-in with these settings; returns a client holding a `dualwrite` token."""

    def _start(client_id: str = "dualwrite", **settings: Any) -> httpx.Client:
        srv = BackgroundServer(create_app(Settings(**{"seed": True, **settings}))).start()
        servers.append(srv)
        client = httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {token(client_id)}"}, timeout=10)
        clients.append(client)
        return client

    return _start


@pytest.fixture
def fo(start: Callable[..., httpx.Client], receiver: Receiver) -> httpx.Client:
    return start(event_endpoints=[receiver.url])


def inner(resp: httpx.Response) -> str:
    body = resp.json()
    assert body["error"]["message"] == "An error has occurred."
    return str(body["error"]["innererror"]["message"])


def new_customer(account: str = "US-900", **extra: Any) -> dict[str, Any]:
    return {
        "CustomerAccount": account,
        "OrganizationName": "Northwind Outlet",
        "CustomerGroupId": "30",
        "SalesCurrencyCode": "USD",
        "CreditLimit": 2500.5,
        "OnHoldStatus": "No",
        **extra,
    }


def attrs(entity: dict[str, Any]) -> dict[str, Any]:
    return {a["key"]: a["value"] for a in entity["Attributes"]}


# -- reads -----------------------------------------------------------------------------------------------
def test_missing_or_bad_token_gets_401_with_odata_error(fo: httpx.Client) -> None:
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer not.a.token"}):
        resp = fo.get("/data/CustomersV3", headers=headers)
        assert resp.status_code == 401
        assert "bearer token" in inner(resp)


def test_reads_are_for_the_default_company_unless_cross_company(fo: httpx.Client) -> None:
    usmf = fo.get("/data/CustomersV3").json()
    assert len(usmf["value"]) == 30 and {c["dataAreaId"] for c in usmf["value"]} == {"usmf"}
    assert usmf["@odata.context"].endswith("/data/$metadata#CustomersV3")
    both = fo.get("/data/CustomersV3", params={"cross-company": "true", "$count": "true"}).json()
    assert both["@odata.count"] == 60 and {c["dataAreaId"] for c in both["value"]} == {"usmf", "demf"}
    groups = fo.get("/data/CustomerGroups", params={"cross-company": "true"}).json()["value"]
    assert (
        len(groups) == 10
        and {"CustomerGroupId": "90", "Description": "Intercompany customers"}.items() <= groups[4].items()
    )
    legal = fo.get("/data/LegalEntities").json()["value"]
    assert [(le["LegalEntityId"], le["Name"]) for le in legal] == [
        ("usmf", "Contoso Entertainment System USA"),
        ("demf", "Contoso Entertainment System Germany"),
    ]


def test_key_read_select_and_missing_key(fo: httpx.Client) -> None:
    resp = fo.get(
        "/data/CustomersV3(dataAreaId='demf',CustomerAccount='DE-002')",
        params={"$select": "CustomerAccount,OrganizationName,SalesCurrencyCode,CreditLimit"},
    )
    assert resp.status_code == 200
    body = resp.json()
    assert body["@odata.context"].endswith(
        "#CustomersV3(CustomerAccount,OrganizationName,SalesCurrencyCode,CreditLimit)/$entity"
    )
    assert body["@odata.etag"].startswith('W/"') and resp.headers["ETag"] == body["@odata.etag"]
    assert {k: body[k] for k in ("CustomerAccount", "SalesCurrencyCode")} == {
        "CustomerAccount": "DE-002",
        "SalesCurrencyCode": "EUR",
    }
    assert set(body) == {
        "@odata.context",
        "@odata.etag",
        "CustomerAccount",
        "OrganizationName",
        "SalesCurrencyCode",
        "CreditLimit",
    }
    full = fo.get("/data/CustomersV3(dataAreaId='usmf',CustomerAccount='US-001')").json()
    assert full["PartyType"] == "Organization" and full["InvoiceAccount"] == ""
    assert full["DeliveryAddressCountryRegionISOCode"] == "US"
    missing = fo.get("/data/CustomersV3(dataAreaId='usmf',CustomerAccount='NOPE')")
    assert missing.status_code == 404 and "CustomersV3" in inner(missing)
    assert fo.get("/data/CustomersV3(CustomerAccount='US-001')").status_code == 400
    assert fo.get("/data/NoSuchEntities").status_code == 404
    assert fo.get("/data/customersv3").status_code == 404  # entity set names are case-sensitive


def test_filter_wildcard_orderby_top(fo: httpx.Client) -> None:
    params = {
        "$filter": "OrganizationName eq '*ware*' and CreditLimit gt 0",
        "$select": "OrganizationName",
        "$orderby": "OrganizationName desc",
    }
    names = [c["OrganizationName"] for c in fo.get("/data/CustomersV3", params=params).json()["value"]]
    assert names == ["Proseware Inc.", "Litware Inc."]
    enum = fo.get(
        "/data/CustomersV3",
        params={
            "$filter": "CreditLimitIsMandatory eq Microsoft.Dynamics.DataEntities.NoYes'Yes' and dataAreaId eq 'usmf'",
            "$top": "3",
        },
    ).json()["value"]
    assert len(enum) == 3 and all(c["CreditLimitIsMandatory"] == "Yes" for c in enum)
    cross = fo.get(
        "/data/CustomersV3", params={"cross-company": "true", "$filter": "CustomerAccount in ('DE-001','US-001')"}
    )
    assert sorted(c["CustomerAccount"] for c in cross.json()["value"]) == ["DE-001", "US-001"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"$filter": "Nope eq 1"}, "Could not find a property named 'Nope'"),
        ({"$filter": "CreditLimit eq 'x'"}, "incompatible types"),
        ({"$filter": "(CustomerAccount eq 'x'"}, "expected ')'"),
        ({"$orderby": "CustomerAccount sideways"}, "$orderby"),
        ({"$top": "-1"}, "$top"),
        ({"$select": "Nope"}, "Nope"),
        ({"$expand": "Anything"}, "$expand"),
    ],
)
def test_bad_queries_answer_400_with_a_message(fo: httpx.Client, params: dict[str, str], message: str) -> None:
    resp = fo.get("/data/CustomersV3", params=params)
    assert resp.status_code == 400
    assert message in inner(resp)


def test_server_driven_paging_follows_next_links(start: Callable[..., httpx.Client]) -> None:
    fo = start(page_size=10)
    url: str | None = "/data/CustomersV3?cross-company=true"
    seen: list[str] = []
    while url:
        page = fo.get(url).json()
        assert len(page["value"]) <= 10
        seen += [f"{c['dataAreaId']}/{c['CustomerAccount']}" for c in page["value"]]
        url = page.get("@odata.nextLink")
        assert url is None or url.startswith("http://")
    assert len(seen) == 60 and len(set(seen)) == 60


# -- writes and events -------------------------------------------------------------------------------------
def test_create_answers_201_and_sends_a_create_event(fo: httpx.Client, receiver: Receiver) -> None:
    resp = fo.post("/data/CustomersV3", json=new_customer())
    sent_at = time.monotonic()
    assert resp.status_code == 201, resp.text
    entity_id = "/data/CustomersV3(dataAreaId='usmf',CustomerAccount='US-900')"
    assert resp.headers["OData-EntityId"].endswith(entity_id) and resp.headers["Location"].endswith(entity_id)
    body = resp.json()
    assert body["dataAreaId"] == "usmf" and body["CreditLimit"] == 2500.5 and body["LanguageId"] == "en-us"
    assert fo.get(entity_id).json()["OrganizationName"] == "Northwind Outlet"

    [event] = wait_for(lambda: receiver.events)
    assert receiver.received_at[0] - sent_at < 0.5
    assert event["MessageName"] == "Create" and event["PrimaryEntityName"] == "mserp_custcustomerv3entity"
    assert event["InitiatingUserId"] == event["UserId"] == object_id("dualwrite")
    assert event["Depth"] == 1 and event["Stage"] == 40 and event["Mode"] == 1
    assert event["PreEntityImages"] == [] and event["PostEntityImages"] == []
    assert '"OperationCreatedOn": "\\/Date(' in receiver.bodies[0]
    [target] = event["InputParameters"]
    assert target["key"] == "Target"
    entity = target["value"]
    assert entity["__type"] == "Entity:http://schemas.microsoft.com/xrm/2011/Contracts"
    assert entity["LogicalName"] == "mserp_custcustomerv3entity" and entity["Id"] == event["PrimaryEntityId"]
    assert entity["RowVersion"] == body["@odata.etag"][3:-1]
    values = attrs(entity)
    assert values["mserp_dataareaid"] == "usmf" and values["mserp_customeraccount"] == "US-900"
    assert values["mserp_creditlimit"] == 2500.5 and values["mserp_onholdstatus"] == "No"
    assert values["mserp_partytype"] == "Organization"


def test_writes_by_another_user_carry_that_users_id(start: Callable[..., httpx.Client], receiver: Receiver) -> None:
    demo = start(client_id="demo-user", event_endpoints=[receiver.url])
    assert (
        demo.patch("/data/CustomersV3(dataAreaId='usmf',CustomerAccount='US-003')", json={"CreditLimit": 1}).status_code
        == 204
    )
    [event] = wait_for(lambda: receiver.events)
    assert event["InitiatingUserId"] == object_id("demo-user") != object_id("dualwrite")


def test_update_and_delete_events_carry_the_pre_image(fo: httpx.Client, receiver: Receiver) -> None:
    url = "/data/CustomersV3(dataAreaId='usmf',CustomerAccount='US-005')"
    before = fo.get(url).json()
    stale = fo.patch(url, json={"CreditLimit": 1}, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    resp = fo.patch(
        url,
        json={"OrganizationName": "Renamed Ltd", "OnHoldStatus": "All"},
        headers={"If-Match": before["@odata.etag"]},
    )
    assert resp.status_code == 204 and resp.content == b""
    after = fo.get(url).json()
    assert after["OrganizationName"] == "Renamed Ltd" and after["@odata.etag"] != before["@odata.etag"]
    assert fo.delete(url).status_code == 204
    assert fo.get(url).status_code == 404
    assert fo.delete(url).status_code == 404

    update, delete = wait_for(lambda: receiver.events if len(receiver.events) == 2 else None)
    assert update["MessageName"] == "Update"
    assert attrs(update["InputParameters"][0]["value"])["mserp_organizationname"] == "Renamed Ltd"
    [pre] = update["PreEntityImages"]
    assert pre["key"] == "PreImage" and attrs(pre["value"])["mserp_organizationname"] == before["OrganizationName"]
    assert delete["MessageName"] == "Delete"
    target = delete["InputParameters"][0]["value"]
    assert target["__type"] == "EntityReference:http://schemas.microsoft.com/xrm/2011/Contracts"
    assert target["KeyAttributes"] == [
        {"key": "mserp_dataareaid", "value": "usmf"},
        {"key": "mserp_customeraccount", "value": "US-005"},
    ]
    assert target["Id"] == update["PrimaryEntityId"] == delete["PrimaryEntityId"] and target["Name"] is None
    assert attrs(delete["PreEntityImages"][0]["value"])["mserp_onholdstatus"] == "All"


def test_patch_has_no_upsert_and_honours_preconditions(fo: httpx.Client) -> None:
    missing = "/data/CustomersV3(dataAreaId='usmf',CustomerAccount='US-999')"
    assert fo.patch(missing, json={"CreditLimit": 1}).status_code == 404
    assert fo.patch(missing, json={"CreditLimit": 1}, headers={"If-Match": "*"}).status_code == 404
    url = "/data/CustomersV3(dataAreaId='usmf',CustomerAccount='US-002')"
    assert fo.patch(url, json={"CreditLimit": 1}, headers={"If-None-Match": "*"}).status_code == 412
    key_change = fo.patch(url, json={"CustomerAccount": "US-777"})
    assert key_change.status_code == 400 and "cannot be changed" in inner(key_change)
    rep = fo.patch(url, json={"CreditLimit": 7}, headers={"Prefer": "return=representation"})
    assert rep.status_code == 200 and rep.json()["CreditLimit"] == 7


def test_create_in_another_company_by_body_and_group_per_company(fo: httpx.Client) -> None:
    resp = fo.post(
        "/data/CustomerGroups",
        json={
            "dataAreaId": "demf",
            "CustomerGroupId": "55",
            "Description": "Export",
            "IsSalesTaxIncludedInPrice": "Yes",
        },
    )
    assert resp.status_code == 201 and resp.json()["dataAreaId"] == "demf"
    wrong_company = fo.post("/data/CustomersV3", json=new_customer(CustomerGroupId="55"))
    assert wrong_company.status_code == 400 and "Customer group '55' does not exist" in inner(wrong_company)
    ok = fo.post("/data/CustomersV3", json=new_customer("DE-900", dataAreaId="demf", CustomerGroupId="55"))
    assert ok.status_code == 201
    assert fo.get("/data/CustomersV3(dataAreaId='demf',CustomerAccount='DE-900')").status_code == 200


@pytest.mark.parametrize(
    ("body", "message", "inner_type"),
    [
        (
            new_customer(CustomerGroupId="XX"),
            "Write failed for table row of type 'CustCustomerV3Entity'. Infolog: Error: Customer group 'XX' does not "
            "exist.",
            WRITE_EXCEPTION,
        ),
        (new_customer(dataAreaId="zzzz"), "Company 'zzzz' does not exist.", WRITE_EXCEPTION),
        (
            {"CustomerAccount": "US-901", "OrganizationName": "No group"},
            "Field 'CustomerGroupId' must be filled in",
            WRITE_EXCEPTION,
        ),
        (
            new_customer(Colour="red"),
            "The property 'Colour' does not exist on type 'Microsoft.Dynamics.DataEntities.CustomerV3'",
            "Microsoft.OData.ODataException",
        ),
        (
            new_customer(organizationname="x"),
            "The property 'organizationname' does not exist",
            "Microsoft.OData.ODataException",
        ),
        (new_customer(CreditLimit="lots"), "Edm.Decimal", "Microsoft.OData.ODataException"),
        (new_customer(OrganizationNumberOfEmployees=2.5), "Edm.Int32", "Microsoft.OData.ODataException"),
        (
            new_customer(OnHoldStatus="Maybe"),
            "'Maybe' is not valid for enum property 'OnHoldStatus'",
            "Microsoft.OData.ODataException",
        ),
        (new_customer(OrganizationName="x" * 101), "maximum length is 100", WRITE_EXCEPTION),
        (new_customer("US-001"), "The record already exists", WRITE_EXCEPTION),
    ],
)
def test_validation_answers_400_with_the_fo_error_body(
    fo: httpx.Client, body: dict[str, Any], message: str, inner_type: str
) -> None:
    resp = fo.post("/data/CustomersV3", json=body)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["code"] == "" and error["innererror"]["type"] == inner_type
    assert message in error["innererror"]["message"]


def test_invalid_json_is_400(fo: httpx.Client) -> None:
    resp = fo.post("/data/CustomersV3", content=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and "not valid JSON" in inner(resp)


# -- $batch -------------------------------------------------------------------------------------------------
def batch_body(
    changesets: list[list[tuple[str, str, dict[str, Any] | None]]], singles: list[tuple[str, str]] = ()
) -> bytes:  # type: ignore[assignment]
    out = ""
    for i, changeset in enumerate(changesets):
        out += f"--batch_1\r\nContent-Type: multipart/mixed; boundary=changeset_{i}\r\n\r\n"
        for n, (method, url, body) in enumerate(changeset, 1):
            out += (
                f"--changeset_{i}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
                f"Content-ID: {n}\r\n\r\n{method} {url} HTTP/1.1\r\nContent-Type: application/json\r\n\r\n"
                f"{json.dumps(body) if body is not None else ''}\r\n"
            )
        out += f"--changeset_{i}--\r\n"
    for method, url in singles:
        out += (
            f"--batch_1\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
            f"{method} {url} HTTP/1.1\r\nAccept: application/json\r\n\r\n\r\n"
        )
    return (out + "--batch_1--\r\n").encode()


def post_batch(client: httpx.Client, body: bytes) -> tuple[httpx.Response, list[Any]]:
    resp = client.post("/data/$batch", content=body, headers={"Content-Type": "multipart/mixed; boundary=batch_1"})
    return resp, parse_batch_response(resp.content, resp.headers["content-type"])


def test_batch_change_set_is_all_or_nothing(fo: httpx.Client, receiver: Receiver) -> None:
    bad = batch_body(
        [
            [
                ("POST", "CustomersV3", new_customer("US-950")),
                ("POST", "CustomersV3", new_customer("US-951", CustomerGroupId="XX")),
            ]
        ]
    )
    resp, parts = post_batch(fo, bad)
    assert resp.status_code == 200
    [failure] = parts
    assert isinstance(failure, PartResponse) and failure.status == 400
    assert "Customer group 'XX' does not exist" in json.loads(failure.body)["error"]["innererror"]["message"]
    assert fo.get("/data/CustomersV3(dataAreaId='usmf',CustomerAccount='US-950')").status_code == 404
    assert fo.get("/_standin/events").json()["events"] == []

    root = str(fo.base_url)
    good = batch_body(
        [
            [
                ("POST", f"{root}/data/CustomersV3", new_customer("US-960")),
                ("PATCH", "/data/CustomersV3(dataAreaId='usmf',CustomerAccount='US-001')", {"CreditLimit": 99}),
            ]
        ],
        singles=[("GET", "CustomersV3(dataAreaId='usmf',CustomerAccount='US-960')?$select=CustomerAccount")],
    )
    resp, parts = post_batch(fo, good)
    assert resp.status_code == 200
    changeset, get = parts
    assert [p.status for p in changeset] == [201, 204] and [p.content_id for p in changeset] == ["1", "2"]
    assert get.status == 200 and json.loads(get.body)["CustomerAccount"] == "US-960"
    events = wait_for(lambda: receiver.events if len(receiver.events) == 2 else None)
    assert [e["MessageName"] for e in events] == ["Create", "Update"]
    writes = fo.get("/_standin/stats").json()["writes"]["dualwrite"]
    assert writes == {"POST": 3, "PATCH": 1, "DELETE": 0}


def test_batch_over_1000_requests_is_400(fo: httpx.Client) -> None:
    resp = fo.post(
        "/data/$batch",
        content=batch_body([], singles=[("GET", "LegalEntities")] * 1001),
        headers={"Content-Type": "multipart/mixed; boundary=batch_1"},
    )
    assert resp.status_code == 400 and "1000" in inner(resp)


# -- delivery ---------------------------------------------------------------------------------------------
def test_delivery_retries_the_head_event_until_accepted_keeping_order(
    start: Callable[..., httpx.Client], servers: list[BackgroundServer]
) -> None:
    flaky = Receiver(fail_first=3)
    servers.append(flaky.server.start())
    fo = start(event_endpoints=[flaky.url])
    for n in range(5):
        assert (
            fo.patch(
                "/data/CustomersV3(dataAreaId='usmf',CustomerAccount='US-010')", json={"CreditLimit": n}
            ).status_code
            == 204
        )
    events = wait_for(lambda: flaky.events if len(flaky.events) == 5 else None)
    limits = [attrs(e["InputParameters"][0]["value"])["mserp_creditlimit"] for e in events]
    assert limits == [0, 1, 2, 3, 4] and flaky.attempts == 8
    # (the cursor moves once the stand-in has the answer, a moment after the receiver has the event)
    listing = wait_for(
        lambda: (r := fo.get("/_standin/events", params={"after": 2}).json())
        and all(e["delivered"] == {flaky.url: True} for e in r["events"])
        and r
    )
    assert [e["seq"] for e in listing["events"]] == [3, 4, 5]


def test_concurrent_delivery_keeps_each_records_events_in_order(
    start: Callable[..., httpx.Client], servers: list[BackgroundServer]
) -> None:
    flaky = Receiver(fail_first=5, delay_s=0.01)
    servers.append(flaky.server.start())
    fo = start(event_endpoints=[flaky.url], event_concurrency=4)
    accounts = [f"US-0{n:02d}" for n in range(10, 16)]
    for n in range(8):
        for account in accounts:
            url = f"/data/CustomersV3(dataAreaId='usmf',CustomerAccount='{account}')"
            assert fo.patch(url, json={"CreditLimit": n}).status_code == 204
    events = wait_for(lambda: flaky.events if len(flaky.events) >= 48 else None, timeout=20)
    per_record: dict[str, list[Any]] = {}
    for e in events:
        a = attrs(e["InputParameters"][0]["value"])
        per_record.setdefault(a["mserp_customeraccount"], []).append(a["mserp_creditlimit"])
    assert per_record == {account: list(range(8)) for account in accounts}, per_record
    assert len(events) == 48 and flaky.most_in_flight > 1, (len(events), flaky.most_in_flight)
    wait_for(lambda: all(e["delivered"][flaky.url] for e in fo.get("/_standin/events").json()["events"]))


def test_undelivered_events_survive_a_restart(tmp_path: Any, servers: list[BackgroundServer]) -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}/events"
    settings = Settings(db_path=str(tmp_path / "fo.db"), seed=True, event_endpoints=[endpoint])
    first = BackgroundServer(create_app(settings)).start()
    servers.append(first)
    with httpx.Client(base_url=first.url, headers={"Authorization": f"Bearer {token()}"}) as fo:
        assert fo.post("/data/CustomersV3", json=new_customer("US-970")).status_code == 201
        listing = wait_for(lambda: (r := fo.get("/_standin/events").json())["endpoints"][endpoint]["attempts"] and r)
        assert listing["events"][0]["delivered"] == {endpoint: False}
    first.stop()
    servers.remove(first)

    late = Receiver(port=port)
    servers.append(late.server.start())
    servers.append(BackgroundServer(create_app(settings)).start())
    [event] = wait_for(lambda: late.events)
    assert (
        event["MessageName"] == "Create"
        and attrs(event["InputParameters"][0]["value"])["mserp_customeraccount"] == "US-970"
    )


def test_seeding_raises_no_events(fo: httpx.Client, receiver: Receiver) -> None:
    assert fo.get("/_standin/events").json()["events"] == []
    time.sleep(0.1)
    assert receiver.attempts == 0


def test_event_attributes_dates_and_nulls() -> None:
    entity = EntityDef(
        "Things",
        ("dataAreaId", "ThingId"),
        (
            Field("dataAreaId"),
            Field("ThingId"),
            Field("ValidFrom", "datetime"),
            Field("ValidTo", "datetime"),
            Field("Active", "bool"),
            Field("Kind", "enum", values=("No", "Yes")),
        ),
        company_field="dataAreaId",
        event_name="mserp_thingentity",
        logical_name="ThingEntity",
    )
    row = Row(
        "11111111-2222-3333-4444-555555555555",
        12,
        "",
        "",
        "",
        "",
        {
            "dataAreaId": "usmf",
            "ThingId": "T1",
            "ValidFrom": "2019-08-05T10:13:20Z",
            "ValidTo": None,
            "Active": 1,
            "Kind": "Yes",
        },
    )
    event = build_event("Update", entity, row, row, "user-1", "org-1", "contoso", now_ms=1565000000000)
    text = event_json(event)
    assert '"OperationCreatedOn": "\\/Date(1565000000000)\\/"' in text
    values = attrs(json.loads(text)["InputParameters"][0]["value"])
    assert values == {
        "mserp_dataareaid": "usmf",
        "mserp_thingid": "T1",
        "mserp_validfrom": "/Date(1565000000000)/",
        "mserp_active": True,
        "mserp_kind": "Yes",
    }
