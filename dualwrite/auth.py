"""OAuth2 client-credentials tokens for F&O and Dataverse, cached until shortly before they expire."""

from __future__ import annotations

import threading
import time

import httpx

from dualwrite.config import OAuth
from dualwrite.errors import ConfigError, RetryableError


class TokenProvider(httpx.Auth):
    """An httpx auth flow that adds `Authorization: Bearer ...`, refreshing the token when needed."""

    def __init__(self, cfg: OAuth, resource_url: str) -> None:
        self._cfg = cfg
        self._scope = cfg.scope or f"{resource_url.rstrip('/')}/.default"
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() > self._expires_at - 60:
                self._refresh()
            assert self._token is not None
            return self._token

    def _refresh(self) -> None:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._cfg.client_id,
            "client_secret": self._cfg.client_secret,
            "scope": self._scope,
        }
        try:
            resp = httpx.post(str(self._cfg.token_url), data=form, timeout=15.0)
        except httpx.HTTPError as exc:
            raise RetryableError(f"token endpoint {self._cfg.token_url} unreachable: {exc}") from None
        if resp.status_code >= 500:
            raise RetryableError(f"token endpoint answered {resp.status_code}")
        body = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
        if resp.status_code != 200 or "access_token" not in body:
            raise ConfigError(
                f"auth: token request for client {self._cfg.client_id!r} refused ({resp.status_code}): "
                f"{body.get('error_description') or body.get('error') or resp.text[:200]}"
            )
        self._token = body["access_token"]
        self._expires_at = time.monotonic() + float(body.get("expires_in", 3599))

    def invalidate(self) -> None:
        with self._lock:
            self._token = None

    def auth_flow(self, request: httpx.Request):  # type: ignore[no-untyped-def]
        request.headers["Authorization"] = f"Bearer {self.token()}"
        response = yield request
        if response.status_code == 401:
            self.invalidate()
            request.headers["Authorization"] = f"Bearer {self.token()}"
            yield request
