"""The ops server (/metrics, /healthz, /readyz) under hostile input: every odd request is answered 4xx
(405 for a method other than GET or HEAD), none kills the server, and /healthz keeps answering (issue 12)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from dualwrite.metrics import OpsServer


@pytest.fixture()
def ops() -> Iterator[OpsServer]:
    server = OpsServer("127.0.0.1", 0, ready=lambda: False).start()
    try:
        yield server
    finally:
        server.stop()


def raw(server: OpsServer, request: bytes, timeout_s: float = 5.0) -> bytes:
    """Send bytes as they are and read the answer until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout_s) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(request)  # it may answer and hang up before reading all of a huge request
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/"), answer[:200]
    return int(answer.split(b" ", 2)[1])


def healthy(server: OpsServer) -> bool:
    return httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200


HOSTILE = {
    "garbage request line": b"\x00\xff\xfe garbage\r\n\r\n",
    "no version": b"GET\r\n\r\n",
    "too many words": b"GET /healthz HTTP/1.1 extra words\r\n\r\n",
    "bad version": b"GET /healthz HTTP/9.9\r\n\r\n",
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "huge path": b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
    "odd path": b"GET /../../etc/passwd%00%ff HTTP/1.1\r\nHost: x\r\n\r\n",
    "very long header": b"GET /healthz HTTP/1.1\r\nX-Long: " + b"b" * 70_000 + b"\r\n\r\n",
    "too many headers": b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n",
    "header without colon": b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
    "made-up method": b"FROB /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    "POST with a body": b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_request_is_answered_4xx_and_healthz_still_answers(ops: OpsServer, name: str) -> None:
    answer = raw(ops, HOSTILE[name])
    assert 400 <= status_of(answer) < 500, (name, answer[:300])
    assert healthy(ops)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "FROB"])
def test_a_method_other_than_get_or_head_is_405_naming_the_allowed_ones(ops: OpsServer, method: str) -> None:
    resp = httpx.request(method, f"{ops.url}/healthz", timeout=5)
    assert resp.status_code == 405, resp.text
    assert resp.headers["allow"] == "GET, HEAD"
    assert healthy(ops)


def test_head_answers_like_get_without_a_body(ops: OpsServer) -> None:
    resp = httpx.head(f"{ops.url}/healthz", timeout=5)
    assert resp.status_code == 200 and resp.content == b""
    assert int(resp.headers["content-length"]) == len(b"ok\n")
    assert httpx.head(f"{ops.url}/readyz", timeout=5).status_code == 503
    assert httpx.head(f"{ops.url}/nowhere", timeout=5).status_code == 404


def test_a_query_string_does_not_change_the_path(ops: OpsServer) -> None:
    assert httpx.get(f"{ops.url}/healthz?verbose=1&x=%ff", timeout=5).status_code == 200
    assert httpx.get(f"{ops.url}/readyz?", timeout=5).status_code == 503
    assert "dualwrite_" in httpx.get(f"{ops.url}/metrics?name[]=x", timeout=5).text


def test_a_client_that_sends_nothing_or_hangs_up_does_not_stop_the_others(ops: OpsServer) -> None:
    silent = [socket.create_connection(("127.0.0.1", ops.port)) for _ in range(20)]
    half = socket.create_connection(("127.0.0.1", ops.port))
    half.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
    try:
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", ops.port)) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")  # gone before the answer
        assert healthy(ops)
    finally:
        for s in [*silent, half]:
            s.close()
    assert healthy(ops)


def test_many_hostile_requests_at_once_leave_the_server_answering(ops: OpsServer) -> None:
    errors: list[BaseException] = []

    def attack(request: bytes) -> None:
        try:
            raw(ops, request)
        except OSError as exc:  # a refused or reset connection is fine; the server must survive it
            errors.append(exc)

    threads = [threading.Thread(target=attack, args=(r,)) for r in list(HOSTILE.values()) * 5]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert healthy(ops)
    assert ops._thread.is_alive()
