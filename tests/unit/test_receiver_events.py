"""The F&O receiver's translation of posted bodies, any shape at all: each event of an array is
published, not ours, or dead-lettered on its own, and what is published can be written with its
schema (so publishing never fails on a value). No broker: nothing is sent."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schemas
from dualwrite.config import Config, parse_config
from dualwrite.publish import Publisher
from dualwrite.server import free_port
from dualwrite.tablemap import TableMap, load_maps
from producers.fo import (
    MAX_DEPTH,
    EventTranslator,
    RejectedBody,
    Triage,
    events_topic,
    parse_body,
    record_limit,
    triage,
)

INTEGRATION_USER = "5d1f1f5e-0000-4000-8000-00000000d0a1"
CUSTOMER_EVENT = "mserp_custcustomerv3entity"
GROUP_EVENT = "mserp_custcustomergroupentity"


@pytest.fixture(scope="module")
def cfg() -> Config:
    nowhere = f"http://127.0.0.1:{free_port()}"
    auth = {"token_url": f"{nowhere}/t/oauth2/v2.0/token", "client_id": "c", "client_secret": "s"}
    return parse_config(
        {
            "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}", "client": {"log_level": 0}},
            "schema_registry": {"url": nowhere},
            "fo": {"url": nowhere, "auth": auth, "integration_user_id": INTEGRATION_USER},
            "dataverse": {"url": nowhere, "auth": auth},
        }
    )


@pytest.fixture(scope="module")
def maps() -> dict[str, TableMap]:
    return load_maps()


@pytest.fixture(scope="module")
def receiver(cfg: Config, maps: dict[str, TableMap]) -> Iterator[tuple[EventTranslator, Publisher]]:
    logging.getLogger("dualwrite.kafka.client").setLevel(logging.CRITICAL)
    publisher = Publisher(cfg, "fo", maps)  # builds serializers and a client; connects to nothing until used
    try:
        yield EventTranslator(maps, cfg.companies, cfg.fo.integration_user_id), publisher
    finally:
        publisher.close()


def event(number: str = "US-1", **attributes: Any) -> dict[str, Any]:
    values = {"dataareaid": "usmf", "customeraccount": number, "partytype": "Organization", **attributes}
    target = {"Attributes": [{"key": f"mserp_{k}", "value": v} for k, v in values.items()]}
    return {
        "MessageName": "Create",
        "PrimaryEntityName": CUSTOMER_EVENT,
        "CorrelationId": str(uuid.uuid4()),
        "InputParameters": [{"key": "Target", "value": target}],
    }


def sort(receiver: tuple[EventTranslator, Publisher], body: Any) -> Triage:
    return triage(*receiver, body if isinstance(body, bytes) else json.dumps(body).encode())


def test_input_parameters_that_are_not_a_list_dead_letter_that_event_only(receiver: Any) -> None:
    t = sort(receiver, [event("US-1"), {**event("US-2"), "InputParameters": 5}, event("US-3")])
    assert [e.key for e in t.events] == ["usmf|US-1", "usmf|US-3"]
    [dead] = t.dead
    assert dead.index == 1 and "InputParameters is not a list" in str(dead.error)
    assert json.loads(dead.value)["InputParameters"] == 5


def test_a_value_the_schema_cannot_take_is_a_coercion_error_naming_the_field(receiver: Any, cfg: Config) -> None:
    t = sort(receiver, [event("US-1", creditlimit="a lot"), event("US-2", organizationnumberofemployees=[3])])
    assert not t.events
    assert [type(d.error).__name__ for d in t.dead] == ["CoercionError", "CoercionError"]
    assert "CustomersV3.CreditLimit" in str(t.dead[0].error) and "'a lot'" in str(t.dead[0].error)
    assert "OrganizationNumberOfEmployees" in str(t.dead[1].error)
    assert {d.map_name for d in t.dead} == {"customers"}  # the row's PartyType says which of the two maps
    headers = dict(t.dead[0].record(cfg).headers or [])
    assert headers["dualwrite.error.class"] == b"CoercionError" and headers["dualwrite.event.index"] == b"0"
    assert t.dead[0].record(cfg).topic == f"{events_topic(cfg)}.dlq"


def test_a_body_that_is_not_json_is_one_dead_letter_of_the_whole_body(receiver: Any) -> None:
    t = sort(receiver, b"\xff not json")
    [dead] = t.dead
    assert dead.value == b"\xff not json" and dead.index is None and "not JSON" in str(dead.error)


def test_an_event_too_large_for_a_kafka_record_is_dead_lettered_on_its_own(receiver: Any, cfg: Config) -> None:
    translator, publisher = receiver
    body = json.dumps([event("US-1", organizationname="o" * 2_000_000), event("US-2")]).encode()
    t = triage(translator, publisher, body, record_limit(cfg))
    assert [e.key for e in t.events] == ["usmf|US-2"]
    [dead] = t.dead
    assert type(dead.error).__name__ == "EventTooLarge" and dead.index == 0 and "CustomersV3" in str(dead.error)
    record = dead.record(cfg)
    assert len(record.value or b"") == record_limit(cfg)
    assert dict(record.headers or [])["dualwrite.value.truncated"] == b"true"


# -- any shape at all ---------------------------------------------------------------------------------
_json_leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
_TYPED = ["creditlimit", "organizationnumberofemployees", "addresslatitude", "onholdstatus", "description"]
_PARTS = [
    "MessageName", "PrimaryEntityName", "InitiatingUserId", "OperationCreatedOn", "InputParameters",
    "PreEntityImages", "CorrelationId", "Target", "Attributes", "KeyAttributes", "RowVersion", "a value", "a key",
]  # fmt: skip


@st.composite
def data_events(draw: st.DrawFn) -> dict[str, Any]:
    """A data event of a mapped entity, or not, with up to three parts replaced by any JSON or removed."""
    values: dict[str, Any] = {
        "dataareaid": draw(st.sampled_from(["usmf", "demf", "USMF", "zzzz"])),
        "customeraccount": draw(st.sampled_from(["H-1", "H-2", "H 3"])),
        "customergroupid": draw(st.sampled_from(["10", "30"])),
        "organizationname": draw(st.text(max_size=20)),
        "partytype": draw(st.sampled_from(["Organization", "Person"])),
        **draw(st.dictionaries(st.sampled_from(_TYPED), _json | st.integers(0, 10**6), max_size=2)),
    }
    attrs = [{"key": f"mserp_{k}", "value": v} for k, v in values.items()]
    keys = [a for a in attrs if a["key"] in ("mserp_dataareaid", "mserp_customeraccount")]
    message = draw(st.sampled_from(["Create", "Update", "Delete"]))
    target: dict[str, Any] = {"Attributes": attrs, "KeyAttributes": keys, "RowVersion": "7"}
    payload: dict[str, Any] = {
        "MessageName": message,
        "PrimaryEntityName": draw(st.sampled_from([CUSTOMER_EVENT, CUSTOMER_EVENT, GROUP_EVENT, "mserp_other"])),
        "InitiatingUserId": draw(st.sampled_from([str(uuid.uuid4()), INTEGRATION_USER])),
        "OperationCreatedOn": draw(st.sampled_from(["/Date(1700000000000)/", "/Date(99999999999999999)/", ""])),
        "CorrelationId": str(uuid.uuid4()),
        "InputParameters": [{"key": "Target", "value": target}],
        "PreEntityImages": [{"key": "PreImage", "value": {"Attributes": attrs}}] if message != "Create" else [],
    }
    for part in draw(st.lists(st.sampled_from(_PARTS), max_size=3)):
        junk, gone = draw(_json), draw(st.booleans())
        if part in payload:
            payload[part] = junk
            if gone:
                del payload[part]
        elif part in target:
            target[part] = junk
        elif part == "a value":
            draw(st.sampled_from(attrs))["value"] = junk
        else:
            draw(st.sampled_from(attrs))["key"] = junk
    return payload


@st.composite
def hostile(draw: st.DrawFn) -> bytes:
    """Data events buried deep, or one carrying a value too large for a Kafka record (issue 12)."""
    event = draw(data_events())
    if draw(st.booleans()):
        n = draw(st.integers(1, 2 * MAX_DEPTH))
        return b"[" * n + json.dumps(event).encode() + b"]" * n
    event["InputParameters"] = [{"key": "Target", "value": {"Attributes": [
        {"key": "mserp_dataareaid", "value": "usmf"}, {"key": "mserp_customeraccount", "value": "BIG"},
        {"key": "mserp_organizationname", "value": "o" * draw(st.sampled_from([10, 2_000_000]))},
    ]}}]  # fmt: skip
    return json.dumps(draw(st.sampled_from([[event], event]))).encode()


bodies = (
    st.lists(data_events() | _json, max_size=5) | data_events() | _json | st.binary(max_size=20) | hostile()
)


def _schema(entity_set: str) -> Any:
    return fastavro.parse_schema(schemas.load("fo", entity_set))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(body=bodies)
def test_every_event_of_any_body_is_published_not_ours_or_dead_lettered(
    receiver: Any, cfg: Config, body: Any
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    limit = record_limit(cfg)
    translator, publisher = receiver
    t = triage(translator, publisher, raw, limit)
    for d in t.dead:  # every dead letter fits in one Kafka record, however large the event was
        assert len(d.record(cfg).value or b"") <= limit
    try:
        parsed = parse_body(raw)
    except RejectedBody:  # not JSON, or nested deeper than the receiver reads
        assert len(t.dead) == 1 and not t.events and not t.not_ours
        return
    items = parsed if isinstance(parsed, list) else [parsed]
    assert len(t.events) + len(t.not_ours) + len(t.dead) == len(items)
    for e in t.events:  # what is published can be written with its schema: publishing cannot fail on a value
        fastavro.schemaless_writer(io.BytesIO(), _schema(e.entity), e.to_avro())
    for d in t.dead:
        assert d.reason and d.index == (d.index if isinstance(parsed, list) else None)
        if isinstance(parsed, list):
            assert json.loads(d.value) == items[d.index] or d.value == json.dumps(items[d.index]).encode()
