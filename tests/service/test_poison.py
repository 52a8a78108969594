"""Poison never stalls a source or kills a worker: each bad event or row is dead-lettered on its own,
with headers saying why, and everything around it still flows (issue 9)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dualwrite import dlq, kafka, registry
from dualwrite.config import DataverseConfig, FoConfig, OAuth
from dualwrite.dataverse import DataverseClient
from dualwrite.errors import PermanentError, RetryableError
from dualwrite.fo import FoClient
from dualwrite.server import BackgroundServer
from producers.fo import EventTranslator
from wiring.stack import LocalStack, dv_company_id, dv_one, eventually, integration_user_id

pytestmark = pytest.mark.service

CUSTOMER_EVENT = "mserp_custcustomerv3entity"
GROUP_EVENT = "mserp_custcustomergroupentity"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    s = LocalStack.start(tmp_path_factory.mktemp("poison"))
    try:
        yield s
    finally:
        s.stop()


# -- issue 13: the checkpoint-age gauge while Dataverse throttles ---------------------------------------
def checkpoint_ages(ops_url: str) -> dict[str, float]:
    text = httpx.get(f"{ops_url}/metrics", timeout=5).text
    found = re.findall(r'^dualwrite_checkpoint_age_seconds\{entity="([^"]+)"\} (\S+)$', text, re.M)
    return {entity: float(value) for entity, value in found}


def test_checkpoint_age_keeps_growing_while_dataverse_throttles(tmp_path: Path) -> None:
    # First in this file, before the module's stack starts: the gauges of one process are shared.
    # A budget the start-up uses up: from then on every request of the app user is refused for minutes.
    s = LocalStack.start(tmp_path, dataverse_settings={"max_requests": 150, "window_s": 600})
    try:
        ops = s.components["dataverse-producer"].ops_url
        eventually(lambda: checkpoint_ages(ops), timeout_s=60, what="a checkpoint age")
        eventually(
            lambda: s.stats("dataverse").get("throttled", {}).get("dualwrite", 0) > 0,
            timeout_s=90,
            what="Dataverse throttling the app user",
        )
        time.sleep(1.0)
        before = checkpoint_ages(ops)
        time.sleep(2.0)
        after = checkpoint_ages(ops)
        grown = {e: after[e] - before[e] for e in before}
        assert all(g >= 1.5 for g in grown.values()), grown
    finally:
        s.stop()


# -- data events as F&O posts them ----------------------------------------------------------------------
def data_event(number: str, marker: str | None = None, message: str = "Create", **attributes: Any) -> dict[str, Any]:
    """A CustomersV3 data event (RemoteExecutionContext JSON) for a usmf customer."""
    values = {
        "dataareaid": "usmf",
        "customeraccount": number,
        "organizationname": f"Org {number}",
        "customergroupid": "30",
        "salescurrencycode": "USD",
        "partytype": "Organization",
        **attributes,
    }
    target = {"Attributes": [{"key": f"mserp_{k}", "value": v} for k, v in values.items()], "RowVersion": "1"}
    return {
        "MessageName": message,
        "PrimaryEntityName": CUSTOMER_EVENT,
        "CorrelationId": marker or f"test-{uuid.uuid4()}",
        "InitiatingUserId": str(uuid.uuid4()),
        "OperationCreatedOn": f"/Date({int(time.time() * 1000)})/",
        "InputParameters": [{"key": "Target", "value": target}],
    }


def post(stack: LocalStack, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(stack.event_url, content=content, headers={"content-type": "application/json"}, timeout=60)


def events_dlq(stack: LocalStack) -> str:
    return kafka.dlq_topic(f"{stack.cfg.kafka.topic_prefix}.fo.events")


def dead_events(stack: LocalStack) -> list[dlq.DeadLetter]:
    return list(dlq.read_all(stack.cfg.kafka, events_dlq(stack), idle_s=0.5))


def with_marker(letters: list[dlq.DeadLetter], marker: str) -> list[dlq.DeadLetter]:
    return [d for d in letters if marker.encode() in (d.value or b"")]


def account(dv: httpx.Client, number: str) -> dict[str, Any] | None:
    cid = dv_company_id(dv, "usmf")
    return dv_one(dv, "accounts", f"accountnumber eq '{number}' and _msdyn_company_value eq {cid}") if cid else None


# -- point 3: one bad event in an array -----------------------------------------------------------------
def test_one_bad_event_in_an_array_is_dead_lettered_alone_and_the_good_ones_arrive(
    stack: LocalStack, dv: httpx.Client
) -> None:
    marker = f"arr-{uuid.uuid4()}"
    body = [
        data_event("T-ARR-1"),
        {**data_event("T-ARR-BAD-1", f"{marker}-1"), "InputParameters": 5},
        data_event("T-ARR-2"),
        data_event("T-ARR-BAD-3", f"{marker}-3", creditlimit="a lot"),  # CreditLimit is a decimal
    ]
    resp = post(stack, body)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"published": 2, "dead_lettered": 2}

    eventually(lambda: account(dv, "T-ARR-1") and account(dv, "T-ARR-2"), what="both good events in Dataverse")
    letters = eventually(
        lambda: (found := with_marker(dead_events(stack), marker)) and len(found) == 2 and found,
        what="both bad events in the DLQ",
    )
    by_index = {d.headers["dualwrite.event.index"]: d for d in letters}
    assert set(by_index) == {"1", "3"}
    for index, d in by_index.items():
        assert json.loads(d.value or b"") == body[int(index)]  # its own JSON, not the whole body
        assert "customers" in d.headers["dualwrite.map"].split(",")  # both maps of CustomersV3 until the row says
        assert d.headers["dualwrite.direction"] == "fo->dataverse"
        assert d.headers["dualwrite.error.kind"] == "permanent"
    assert by_index["1"].headers["dualwrite.error.class"] == "MalformedEvent"
    assert "InputParameters" in by_index["1"].headers["dualwrite.error.message"]
    assert by_index["3"].headers["dualwrite.error.class"] == "CoercionError"
    assert by_index["3"].headers["dualwrite.map"] == "customers"
    assert "CreditLimit" in by_index["3"].headers["dualwrite.error.message"]
    assert account(dv, "T-ARR-BAD-1") is None and account(dv, "T-ARR-BAD-3") is None


def test_an_array_with_nothing_publishable_is_answered_202(stack: LocalStack) -> None:
    marker = f"all-bad-{uuid.uuid4()}"
    resp = post(stack, [{**data_event("T-ALLBAD", marker), "MessageName": "Upsert"}])
    assert resp.status_code == 202, resp.text
    assert resp.json()["published"] == 0 and resp.json()["dead_lettered"] == 1
    assert "Upsert" in resp.json()["reason"]
    eventually(lambda: with_marker(dead_events(stack), marker), what="the event in the DLQ")


# -- point 9: no input answers 5xx, no event vanishes ---------------------------------------------------
# Any JSON at all, and data events that are valid until a few of their parts are swapped for it.
_json_leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
_TYPED = ["creditlimit", "organizationnumberofemployees", "addresslatitude", "onholdstatus", "description"]
_PARTS = [
    "MessageName", "PrimaryEntityName", "InitiatingUserId", "OperationCreatedOn", "InputParameters",
    "PreEntityImages", "Target", "Attributes", "KeyAttributes", "RowVersion", "a value", "a key",
]  # fmt: skip


@st.composite
def _event(draw: st.DrawFn) -> dict[str, Any]:
    """A data event of a mapped entity, or not, with up to two parts replaced by any JSON or removed."""
    entity = draw(st.sampled_from([CUSTOMER_EVENT, CUSTOMER_EVENT, GROUP_EVENT, "mserp_other"]))
    # Customers refer to seeded groups; group events name groups of their own, so that their deletes
    # do not take away the groups the module's other tests refer to.
    groups = ["H-G1", "H-G2"] if entity == GROUP_EVENT else ["10", "30"]
    values: dict[str, Any] = {
        "dataareaid": draw(st.sampled_from(["usmf", "demf", "USMF", "zzzz"])),
        "customeraccount": draw(st.sampled_from(["H-1", "H-2", "H 3"])),
        "customergroupid": draw(st.sampled_from(groups)),
        "organizationname": draw(st.text(max_size=20)),
        "partytype": draw(st.sampled_from(["Organization", "Person"])),
        **draw(st.dictionaries(st.sampled_from(_TYPED), _json | st.integers(0, 10**6), max_size=2)),
    }
    attrs = [{"key": f"mserp_{k}", "value": v} for k, v in values.items()]
    keys = [a for a in attrs if a["key"] in ("mserp_dataareaid", "mserp_customeraccount")]
    message = draw(st.sampled_from(["Create", "Update", "Delete"]))
    target: dict[str, Any] = {"Attributes": attrs, "KeyAttributes": keys, "RowVersion": "7"}
    event: dict[str, Any] = {
        "MessageName": message,
        "PrimaryEntityName": entity,
        "InitiatingUserId": draw(st.sampled_from([str(uuid.uuid4()), str(uuid.uuid4()), integration_user_id()])),
        "OperationCreatedOn": draw(st.sampled_from(["/Date(1700000000000)/", "/Date(99999999999999999)/", ""])),
        "InputParameters": [{"key": "Target", "value": target}],
        "PreEntityImages": [{"key": "PreImage", "value": {"Attributes": attrs}}] if message != "Create" else [],
    }
    for part in draw(st.lists(st.sampled_from(_PARTS), max_size=2)):
        junk, gone = draw(_json), draw(st.booleans())
        if part in event:
            event[part] = junk
            if gone:
                del event[part]
        elif part in target:
            target[part] = junk
        elif part == "a value":
            draw(st.sampled_from(attrs))["value"] = junk
        else:
            draw(st.sampled_from(attrs))["key"] = junk
    return event


@pytest.mark.timeout(600)
def test_no_posted_body_gets_a_5xx_and_every_event_is_published_dead_lettered_or_not_ours(
    stack: LocalStack,
) -> None:
    posted: list[tuple[str, Any]] = []  # (marker, payload)
    translator = EventTranslator(stack.maps, stack.cfg.companies, stack.cfg.fo.integration_user_id)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.lists(_event() | _json, min_size=0, max_size=4) | _event() | _json | st.binary(max_size=20))
    def post_one(body: Any) -> None:
        items = body if isinstance(body, list) else [body]
        for item in items:
            if isinstance(item, dict):
                item["CorrelationId"] = marker = f"hyp-{uuid.uuid4()}"
                posted.append((marker, item))
        resp = post(stack, body)
        assert resp.status_code in (200, 202) or 400 <= resp.status_code < 500, (resp.status_code, resp.text)
        counts = resp.json()
        if isinstance(body, list):
            non_objects = sum(not isinstance(i, dict) for i in items)
            assert counts["dead_lettered"] >= non_objects
            assert counts["published"] + counts["dead_lettered"] <= len(items)

    post_one()
    published = published_correlation_ids(stack)
    assert sum(marker in published for marker, _ in posted) >= 5, "too few valid events to say anything"
    dead = b"\n".join(d.value or b"" for d in dead_events(stack))
    missing = []
    for marker, payload in posted:
        if marker in published or marker.encode() in dead:
            continue
        try:
            outcome, _ = translator.translate(payload)
        except PermanentError:
            outcome = "malformed"
        if outcome not in ("filtered", "echo_dropped"):
            missing.append(payload)
    assert not missing, f"{len(missing)} event(s) neither published nor dead-lettered, e.g. {missing[0]}"


def published_correlation_ids(stack: LocalStack) -> set[str]:
    """Correlation ids of the change events on the F&O topics of customers, contacts and groups."""
    decode = registry.EventDeserializer(registry.client(stack.cfg.schema_registry))
    prefix = stack.cfg.kafka.topic_prefix
    ids = set()
    for name in ("customers", "contacts", "customer-groups"):
        topic = kafka.map_topics(prefix, stack.maps[name])["fo"]
        for msg in kafka.read_to_end(stack.cfg.kafka, topic, idle_s=0.5):
            ids.add(str(decode(topic, msg.value())["origin"]["correlation_id"]))
    return ids


# -- point 3: replaying the F&O events DLQ --------------------------------------------------------------
def _cli(stack: LocalStack, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(stack.cfg.model_dump(mode="json")))
    return subprocess.run(
        [sys.executable, "-m", "wiring.cli", *args, "--config", str(cfg_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_replaying_the_events_dlq_translates_each_payload_again_and_keeps_the_still_malformed(
    stack: LocalStack, dv: httpx.Client, tmp_path: Path
) -> None:
    # What an earlier map (or release) refused: one payload that translates now, one that never will.
    fixed = data_event("T-REPLAY-EV-1", f"fixed-{uuid.uuid4()}")
    broken = {**data_event("T-REPLAY-EV-2", f"broken-{uuid.uuid4()}"), "InputParameters": []}
    p = kafka.producer(stack.cfg.kafka, linger_ms=0)
    topic = events_dlq(stack)
    headers = [("dualwrite.error.class", b"MalformedEvent"), ("dualwrite.map", b"customers")]
    for payload in (fixed, broken):
        p.produce(topic, value=json.dumps(payload).encode(), headers=headers)
    assert p.flush(10) == 0
    values = {json.dumps(fixed).encode(), json.dumps(broken).encode()}
    eventually(lambda: len([d for d in dead_events(stack) if d.value in values]) == 2, what="both in the DLQ")
    # All of it: the other tests' dead events are still malformed (tansu's offsets are not unique per record
    # in a batch, so --offset cannot single these two out).
    out = _cli(stack, tmp_path, "dlq", "replay", topic)
    assert out.returncode == 0, out.stderr
    # (Other tests' dead events may translate now too, e.g. ones for maps that filter them out.)
    assert re.search(r"replayed [1-9]\d* event\(s\) from [1-9]\d* record\(s\)", out.stdout), out.stdout
    assert re.search(r"\d+ record\(s\) still malformed, left in the DLQ", out.stdout), out.stdout
    assert "has no Target" in out.stdout
    eventually(lambda: account(dv, "T-REPLAY-EV-1"), what="the replayed event's customer in Dataverse")
    assert account(dv, "T-REPLAY-EV-2") is None


# -- point 9: a target answering 200 with something that is not JSON ------------------------------------
@pytest.fixture()
def login_page() -> Iterator[str]:
    """A proxy in front of F&O and Dataverse that answers every request 200 with an HTML login page."""

    async def token(request: Request) -> Response:
        return JSONResponse({"token_type": "Bearer", "expires_in": 3599, "access_token": "t"})

    async def page(request: Request) -> Response:
        return Response("<html><body>Sign in to continue</body></html>", 200, media_type="text/html")

    app = Starlette(
        routes=[
            Route("/tenant/oauth2/v2.0/token", token, methods=["POST"]),
            Route("/{path:path}", page, methods=["GET", "POST"]),
        ]
    )
    srv = BackgroundServer(app).start()
    try:
        yield srv.url
    finally:
        srv.stop()


def test_a_200_that_is_not_json_is_a_retryable_error_naming_service_status_and_body(login_page: str) -> None:
    auth = OAuth(token_url=f"{login_page}/tenant/oauth2/v2.0/token", client_id="c", client_secret="s")
    dv = DataverseClient(DataverseConfig(url=login_page, auth=auth))
    fo = FoClient(FoConfig(url=login_page, auth=auth))
    try:
        for call in (
            dv.whoami,
            lambda: list(dv.query("accounts")),
            lambda: list(fo.query("CustomersV3")),
            lambda: fo.count("CustomersV3"),
        ):
            with pytest.raises(RetryableError) as caught:
                call()
            message = str(caught.value)
            assert "200" in message and "<html><body>Sign in" in message, message
            assert "Dataverse" in message or "F&O" in message, message
    finally:
        dv.close()
        fo.close()


# -- point 9: a Dataverse row the schema cannot take -----------------------------------------------------
def test_dataverse_row_the_schema_cannot_take_is_dead_lettered_and_the_rest_of_the_poll_arrives(
    stack: LocalStack, fo: httpx.Client, dv: httpx.Client
) -> None:
    store = stack.servers["dataverse"].server.server.config.app.state.store
    accounts = store.entity("accounts")
    eventually(lambda: account(dv, "US-024") and account(dv, "US-025"), what="seeded customers in Dataverse")
    stack.settle()
    bad = store.get(accounts, {"accountnumber": "US-024"})
    good = store.get(accounts, {"accountnumber": "US-025"})
    # SQLite keeps what it is given: a text in the integer column, as a broken plug-in might leave it.
    store.update(accounts, bad, {"numberofemployees": "twelve"}, "someone")
    store.update(accounts, good, {"name": "Renamed beside the poison"}, "someone")

    def renamed() -> bool:
        row = fo.get("CustomersV3(dataAreaId='usmf',CustomerAccount='US-025')").json()
        return bool(row.get("OrganizationName") == "Renamed beside the poison")

    eventually(renamed, timeout_s=30, what="the good row of the same poll in F&O")
    topic = kafka.topic(stack.cfg.kafka.topic_prefix, "dataverse", "accounts")

    def poisoned() -> list[dlq.DeadLetter]:
        return [d for d in dlq.read_all(stack.cfg.kafka, kafka.dlq_topic(topic), idle_s=0.5) if d.key == b"usmf|US-024"]

    letter = eventually(poisoned, what="the poison row in the DLQ")[0]
    h = letter.headers
    assert h["dualwrite.error.class"] == "CoercionError" and "numberofemployees" in h["dualwrite.error.message"]
    assert h["dualwrite.map"] == "customers" and h["dualwrite.entity"] == "accounts"
    assert h["dualwrite.direction"] == "dataverse->fo"
    assert json.loads(letter.value or b"")["numberofemployees"] == "twelve"
    component = stack.components["dataverse-producer"]
    assert component.alive()
    assert httpx.get(f"{component.ops_url}/healthz", timeout=5).status_code == 200
    # ... and it keeps polling: a later change still arrives.
    store.update(accounts, store.get(accounts, {"accountnumber": "US-025"}), {"name": "Later"}, "someone")
    eventually(
        lambda: (
            fo.get("CustomersV3(dataAreaId='usmf',CustomerAccount='US-025')").json().get("OrganizationName") == "Later"
        ),
        what="a later change in F&O",
    )
