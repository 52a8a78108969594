"""No secret, token or Authorization value is ever logged (issue 12, point 9): the whole stack runs with
every logger at DEBUG (dualwrite, httpx, httpcore, uvicorn, librdkafka's dualwrite.kafka.client) while we
provoke what makes components talk: wrong secrets on the receiver, refused tokens, bodies it refuses or
dead-letters, hostile requests. Then `dualwrite up` as processes, and its `.dualwrite/*.log` files."""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from standins import token
from wiring.stack import CLIENT_SECRET, EVENT_SECRET, LocalStack, eventually

pytestmark = pytest.mark.service

WRONG_SECRET = "wrong-but-secret-looking-9f1c"  # what a sender presents is a secret too: maybe a typo of the real one
WRONG_BEARER = "eyWrongBearerToken.4d7e.a91b"
# Every token the stand-in issues starts with this (its JWT header), the access tokens of our clients included.
TOKEN_START = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()).rstrip(b"=").decode()
SECRETS = {
    "F&O/Dataverse client secret": CLIENT_SECRET,
    "receiver shared secret": EVENT_SECRET,
    "a presented wrong secret": WRONG_SECRET,
    "a presented wrong bearer token": WRONG_BEARER,
    "token signing key": token.DEFAULT_SIGNING_KEY,
    "an access token": TOKEN_START,
}
LOGGERS = ("", "dualwrite", "dualwrite.kafka.client", "httpx", "httpcore", "uvicorn", "uvicorn.error", "uvicorn.access")


