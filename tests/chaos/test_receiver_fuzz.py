"""Fuzzing the F&O receiver of a running stack for about 30 s (issue 12): random bytes, random JSON and
data events mangled the way a fuzzer mutates its corpus, with random headers, from several clients at
once, some straight onto the socket. Nothing is answered 5xx (503 only while the broker did not
acknowledge), the receiver stays healthy, and every event of an accepted body is on its topic or in the
DLQ (or is one the translator says is not ours). Set DUALWRITE_FUZZ_SEED to replay a run."""

from __future__ import annotations

import json
import os
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from dualwrite import dlq, kafka, registry
from dualwrite.errors import DualWriteError, PermanentError
from producers.fo import EventTranslator, RejectedBody, parse_body
from wiring.stack import EVENT_SECRET, LocalStack, eventually

pytestmark = pytest.mark.chaos

FUZZ_SECONDS = 30.0
CLIENTS = 4
CUSTOMER_EVENT = "mserp_custcustomerv3entity"
MARKER = re.compile(rb"fuzz-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    s = LocalStack.start(tmp_path)
    try:
        yield s
    finally:
        s.stop()


def data_event(rng: random.Random, marker: str) -> dict[str, Any]:
    """A valid CustomersV3 data event of usmf, its CorrelationId the marker (attribute 2: the name)."""
    number = f"FZ-{rng.randrange(10_000):04d}"
    values = {
        "dataareaid": "usmf",
        "customeraccount": number,
        "organizationname": f"Fuzz {number}",
        "customergroupid": rng.choice(["10", "30"]),
        "partytype": rng.choice(["Organization", "Person"]),
        "creditlimit": rng.choice([0, 1500.5, 99]),
    }
    target = {"Attributes": [{"key": f"mserp_{k}", "value": v} for k, v in values.items()], "RowVersion": "1"}
    return {
        "MessageName": rng.choice(["Create", "Update"]),
        "PrimaryEntityName": CUSTOMER_EVENT,
        "CorrelationId": marker,
        "InitiatingUserId": str(uuid.uuid4()),
        "OperationCreatedOn": f"/Date({int(time.time() * 1000)})/",
        "InputParameters": [{"key": "Target", "value": target}],
    }


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value, now and then very deep, very long or of an odd number."""
    roll = rng.random()
    if depth > 3 or roll < 0.3:
        return rng.choice([None, True, 0, -1, 2**63, 1e308, "", "x" * rng.randrange(40), "\u0000\ud7ff\U0001f600"])
    if roll < 0.35:
        n = rng.randrange(50, 300)
        return json.loads("[" * n + "]" * n)
    if roll < 0.37:
        return "s" * rng.randrange(100_000, 2_000_000)
    if roll < 0.65:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["MessageName", "InputParameters", "a", ""]): random_json(rng, depth + 1) for _ in range(3)}


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to four mutations of a fuzzer's kind: flip, insert, delete, repeat, splice in brackets, cut."""
    out = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        at = rng.randrange(len(out) + 1)
        kind = rng.randrange(7)
        if kind == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
        elif kind == 2:
            del out[at : at + rng.randrange(1, 16)]
        elif kind == 3:
            out[at:at] = out[at : at + rng.randrange(1, 64)] * rng.randrange(2, 20)
        elif kind == 4:
            out[at:at] = rng.choice([b"[", b"{", b'"', b"\\", b"]", b"}", b","]) * rng.randrange(1, 200)
        elif kind == 5:
            out[at:at] = rng.choice([b"null", b"1e999", b'"\\ud800"', b"NaN", b"-0", b"\xef\xbb\xbf"])
        else:
            del out[at:]
    return bytes(out)


@dataclass
class Tally:
    """What the clients sent and got back."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: dict[int, int] = field(default_factory=dict)
    accepted: list[bytes] = field(default_factory=list)  # bodies answered 2xx
    bad: list[str] = field(default_factory=list)

    def record(self, status: int, body: bytes, text: str) -> None:
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if 200 <= status < 300:
                self.accepted.append(body)
            elif not 400 <= status < 500:  # the broker is healthy throughout: a 503 would be a refusal of ours
                self.bad.append(f"{status}: {text[:200]} <- {body[:200]!r}")


def one_body(rng: random.Random) -> bytes:
    markers = [f"fuzz-{uuid.uuid4()}" for _ in range(rng.randrange(1, 4))]
    events: list[Any] = [data_event(rng, m) for m in markers]
    if rng.random() < 0.02:  # a mapped value too large for a Kafka record
        events[0]["InputParameters"][0]["value"]["Attributes"][2]["value"] = "o" * rng.randrange(1_000_000, 3_000_000)
    roll = rng.random()
    if roll < 0.02:  # one malformed event, larger than a Kafka record: its dead letter must be cut to fit
        return json.dumps({**events[0], "MessageName": "Upsert", "Padding": "p" * 2_000_000}).encode()
    if roll < 0.15:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
    if roll < 0.3:
        return json.dumps(random_json(rng)).encode()
    if roll < 0.45:
        return json.dumps(events + [random_json(rng)]).encode()
    body = json.dumps(events if rng.random() < 0.8 else events[0]).encode()
    return body if roll < 0.6 else mutate(rng, body)


def headers_for(rng: random.Random) -> tuple[dict[str, str], dict[str, str]]:
    """(headers, query): mostly the right secret, somewhere it is accepted; sometimes none or a wrong one."""
    roll = rng.random()
    headers = {"Content-Type": rng.choice(["application/json", "text/plain", "application/x-www-form-urlencoded"])}
    if rng.random() < 0.2:
        junk = "".join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(200)))
        headers[rng.choice(["X-Junk", "Accept", "Content-Encoding", "X-Forwarded-For"])] = junk.strip()
    if roll < 0.4:
        return {**headers, "X-Dualwrite-Secret": EVENT_SECRET}, {}
    if roll < 0.6:
        return {**headers, "Authorization": f"Bearer {EVENT_SECRET}"}, {}
    if roll < 0.9:
        return headers, {"code": EVENT_SECRET}
    return {**headers, "X-Dualwrite-Secret": EVENT_SECRET[: rng.randrange(len(EVENT_SECRET))]}, {}


def raw_request(rng: random.Random, host: str, port: int, path: str) -> bytes:
    """Bytes straight onto the socket: a request whose request line, headers or length are mangled."""
    body = json.dumps([data_event(rng, f"raw-{uuid.uuid4()}")]).encode()
    head = f"POST {path}?code={EVENT_SECRET} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    request = mutate(rng, head) + body
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass  # waiting for a body its mangled length says is still coming, or hung up: both fine
    return answer


def fuzz(stack: LocalStack, seed: int, deadline: float, tally: Tally) -> None:
    rng = random.Random(seed)
    host, port = "127.0.0.1", stack.ports.fo_events
    target = stack.event_url.split("?")[0]
    with httpx.Client(timeout=60) as client:
        while time.monotonic() < deadline:
            if rng.random() < 0.1:
                answer = raw_request(rng, host, port, stack.cfg.fo_producer.path)
                if answer.startswith(b"HTTP/1.1 "):
                    tally.record(int(answer[9:12]), b"", answer.decode("latin-1"))
                continue
            body = one_body(rng)
            headers, query = headers_for(rng)
            chunked = rng.random() < 0.3
            content: Any = iter([body[: len(body) // 3], body[len(body) // 3 :]]) if chunked else body
            try:
                resp = client.post(target, content=content, headers=headers, params=query)
            except httpx.HTTPError as exc:
                with tally.lock:
                    tally.bad.append(f"{type(exc).__name__}: {exc} <- {body[:200]!r}")
                continue
            tally.record(resp.status_code, body, resp.text)


def kafka_contents(stack: LocalStack) -> tuple[set[str], bytes]:
    """(correlation ids on the CustomersV3 topics, every value in the events DLQ joined)."""
    decode = registry.EventDeserializer(registry.client(stack.cfg.schema_registry))
    published = set()
    for name in ("customers", "contacts"):
        topic = kafka.map_topics(stack.cfg.kafka.topic_prefix, stack.maps[name])["fo"]
        for msg in kafka.read_to_end(stack.cfg.kafka, topic, idle_s=0.5):
            published.add(str(decode(topic, msg.value())["origin"]["correlation_id"]))
    try:
        letters = dlq.read_all(stack.cfg.kafka, kafka.dlq_topic(f"{stack.cfg.kafka.topic_prefix}.fo.events"), 0.5)
        dead = b"\n".join(d.value or b"" for d in letters)
    except DualWriteError:  # no dead letter at all: the topic was never created
        dead = b""
    return published, dead


def untracked(translator: EventTranslator, item: Any, marker: str) -> bool:
    """Whether an accepted event may rightly be in neither place: not ours, or its marker no longer its id."""
    if not isinstance(item, dict) or item.get("CorrelationId") != marker:
        return True  # mangled around the marker: the event is real, but cannot be found by it
    try:
        outcome, _ = translator.translate(item)
    except PermanentError:
        return False
    return outcome != "published"


def lost_events(stack: LocalStack, tally: Tally) -> tuple[list[str], int]:
    """(markers of accepted events found in neither place, how many were found in one)."""
    published, dead = kafka_contents(stack)
    translator = EventTranslator(stack.maps, stack.cfg.companies, stack.cfg.fo.integration_user_id)
    lost, found = [], 0
    for body in tally.accepted:
        try:
            payload = parse_body(body)
        except RejectedBody:
            continue  # answered 2xx, so it parsed; a raw request's body is not kept
        items = payload if isinstance(payload, list) else [payload]
        for marker in {m.decode() for m in MARKER.findall(body)}:
            if marker in published or marker.encode() in dead:
                found += 1
                continue
            holders = [i for i in items if marker in json.dumps(i)]
            if not all(untracked(translator, i, marker) for i in holders):
                lost.append(marker)
    return lost, found


@pytest.mark.timeout(300)
def test_fuzzing_the_receiver_gets_no_5xx_keeps_it_healthy_and_loses_nothing_accepted(stack: LocalStack) -> None:
    seed = int(os.environ.get("DUALWRITE_FUZZ_SEED", time.time_ns() % 10**9))
    tally = Tally()
    deadline = time.monotonic() + FUZZ_SECONDS
    clients = [threading.Thread(target=fuzz, args=(stack, seed + i, deadline, tally)) for i in range(CLIENTS)]
    for c in clients:
        c.start()
    component = stack.components["fo-producer"]
    while any(c.is_alive() for c in clients):  # it keeps answering its probes under the load
        assert httpx.get(f"{component.ops_url}/healthz", timeout=10).status_code == 200, f"seed {seed}"
        time.sleep(1.0)
    for c in clients:
        c.join()

    assert not tally.bad, f"seed {seed}: {len(tally.bad)} bad answer(s), e.g. {tally.bad[:3]}; all {tally.statuses}"
    assert sum(tally.statuses.values()) > 200, f"seed {seed}: too few requests to say anything: {tally.statuses}"
    assert tally.statuses.get(200, 0) > 20 and sum(v for k, v in tally.statuses.items() if 400 <= k < 500) > 20
    assert component.alive()
    lost, found = lost_events(stack, tally)
    assert found > 100, f"seed {seed}: only {found} accepted events found in Kafka, too few to say anything"
    assert not lost, f"seed {seed}: {len(lost)} accepted event(s) neither published nor dead-lettered: {lost[:3]}"
    # ... and it still does its job: a plain event arrives on its topic.
    marker = f"after-fuzz-{uuid.uuid4()}"
    resp = httpx.post(stack.event_url, json=[data_event(random.Random(seed), marker)], timeout=30)
    assert resp.status_code == 200 and resp.json()["published"] == 1, resp.text
    eventually(lambda: marker in kafka_contents(stack)[0], timeout_s=30, what="the event after the fuzzing")
