"""Fault injection for a stand-in (off unless configured): what a real service does on a bad day.

Wraps a stand-in's ASGI app. For the requests of the configured callers only (dualwrite's
application user: people and oracles keep a healthy service), and only on the data API (never the
`/_standin/...` routes), it answers:

- `error_rate`: a 5xx. Half of them before the request runs (503, nothing done), half after it ran
  (502: the write happened, the answer was lost), so a client must be idempotent, not just retry;
- `throttle_rate`: the start of a burst of 429s with `Retry-After` lasting `throttle_burst_s`
  (Dataverse's service-protection error body on Dataverse, a plain 429 on F&O);
- `slow_rate`: the answer after `slow_s`;
- `drop_rate`: the request runs, then the connection closes without an answer.

Decisions come from a seeded random generator; `GET /_standin/faults` tells what was injected, and
`POST /_standin/faults` with some of the rates changes them from then on (a test's fault window).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import pydantic

from standins import token

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class FaultSettings(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    callers: list[str] = pydantic.Field(min_length=1, description="client ids whose requests get faults")
    api_prefix: str = "/"  # e.g. /api/data (Dataverse) or /data (F&O)
    methods: list[str] | None = None  # only requests of these methods (e.g. the writes: POST, PATCH); None: all
    error_rate: float = pydantic.Field(default=0.0, ge=0, le=1)
    throttle_rate: float = pydantic.Field(default=0.0, ge=0, le=1)
    throttle_burst_s: float = pydantic.Field(default=2.0, ge=0)
    retry_after_s: int = pydantic.Field(default=1, ge=1)
    slow_rate: float = pydantic.Field(default=0.0, ge=0, le=1)
    slow_s: float = pydantic.Field(default=0.5, ge=0)
    drop_rate: float = pydantic.Field(default=0.0, ge=0, le=1)
    seed: int = 0
    dataverse: bool = False  # answer 429 with Dataverse's service-protection body
    signing_key: str = token.DEFAULT_SIGNING_KEY


class _Dropped(Exception):
    """Raised after the request ran: the server closes the connection without an answer."""


class FaultInjector:
    def __init__(self, app: App, settings: FaultSettings) -> None:
        self.app = app
        self.s = settings
        self.rng = random.Random(settings.seed)
        self.throttled_until = 0.0
        self.injected: Counter[str] = Counter()

    def _caller(self, scope: Scope) -> str | None:
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization")
        identity = token.identity_from_header(auth.decode("latin-1") if auth else None, self.s.signing_key)
        return identity.client_id if identity else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path == "/_standin/faults":
            if scope.get("method") == "POST":
                await self._configure(receive, send)
                return
            await _answer(send, 200, dict(self.injected))
            return
        exempt = path.startswith("/_standin") or not path.startswith(self.s.api_prefix)
        other_method = self.s.methods is not None and scope.get("method") not in self.s.methods
        if exempt or other_method or self._caller(scope) not in self.s.callers:
            await self.app(scope, receive, send)
            return
        now = time.monotonic()
        r = self.rng.random
        if now < self.throttled_until or r() < self.s.throttle_rate:
            if now >= self.throttled_until:
                self.throttled_until = now + self.s.throttle_burst_s
                self.injected["throttle_bursts"] += 1
            self.injected["429"] += 1
            await _answer(send, 429, _throttle_body(self.s.dataverse), {"Retry-After": str(self.s.retry_after_s)})
            return
        if r() < self.s.error_rate:
            if r() < 0.5:
                self.injected["503_before"] += 1
                await _answer(send, 503, _error_body("The service is unavailable (injected)."), {"Retry-After": "1"})
                return
            self.injected["502_after"] += 1
            await self.app(scope, receive, _discard)
            await _answer(send, 502, _error_body("Bad gateway (injected, after the request ran)."))
            return
        if r() < self.s.slow_rate:
            self.injected["slow"] += 1
            await asyncio.sleep(self.s.slow_s)
        if r() < self.s.drop_rate:
            self.injected["dropped"] += 1
            await self.app(scope, receive, _discard)
            # An answer begun and never finished: the server closes the connection mid-response.
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"64")]})
            raise _Dropped("connection dropped (injected)")
        await self.app(scope, receive, send)

    async def _configure(self, receive: Receive, send: Send) -> None:
        """`POST /_standin/faults` with some of the rates (`error_rate`, `drop_rate`, ...): from now on."""
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            changes = json.loads(body or b"{}")
            if not isinstance(changes, dict) or {"callers", "signing_key", "seed"} & set(changes):
                raise ValueError("a JSON object of rates (callers, signing_key and seed are fixed at start)")
            self.s = FaultSettings(**{**self.s.model_dump(), **changes})
        except (ValueError, pydantic.ValidationError) as exc:
            await _answer(send, 400, _error_body(f"bad fault settings: {exc}"))
            return
        self.throttled_until = 0.0
        await _answer(send, 200, self.s.model_dump(exclude={"signing_key"}))


async def _discard(message: Message) -> None:
    return None


def _error_body(message: str, code: str = "") -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _throttle_body(dataverse: bool) -> dict[str, Any]:
    if dataverse:
        message = "Number of requests exceeded the limit of 6000 over time window of 300 seconds."
        return _error_body(message, "0x80072322")
    return _error_body("Too many requests (injected).")


async def _answer(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})