class Everything(logging.Handler):
    """Keeps every record, formatted with its traceback, and the thread it came from."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[tuple[str, str, str]] = []  # (logger, thread, text)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.name, record.threadName or "", self.format(record)))

    def listen(self) -> None:
        """Everything at DEBUG, also the loggers that do not propagate (uvicorn's), again after each server start."""
        for name in LOGGERS:
            logger = logging.getLogger(name)
            logger.setLevel(logging.DEBUG)
            if self not in logger.handlers and (name == "" or not logger.propagate):
                logger.addHandler(self)


@pytest.fixture()
def captured() -> Iterator[Everything]:
    handler = Everything()
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    handler.listen()
    try:
        yield handler
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
            logging.getLogger(name).removeHandler(handler)


def leaks(text: str) -> list[str]:
    found = [what for what, secret in SECRETS.items() if secret in text]
    lowered = text.lower()
    if "authorization: bearer" in lowered or "'authorization': 'bearer" in lowered:
        found.append("an Authorization header")
    return found


def raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        try:
            return s.recv(4096)
        except (TimeoutError, ConnectionResetError):
            return b""


def provoke_the_receiver(stack: LocalStack) -> None:
    """Wrong secrets everywhere one may be sent, bodies refused or dead-lettered, requests that are not HTTP."""
    url = stack.event_url.split("?")[0]
    for headers, params in [
        ({"X-Dualwrite-Secret": WRONG_SECRET}, {}),
        ({"Authorization": f"Bearer {WRONG_BEARER}"}, {}),
        ({}, {"code": WRONG_SECRET}),
        ({"Authorization": f"Basic {WRONG_SECRET}"}, {}),
    ]:
        assert httpx.post(url, content=b"[]", headers=headers, params=params, timeout=10).status_code == 401
    good = {"X-Dualwrite-Secret": EVENT_SECRET}
    for body, status in [
        (b"[" * 100_000 + b"]" * 100_000, 400),
        (b"\xff not json", 400),
        (json.dumps([{"MessageName": "Upsert", "Secretish": WRONG_SECRET}]).encode(), 202),
    ]:
        resp = httpx.post(url, content=body, headers=good, timeout=30)
        assert resp.status_code == status, resp.text
    too_large = b" " * (stack.cfg.fo_producer.max_body_bytes + 1)
    assert httpx.post(url, content=too_large, headers=good, timeout=30).status_code == 413
    port, path = stack.ports.fo_events, stack.cfg.fo_producer.path
    # Request lines that carry the real secret in ?code= but are not valid HTTP: the server must not echo them.
    raw(port, f"POST {path}?code={EVENT_SECRET} HTTP/1.1\r\nno colon here\r\n\r\n".encode())
    raw(port, f"POST {path}?code={EVENT_SECRET}{'x' * 20_000} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    raw(port, f"GET {path}?code={EVENT_SECRET} HTTP/1.1\r\nAuthorization: Bearer {WRONG_BEARER}\r\n\r\n".encode())
    ops = stack.components["fo-producer"].ops_url.rsplit(":", 1)[1]
    raw(int(ops), f"GET /healthz?code={EVENT_SECRET} HTTP/9.9\r\nAuthorization: Bearer {WRONG_BEARER}\r\n\r\n".encode())


def refuse_tokens_for_a_while(stack: LocalStack, seconds: float) -> None:
    """The token endpoint refuses every request, echoing the client secret as a misconfigured proxy might."""
    token_url = stack.servers["token"].url
    echo = f"AADSTS7000215: Invalid client secret provided: client_secret={CLIENT_SECRET}"
    refusal = {"status": 401, "error": "invalid_client", "error_description": echo}
    assert httpx.post(f"{token_url}/_standin/refuse", json=refusal, timeout=5).status_code == 200
    try:
        eventually(
            lambda: httpx.get(f"{token_url}/_standin/stats", timeout=5).json()["refused"] >= 3,
            timeout_s=30,
            what="components asking for tokens and being refused",
        )
        time.sleep(seconds)
    finally:
        httpx.delete(f"{token_url}/_standin/refuse", timeout=5)


def a_change_flows(stack: LocalStack, number: str) -> None:
    """A person creates a customer in F&O and it reaches Dataverse (the components work again)."""
    with stack.user_client("fo") as fo, stack.user_client("dataverse", "dualwrite-test-reader") as dv:
        customer = {
            "dataAreaId": "usmf",
            "CustomerAccount": number,
            "OrganizationName": f"Org {number}",
            "CustomerGroupId": "30",
            "SalesCurrencyCode": "USD",
            "PartyType": "Organization",
        }
        assert fo.post("CustomersV3", json=customer).status_code == 201
        flt = f"accountnumber eq '{number}'"
        eventually(lambda: dv.get("accounts", params={"$filter": flt}).json()["value"], timeout_s=60, what=number)


def test_no_secret_token_or_authorization_value_is_logged_by_any_component(
    tmp_path: Path, captured: Everything
) -> None:
    stack = LocalStack.start(tmp_path, with_components=False)
    try:
        lifetime = {"expires_in": 2}  # short-lived tokens, so the components ask again while refused
        assert httpx.put(f"{stack.servers['token'].url}/_standin/lifetime", json=lifetime, timeout=5).status_code == 200
        stack.start_components()
        captured.listen()  # each uvicorn server set its loggers back to WARNING when it was built
        a_change_flows(stack, "T-NOLOG-1")
        provoke_the_receiver(stack)
        refuse_tokens_for_a_while(stack, 3.0)
        a_change_flows(stack, "T-NOLOG-2")
    finally:
        stack.stop()

    receiver = f"127.0.0.1:{stack.ports.fo_events}{stack.cfg.fo_producer.path}"
    found = []
    for logger, _, text in captured.lines:
        # What the senders' HTTP clients log of their own requests to the receiver (the F&O stand-in playing F&O,
        # which posts to the URL it was given, ?code= being the only way F&O's HTTPS endpoint carries the secret;
        # this test) is the senders' business. No component calls the receiver; everything else is ours.
        if logger.startswith(("httpx", "httpcore")) and receiver in text:
            continue
        if what := leaks(text):
            found.append(f"{', '.join(what)} in {logger}: {text[:300]}")
    assert not found, f"{len(found)} log record(s) leak, e.g.\n" + "\n".join(found[:5])
    # ... and the test saw what it provoked, so an empty capture cannot pass it.
    texts = "\n".join(text for _, _, text in captured.lines)
    assert "HTTP Request: POST" in texts  # httpx at INFO
    assert "Invalid HTTP request received" in texts  # uvicorn's error logger
    assert "refused" in texts and "invalid_client" in texts  # the token refusal, as components logged it
    assert "dead-lettered" in texts  # the receiver's dead letter


def up_logs(state: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(state.glob("*.log")))


@pytest.mark.timeout(240)
def test_dualwrite_up_writes_no_secret_to_its_log_files(tmp_path: Path) -> None:
    state = tmp_path / ".dualwrite"
    proc = subprocess.Popen(
        [sys.executable, "-m", "wiring.cli", "up", "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        stack_file = state / "stack.json"
        eventually(stack_file.exists, timeout_s=90, interval_s=0.2, what="stack.json")
        urls = json.loads(stack_file.read_text())
        url = urls["fo_data_event_endpoint"].split("?")[0]
        for headers in ({"X-Dualwrite-Secret": WRONG_SECRET}, {"Authorization": f"Bearer {WRONG_BEARER}"}):
            assert httpx.post(url, content=b"[]", headers=headers, timeout=10).status_code == 401
        good = {"X-Dualwrite-Secret": EVENT_SECRET}
        eventually(lambda: httpx.post(url, content=b"[]", headers=good, timeout=10).status_code == 200, 60)
        assert httpx.post(url, content=b"[" * 100_000, headers=good, timeout=30).status_code == 400
        assert httpx.post(url, content=b'[{"MessageName": 1}]', headers=good, timeout=30).status_code == 202
        token_base = urls["token_endpoint"].split("/dualwrite-local/")[0]
        refusal = {"status": 401, "error": "invalid_client", "error_description": f"echo {CLIENT_SECRET}"}
        httpx.post(f"{token_base}/_standin/refuse", json=refusal, timeout=5)
        time.sleep(3)
        httpx.delete(f"{token_base}/_standin/refuse", timeout=5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    logs = up_logs(state)
    assert "fo-producer.log" in logs and "dead-lettered" in logs, logs[-2000:]
    found = [line for line in logs.splitlines() if leaks(line)]
    assert not found, f"{len(found)} line(s) of .dualwrite/*.log leak, e.g. {found[:3]}"
