"""The F&O receiver's front door, without a broker: bodies too large (413, read no further than the limit),
not JSON or nested too deep (400, no RecursionError anywhere), and the shared secret (401; compared in
constant time; required at start-up unless explicitly waived). Issue 12."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dualwrite.config import Config, parse_config
from dualwrite.errors import ConfigError
from dualwrite.server import free_port
from dualwrite.tablemap import TableMap, load_maps
from producers.fo import (
    MAX_DEPTH,
    SECRET_HEADER,
    DeadEvent,
    FoProducer,
    MalformedEvent,
    RejectedBody,
    nests_deeper,
    parse_body,
    record_limit,
)

SECRET = "unit-receiver-secret-5f2c"
LIMIT = 64 * 1024


def config(**fo_producer: Any) -> Config:
    nowhere = f"http://127.0.0.1:{free_port()}"
    auth = {"token_url": f"{nowhere}/t/oauth2/v2.0/token", "client_id": "c", "client_secret": "s"}
    return parse_config(
        {
            # No broker there: a request that got as far as publishing would answer 503 (quickly, by this timeout).
            "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}", "client": {"log_level": 0}},
            "schema_registry": {"url": nowhere},
            "fo": {"url": nowhere, "auth": auth},
            "dataverse": {"url": nowhere, "auth": auth},
            "fo_producer": {"max_body_bytes": LIMIT, "max_events": 50, **fo_producer},
        }
    )


@pytest.fixture(scope="module")
def maps() -> dict[str, TableMap]:
    return load_maps()


@pytest.fixture(scope="module")
def receiver(maps: dict[str, TableMap]) -> Iterator[FoProducer]:
    logging.getLogger("dualwrite.kafka.client").setLevel(logging.CRITICAL)
    producer = FoProducer(config(shared_secret=SECRET, previous_shared_secret="the-old-one"), maps)
    producer.ready.set()  # no snapshot: nothing here reaches a broker
    try:
        yield producer
    finally:
        producer.close()


def post(
    receiver: FoProducer,
    content: bytes | AsyncIterable[bytes] = b"{}",
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    secret: bool = True,
    method: str = "POST",
    path: str = "/events",
) -> httpx.Response:
    """One request straight into the ASGI app; an exception in the app fails the test (it would be a 500)."""
    sent = {SECRET_HEADER: SECRET} if secret else {}

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=receiver.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
            headers_sent = {**sent, **(headers or {})}
            return await client.request(method, path, content=content, headers=headers_sent, params=params)

    return asyncio.run(go())


class Counted:
    """A streamed (chunked) body that counts how much of it the receiver pulled."""

    def __init__(self, chunk: bytes, chunks: int) -> None:
        self.chunk, self.chunks, self.pulled = chunk, chunks, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            self.pulled += len(self.chunk)
            yield self.chunk


# -- 1: the body limit ------------------------------------------------------------------------------------
def test_a_body_declared_larger_than_the_limit_is_413_with_a_json_message_and_none_of_it_is_read(
    receiver: FoProducer,
) -> None:
    body = Counted(b"x" * 4096, 1000)
    resp = post(receiver, body, headers={"Content-Length": str(4096 * 1000)})
    assert resp.status_code == 413, resp.text
    assert "fo_producer.max_body_bytes" in resp.json()["error"] and str(LIMIT) in resp.json()["error"]
    assert body.pulled <= 4096  # at most what the transport hands over before the app asks


def test_a_chunked_body_is_read_no_further_than_the_limit(receiver: FoProducer) -> None:
    body = Counted(b"[" + b" " * 8191, 10_000)  # 80 MB if it were all read
    resp = post(receiver, body)
    assert resp.status_code == 413, resp.text
    assert "max_body_bytes" in resp.json()["error"]
    assert body.pulled <= LIMIT + 8192


def test_a_body_just_under_the_limit_is_read(receiver: FoProducer) -> None:
    resp = post(receiver, b" " * (LIMIT - 2) + b"[]")
    assert resp.status_code == 200 and resp.json() == {"published": 0, "dead_lettered": 0}


def test_more_events_than_max_events_is_413(receiver: FoProducer) -> None:
    resp = post(receiver, json.dumps([{}] * 51).encode())
    assert resp.status_code == 413 and "fo_producer.max_events" in resp.json()["error"]


def test_the_body_limit_must_leave_room_and_the_record_limit_follows_the_kafka_client() -> None:
    with pytest.raises(ConfigError, match="fo_producer.max_body_bytes"):
        config(max_body_bytes=10)
    assert record_limit(config()) == 1_000_000 - 64 * 1024  # librdkafka's default message.max.bytes
    cfg = config()
    cfg.kafka.client["message.max.bytes"] = 5_000_000
    assert record_limit(cfg) == 5_000_000 - 64 * 1024


def test_a_dead_letter_too_large_for_a_record_is_cut_to_fit_with_headers_saying_so() -> None:
    cfg = config()
    value = b'{"MessageName": "' + b"a" * 2_000_000 + b'"}'
    record = DeadEvent(value, MalformedEvent("too odd"), "customers", 3).record(cfg)
    assert record.value is not None and len(record.value) == record_limit(cfg) and value.startswith(record.value)
    headers = dict(record.headers or [])
    assert headers["dualwrite.value.truncated"] == b"true" and headers["dualwrite.value.bytes"] == b"2000019"
    small = DeadEvent(b"{}", MalformedEvent("odd"), "", None).record(cfg)
    assert small.value == b"{}" and "dualwrite.value.truncated" not in dict(small.headers or [])


# -- 2: not JSON, the wrong type, nested too deep -----------------------------------------------------------
DEEP = {
    "arrays": b"[" * 20_000 + b"]" * 20_000,
    "objects": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "unclosed": b"[" * 20_000,
    "inside an event": b'[{"MessageName": "Create", "InputParameters": ' + b"[" * 20_000 + b"]" * 20_000 + b"}]",
    "just over": b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1),
}


@pytest.mark.parametrize("name", list(DEEP))
def test_json_nested_too_deep_is_400_saying_so(receiver: FoProducer, name: str) -> None:
    resp = post(receiver, DEEP[name])
    assert resp.status_code == 400, resp.text
    assert f"nests deeper than {MAX_DEPTH} levels" in resp.json()["error"]


NOT_JSON = {
    "empty": (b"", "not JSON"),
    "binary": (b"\xff\xfe\x00garbage", "not UTF-8"),
    "truncated": (b'[{"MessageName": "Create"', "not JSON"),
    "trailing junk": (b"[] []", "not JSON"),
    "a number of 5,000 digits": (b"[" + b"9" * 5000 + b"]", "not JSON"),
    "a number": (b"5", "a JSON object or an array"),
    "a string": (b'"Create"', "a JSON object or an array"),
    "null": (b"null", "a JSON object or an array"),
}


@pytest.mark.parametrize("name", list(NOT_JSON))
def test_a_body_that_is_not_json_or_not_an_object_or_array_is_400_with_a_clear_message(
    receiver: FoProducer, name: str
) -> None:
    body, says = NOT_JSON[name]
    resp = post(receiver, body)
    assert resp.status_code == 400, resp.text
    assert says in resp.json()["error"], resp.json()


def test_depth_counts_only_brackets_outside_strings() -> None:
    deep = MAX_DEPTH + 1
    assert not nests_deeper(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
    assert nests_deeper(b"[" * deep + b"]" * deep)
    assert not nests_deeper(json.dumps({"text": "[" * 1000, "more": ["{" * 1000, '"[[[' * 100]}).encode())
    assert not nests_deeper(json.dumps(['\\"[[[[' * 50, "\\", '"' * 50]).encode())
    assert nests_deeper(json.dumps(["a\\"]).encode()[:-1] + b"[" * deep)  # the string closed where JSON says
    assert nests_deeper(b"[" + b"[1]," * 5 + b"{" * deep)  # depth comes back and still counts at its peak
    assert not nests_deeper(b'"' + b"[" * 10_000)  # an unterminated string hides nothing from the parser either
    with pytest.raises(RejectedBody, match="not JSON"):
        parse_body(b'"' + b"[" * 10_000)


# Raw bytes that look like JSON: brackets, quotes, backslashes and text in any order, at any depth.
_pieces = st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b",", b":", b"1", b"a", b'"k":', b" ", b"\xef\xbb\xbf"])
raw_bodies = (
    st.lists(_pieces, max_size=300).map(b"".join)
    | st.binary(max_size=200)
    | st.integers(0, 3 * MAX_DEPTH).map(lambda n: b'{"a":' * n + b"[]" + b"}" * n)
    | st.integers(0, 3 * MAX_DEPTH).map(lambda n: b"[" * n + b"]" * n)
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(body=raw_bodies)
def test_any_raw_body_parses_within_the_depth_or_is_rejected_and_nothing_recurses_too_far(body: bytes) -> None:
    try:
        payload = parse_body(body)
    except RejectedBody as exc:
        assert exc.status == 400 and str(exc)
        return
    assert not nests_deeper(body)
    # What the receiver does with a parsed body next (dead letters, logs, answers) must not recurse too far.
    json.dumps(payload)
    repr(payload)


# -- 6, 7, 8: the shared secret ---------------------------------------------------------------------------------
def test_the_secret_is_accepted_in_the_header_as_a_bearer_token_or_as_code(receiver: FoProducer) -> None:
    for headers, params in [
        ({SECRET_HEADER: SECRET}, None),
        ({SECRET_HEADER.lower(): SECRET}, None),
        ({"Authorization": f"Bearer {SECRET}"}, None),
        ({"Authorization": f"bearer  {SECRET} "}, None),
        ({}, {"code": SECRET}),
        ({SECRET_HEADER: "the-old-one"}, None),  # previous_shared_secret, while rotating
    ]:
        resp = post(receiver, b"not json", headers=headers, params=params, secret=False)
        assert resp.status_code == 400, (headers, params, resp.text)  # past the door, refused for its body


WRONG = [
    ({}, None),
    ({SECRET_HEADER: ""}, None),
    ({SECRET_HEADER: SECRET[:-1]}, None),
    ({SECRET_HEADER: SECRET + " "}, None),
    ({SECRET_HEADER: SECRET.upper()}, None),
    ({"Authorization": f"Basic {SECRET}"}, None),
    ({"Authorization": SECRET}, None),
    ({}, {"code": "nope"}),
    ({}, {"secret": SECRET}),
    ({"X-Dualwrite-Secrets": SECRET}, None),
]


@pytest.mark.parametrize(("headers", "params"), WRONG)
def test_a_wrong_or_missing_secret_is_401_in_json_without_saying_which_part(
    receiver: FoProducer, headers: dict[str, str], params: dict[str, str] | None
) -> None:
    resp = post(receiver, b"[]", headers=headers, params=params, secret=False)
    assert resp.status_code == 401, resp.text
    said = f"unauthorized: send the shared secret in the {SECRET_HEADER} header (or as ?code=)"
    assert resp.json() == {"error": said}
    assert resp.headers["www-authenticate"].startswith("Bearer")


def test_the_secret_is_compared_in_constant_time_on_bytes(receiver: FoProducer, monkeypatch: Any) -> None:
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert post(receiver, b"[]", headers={SECRET_HEADER: "guess"}, secret=False).status_code == 401
    assert calls and all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in calls)
    assert {b for _, b in calls} == {SECRET.encode(), b"the-old-one"}  # every accepted secret, every time


def test_without_a_secret_the_receiver_refuses_to_start_naming_the_setting(maps: dict[str, TableMap]) -> None:
    for missing in ({}, {"shared_secret": ""}):
        with pytest.raises(ConfigError, match=r"fo_producer\.shared_secret") as caught:
            FoProducer(config(**missing), maps)
        assert "allow_unauthenticated" in str(caught.value)


def test_allow_unauthenticated_opens_the_receiver_and_a_set_secret_still_wins(maps: dict[str, TableMap]) -> None:
    open_receiver = FoProducer(config(allow_unauthenticated=True), maps)
    guarded = FoProducer(config(allow_unauthenticated=True, shared_secret=SECRET), maps)
    try:
        open_receiver.ready.set()
        guarded.ready.set()
        assert post(open_receiver, b"[]", secret=False).status_code == 200
        assert post(guarded, b"[]", secret=False).status_code == 401
    finally:
        open_receiver.close()
        guarded.close()


def test_tls_key_or_client_ca_without_a_certificate_is_a_config_error() -> None:
    for field in ("tls_keyfile", "tls_client_ca"):
        with pytest.raises(ConfigError, match=rf"fo_producer\.{field}: .*needs tls_certfile"):
            config(**{field: "/etc/x.pem"})


# -- the rest of the surface ------------------------------------------------------------------------------------
def test_other_methods_and_paths_are_json_4xx(receiver: FoProducer) -> None:
    resp = post(receiver, method="GET")
    assert resp.status_code == 405 and resp.json()["error"]
    resp = post(receiver, path="/events/../admin")
    assert resp.status_code == 404 and resp.json()["error"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(
    body=raw_bodies,
    where=st.sampled_from(["header", "bearer", "code", "none", "wrong"]),
    length=st.sampled_from(["exact", "chunked", "huge"]),
    extra=st.dictionaries(
        st.sampled_from(["Content-Type", "Content-Encoding", "Expect", "X-Forwarded-For", "Accept"]),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
        max_size=3,
    ),
)
def test_any_raw_body_and_headers_are_answered_2xx_or_4xx_before_kafka(
    receiver: FoProducer, body: bytes, where: str, length: str, extra: dict[str, str]
) -> None:
    """Bodies that carry no event at all (nothing to publish): never a 5xx, never an exception."""
    headers = dict(extra)
    params = None
    if where == "header":
        headers[SECRET_HEADER] = SECRET
    elif where == "bearer":
        headers["Authorization"] = f"Bearer {SECRET}"
    elif where == "code":
        params = {"code": SECRET}
    elif where == "wrong":
        headers[SECRET_HEADER] = "wrong"
    content: bytes | AsyncIterable[bytes] = body
    if length == "chunked":
        content = Counted(body, 1)
    elif length == "huge":
        headers["Content-Length"] = str(LIMIT + 1)
        content = Counted(body, 1)
    try:
        payload = parse_body(body)
    except RejectedBody:
        payload = None
    if isinstance(payload, list | dict) and (payload if isinstance(payload, list) else [payload]):
        return  # it holds events: publishing needs a broker (the service tests post those)
    resp = post(receiver, content, headers=headers, params=params, secret=False)
    if where in ("none", "wrong"):
        assert resp.status_code == 401
    elif length == "huge":
        assert resp.status_code == 413
    else:
        assert resp.status_code in (200, 400), resp.text
    assert resp.json()
